"""Self-speculative decoding with the MTP head: acceptance rate and speed-up over plain greedy.

The decoder benchmark's model (189M parameters, CPU, fp32, 2 threads) with one MTP step
(`*E`), in two versions: random MTP weights (a head that was never trained: the acceptance a
mis-matched drafter gets) and an aligned head (tests/builders.align_mtp_head: the model made a
bigram model whose MTP head predicts exactly what it will say; the same weights are read, so
it shows the mechanism's ceiling). Greedy output is checked equal to plain greedy in every run.

Run from the repo root: `python bench/speculative.py [--tokens N]`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import torch

from builders import align_mtp_head
from engine.checkpoint import init_random
from engine.config import DecoderConfig
from engine.generate import SamplingParams, Session, generate
from engine.model import NemotronH

CONFIG = dict(vocab_size=32000, hidden_size=512, pattern="MEMEM*EMEMEM*EMEMEM*EMEM", num_attention_heads=8,
              num_key_value_heads=2, head_dim=64, mamba_num_heads=16, mamba_head_dim=64, ssm_state_size=64, n_groups=4,
              chunk_size=128, n_routed_experts=32, num_experts_per_tok=4, moe_intermediate_size=384,
              moe_shared_expert_intermediate_size=768, routed_scaling_factor=2.5, max_position_embeddings=65536,
              num_nextn_predict_layers=1)


def run(model, prompt, n, k):
    s = Session(model, speculative=bool(k))
    s.prefill(prompt)
    t = time.perf_counter()
    out = list(generate(s, SamplingParams(max_new_tokens=n), speculative=k))
    return out, n / (time.perf_counter() - t), s.spec.acceptance_rate


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(2)
    model = init_random(NemotronH(DecoderConfig(**CONFIG)), seed=0).eval().requires_grad_(False)
    prompt = torch.randint(3, 32000, (256,), generator=torch.Generator().manual_seed(0)).tolist()
    print("| MTP head | draft tokens k | acceptance | tok/s | speed-up over plain greedy | output equal |")
    print("|---|---:|---:|---:|---:|---|")
    for name in ("random", "aligned"):
        if name == "aligned":
            align_mtp_head(model)
        run(model, prompt, 8, 0)                       # warm up
        base, base_tps, _ = run(model, prompt, args.tokens, 0)
        print(f"| {name} | 0 (plain) | - | {base_tps:.1f} | 1.00x | - |")
        for k in (1, 2, 3):
            run(model, prompt, 8, k)                   # warm up this shape
            out, tps, acc = run(model, prompt, args.tokens, k)
            print(f"| {name} | {k} | {acc:.0%} | {tps:.1f} | {tps / base_tps:.2f}x | {out == base} |", flush=True)


if __name__ == "__main__":
    main()
