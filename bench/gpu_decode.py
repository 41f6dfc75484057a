"""End-to-end decode on the GPU: the engine's NemotronH at Nemotron 3 Nano 30B-A3B's layer shapes
(fewer layers, default `MEMEM*`), random weights made directly on the GPU, bf16, batch 1.

Runs the same model twice: with the Triton kernels (the default on CUDA) and with the PyTorch
eager path (OMNISTREAM_KERNELS=torch). For each: prefill tokens/s, decode tokens/s (greedy,
the next token fed back on the device, no host sync inside the timed loop), and the achieved
memory bandwidth: the bytes a decode step must read (every weight it uses: non-expert weights,
the k routed experts of each MoE layer, the output head, one embedding row; plus the Mamba
states read and written and the KV cache read) times tokens/s, against the card's peak. The
device-busy column sums the GPU kernel time of a few steps (torch.profiler): the gap between it
and the wall time is launch overhead.

    python bench/gpu_decode.py [--pattern MEMEM*] [--prompt 512] [--tokens 64] [--peak-gbs 4800]
    python bench/gpu_decode.py --smoke     # a tiny model on the CPU (kernels interpreted): checks the script
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_common import NANO, kernels, peak_gbs, sync

import torch
from torch import nn

from engine.config import DecoderConfig
from engine.model import Mamba2Mixer, NemotronH, Router

TINY = dict(vocab_size=256, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            mamba_num_heads=4, mamba_head_dim=16, ssm_state_size=16, n_groups=2, n_routed_experts=8,
            num_experts_per_tok=2, moe_intermediate_size=32, moe_shared_expert_intermediate_size=64)


@torch.no_grad()
def build(cfg: DecoderConfig, device, dtype, seed: int = 0, std: float = 0.02) -> NemotronH:
    """The model allocated on `device` only (built on the meta device), initialized there as
    engine.checkpoint.init_random does; the router stays fp32 as the loader keeps it."""
    with torch.device("meta"):
        model = NemotronH(cfg).to(dtype)
    model = model.to_empty(device=device)
    torch.manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
            p.fill_(1.0)
        elif p.dim() >= 2:
            p.normal_(0.0, std)
        else:
            p.zero_()
    for m in model.modules():
        if isinstance(m, Mamba2Mixer):
            h = m.A_log.numel()
            m.A_log.copy_(torch.log(torch.arange(1, h + 1, dtype=torch.float32, device=device)))
            m.D.fill_(1.0)
            dt = torch.exp(torch.rand(h, device=device) * (math.log(0.1) - math.log(0.001)) + math.log(0.001))
            m.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        if isinstance(m, Router):
            m.weight = nn.Parameter(m.weight.float())
            m.e_score_correction_bias = torch.zeros_like(m.e_score_correction_bias, dtype=torch.float32)
    return model.eval().requires_grad_(False)


def bytes_per_token(model: NemotronH, context: int) -> float:
    """Bytes one batch-1 decode step reads (and, for the Mamba states, writes)."""
    cfg = model.cfg
    total = 0.0
    for name, p in model.named_parameters():
        size = p.numel() * p.element_size()
        if name.startswith("backbone.embeddings."):
            size = cfg.hidden_size * p.element_size()                    # one row
        elif ".experts." in name:
            size *= cfg.num_experts_per_tok / cfg.n_routed_experts      # only the chosen experts
        elif name.startswith("mtp."):
            size = 0
        total += size
    es = torch.tensor([], dtype=model.dtype).element_size()
    ssm = cfg.mamba_num_heads * cfg.mamba_head_dim * cfg.ssm_state_size * 4
    conv = cfg.mamba_conv_dim * (cfg.conv_kernel - 1) * es
    total += cfg.pattern.count("M") * 2 * (ssm + conv)
    total += cfg.pattern.count("*") * 2 * cfg.num_key_value_heads * context * cfg.head_dim * es
    return total


def step(model, state, tok):
    return model(state, input_ids=tok).logits[:, -1].argmax(-1, keepdim=True)


def device_busy_ms(model, state, tok, steps: int) -> float | None:
    """GPU kernel time per decode step, from torch.profiler (None when it cannot tell)."""
    try:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                tok = step(model, state, tok)
            torch.cuda.synchronize()
        events = prof.key_averages()
        us = sum(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0)) for e in events)
        return us / 1e3 / steps if us else None
    except Exception as e:
        print(f"# profiler unavailable: {type(e).__name__}: {e}", file=sys.stderr)
        return None


def run(model, prompt: torch.Tensor, tokens: int, warmup: int, profile_steps: int):
    dev = prompt.device
    model(model.new_state(1), input_ids=prompt[:, :64])                  # compile / warm up the prefill path
    state = model.new_state(1)
    sync(dev)
    t = time.perf_counter()
    tok = model(state, input_ids=prompt).logits[:, -1].argmax(-1, keepdim=True)
    sync(dev)
    prefill_s = time.perf_counter() - t
    for _ in range(warmup):
        tok = step(model, state, tok)
    sync(dev)
    out = []
    t = time.perf_counter()
    for _ in range(tokens):
        tok = step(model, state, tok)
        out.append(tok)
    sync(dev)
    decode_s = time.perf_counter() - t
    busy = device_busy_ms(model, state, tok, profile_steps) if dev.type == "cuda" and profile_steps else None
    return dict(prefill_tps=prompt.shape[1] / prefill_s, decode_tps=tokens / decode_s,
                ms_per_token=decode_s / tokens * 1e3, busy_ms=busy, tokens=torch.cat(out, 1)[0].tolist())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pattern", default="MEMEM*", help="layer pattern (Nano has 52 layers; a few keep this short)")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--peak-gbs", type=float, default=None, help="the card's peak bandwidth, if not in the table")
    ap.add_argument("--smoke", action="store_true", help="a tiny model on the CPU, kernels interpreted")
    args = ap.parse_args(argv)
    if args.smoke:
        device, dtype, sizes, modes = torch.device("cpu"), torch.float32, {**NANO, **TINY}, ("triton", "torch")
        args.prompt, args.tokens, warmup, profile_steps = min(args.prompt, 40), min(args.tokens, 4), 1, 0
    elif torch.cuda.is_available():
        device, dtype, sizes, modes, warmup, profile_steps = torch.device("cuda"), torch.bfloat16, NANO, \
            ("auto", "torch"), 8, 8
    else:
        print("gpu_decode: no CUDA device (use --smoke to check the script on the CPU)", file=sys.stderr)
        return 1
    cfg = DecoderConfig(pattern=args.pattern, **sizes)
    cfg.validate()
    t = time.perf_counter()
    model = build(cfg, device, dtype)
    sync(device)
    n_params = sum(p.numel() for p in model.parameters())
    peak, name = peak_gbs(args.peak_gbs)
    prompt = torch.randint(3, cfg.vocab_size, (1, args.prompt), generator=torch.Generator().manual_seed(0)).to(device)
    context = args.prompt + warmup + args.tokens // 2
    read = bytes_per_token(model, context)
    print(f"# {name}; pattern {cfg.pattern}, {n_params / 1e9:.2f}B parameters in {dtype} (built in "
          f"{time.perf_counter() - t:.1f} s); {read / 1e6:,.0f} MB read per decoded token at context {context}; "
          f"peak {peak or '?'} GB/s")
    print("| path | prefill tok/s | decode tok/s | ms/token | GB/s | % peak | device-busy ms/token | busy GB/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    results = {}
    for mode in modes:
        with kernels(mode):
            res = results[mode] = run(model, prompt, args.tokens, warmup, profile_steps)
        gbs = read * res["decode_tps"] / 1e9
        pct = f"{100 * gbs / peak:.1f}%" if peak and device.type == "cuda" else "-"
        busy = f"{res['busy_ms']:.3f}" if res["busy_ms"] else "-"
        busy_gbs = f"{read / (res['busy_ms'] * 1e-3) / 1e9:,.0f}" if res["busy_ms"] else "-"
        label = {"auto": "Triton kernels", "triton": "Triton kernels (interpreted)", "torch": "PyTorch eager"}[mode]
        print(f"| {label} | {res['prefill_tps']:,.0f} | {res['decode_tps']:,.1f} | {res['ms_per_token']:.2f} | "
              f"{gbs:,.0f} | {pct} | {busy} | {busy_gbs} |", flush=True)
    a, b = (results[m]["tokens"] for m in modes)
    same = sum(x == y for x, y in zip(a, b))
    print(f"# greedy tokens equal on both paths: {same}/{len(a)} (bf16 rounding differs between the paths, "
          "so random-weight logits may tie-break differently)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
