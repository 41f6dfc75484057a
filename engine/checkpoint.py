"""Writing NemotronH checkpoints in the released Hugging Face format, and random initialization.

`save_decoder` writes `config.json` (transformers' `NemotronHForCausalLM` names, so both our
loader and transformers read it) and `model.safetensors` under the released tensor names.
`init_random` gives a model fresh weights the way NemotronH is initialized (normal 0.02
linears, Mamba `A_log = log(1..h)`, `D = 1`, `dt_bias` the inverse softplus of a log-uniform
`dt`). Training starts from it; the placeholder default model is made with it:

    python -m engine.checkpoint --out assets/default-model --seed 0
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import save_file

from .config import DecoderConfig
from .model import Mamba2Mixer, NemotronH


def config_to_dict(cfg: DecoderConfig) -> dict:
    d = {k: v for k, v in asdict(cfg).items() if k not in ("pattern", "mtp_pattern", "eos_token_ids", "source",
                                                            "mamba_proj_bias", "time_step_limit")}
    d.update(architectures=["NemotronHForCausalLM"], model_type="nemotron_h", hybrid_override_pattern=cfg.pattern,
             mtp_hybrid_override_pattern=cfg.mtp_pattern, eos_token_id=list(cfg.eos_token_ids),
             use_bias=cfg.mamba_proj_bias, mlp_hidden_act="relu2", mamba_hidden_act="silu",
             time_step_limit=[cfg.time_step_limit[0], cfg.time_step_limit[1] if math.isfinite(cfg.time_step_limit[1])
                              else {"__float__": "Infinity"}],
             num_hidden_layers=cfg.num_layers, dtype="float32")
    return d


@torch.no_grad()
def init_random(model: NemotronH, seed: int = 0, std: float = 0.02) -> NemotronH:
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
            p.fill_(1.0)
        elif p.dim() >= 2:
            p.copy_(torch.randn(p.shape, generator=g) * std)
        elif name.endswith("bias"):
            p.zero_()
    for m in model.modules():
        if isinstance(m, Mamba2Mixer):
            h = m.A_log.numel()
            m.A_log.copy_(torch.log(torch.arange(1, h + 1, dtype=torch.float32)))
            m.D.fill_(1.0)
            dt = torch.exp(torch.rand(h, generator=g) * (math.log(0.1) - math.log(0.001)) + math.log(0.001))
            m.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
    return model


def save_decoder(model: NemotronH, out_dir: str | Path) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config_to_dict(model.cfg), indent=2))


PLACEHOLDER = dict(vocab_size=300, hidden_size=128, pattern="MEM*EM-E", num_attention_heads=4, num_key_value_heads=2,
                   head_dim=32, intermediate_size=256, mamba_num_heads=8, mamba_head_dim=16, ssm_state_size=32,
                   n_groups=2, chunk_size=64, n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=128,
                   moe_shared_expert_intermediate_size=256, routed_scaling_factor=2.5,
                   max_position_embeddings=262144, eos_token_ids=(2, 11))


def main() -> None:
    ap = argparse.ArgumentParser(description="write a small random NemotronH checkpoint (with tokenizer)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from .tokenizer import train_tokenizer
    cfg = DecoderConfig(**PLACEHOLDER)
    cfg.validate()
    model = init_random(NemotronH(cfg), args.seed)
    save_decoder(model, args.out)
    train_tokenizer(args.out, vocab_size=cfg.vocab_size)
    print(f"wrote {args.out} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters)")


if __name__ == "__main__":
    main()
