"""Tiny random NemotronH checkpoints written by transformers (the oracle), for parity tests.

`build_text_checkpoint` makes a `NemotronHForCausalLM` from a small config, gives its Mamba
layers a `dt_bias` well above `time_step_min` (so transformers' prefill clamp never acts, see
the spec), saves it with `save_pretrained`, and optionally appends random MTP weights (which
transformers does not have) under the released names.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

TINY = dict(
    vocab_size=320, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
    intermediate_size=96, mamba_num_heads=8, mamba_head_dim=8, ssm_state_size=16, n_groups=2,
    conv_kernel=4, chunk_size=16, n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
    moe_shared_expert_intermediate_size=48, routed_scaling_factor=2.5, norm_topk_prob=True,
    layer_norm_epsilon=1e-5, initializer_range=0.1, tie_word_embeddings=False,
    bos_token_id=1, eos_token_id=2, pad_token_id=0,
)


def hf_config(pattern: str, **overrides):
    from transformers import NemotronHConfig
    return NemotronHConfig(hybrid_override_pattern=pattern, **{**TINY, **overrides})


def build_hf_model(pattern: str, seed: int = 0, dtype=torch.float32, **overrides):
    from transformers import NemotronHForCausalLM
    torch.manual_seed(seed)
    cfg = hf_config(pattern, **overrides)
    model = NemotronHForCausalLM(cfg).to(dtype).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            if layer.block_type == "linear_attention":
                m = layer.mixer
                dt = torch.empty(m.num_heads).uniform_(0.05, 0.2)
                m.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))   # inverse softplus
                m.A_log.copy_(torch.empty(m.num_heads).uniform_(0.0, math.log(8.0)))
                m.D.copy_(torch.empty(m.num_heads).uniform_(0.5, 1.5))
                m.conv1d.bias.normal_(0, 0.1)
                m.norm.weight.normal_(1, 0.1)
            if layer.block_type == "moe":
                layer.mixer.gate.e_score_correction_bias.normal_(0, 0.05)
            layer.norm.weight.normal_(1, 0.1)
    return model


def add_mtp_weights(path: Path, cfg_overrides: dict, seed: int = 1) -> None:
    """Append random `mtp.layers.*` tensors (pattern '*E', one step) to a saved text checkpoint."""
    from safetensors.torch import load_file, save_file
    import json
    torch.manual_seed(seed)
    c = {**TINY, **cfg_overrides}
    H, std = c["hidden_size"], 0.1
    r = lambda *s: torch.randn(*s) * std
    t = {
        "mtp.layers.0.enorm.weight": 1 + r(H), "mtp.layers.0.hnorm.weight": 1 + r(H),
        "mtp.layers.0.eh_proj.weight": r(H, 2 * H), "mtp.layers.0.norm.weight": 1 + r(H),
        "mtp.layers.0.mixer.q_proj.weight": r(c["num_attention_heads"] * c["head_dim"], H),
        "mtp.layers.0.mixer.k_proj.weight": r(c["num_key_value_heads"] * c["head_dim"], H),
        "mtp.layers.0.mixer.v_proj.weight": r(c["num_key_value_heads"] * c["head_dim"], H),
        "mtp.layers.0.mixer.o_proj.weight": r(H, c["num_attention_heads"] * c["head_dim"]),
        "mtp.layers.1.norm.weight": 1 + r(H), "mtp.layers.1.final_layernorm.weight": 1 + r(H),
        "mtp.layers.1.mixer.gate.weight": r(c["n_routed_experts"], H),
        "mtp.layers.1.mixer.gate.e_score_correction_bias": torch.zeros(c["n_routed_experts"]),
        "mtp.layers.1.mixer.shared_experts.up_proj.weight": r(c["moe_shared_expert_intermediate_size"], H),
        "mtp.layers.1.mixer.shared_experts.down_proj.weight": r(H, c["moe_shared_expert_intermediate_size"]),
    }
    w = c.get("moe_latent_size") or H
    if c.get("moe_latent_size"):
        t["mtp.layers.1.mixer.fc1_latent_proj.weight"] = r(w, H)
        t["mtp.layers.1.mixer.fc2_latent_proj.weight"] = r(H, w)
    for e in range(c["n_routed_experts"]):
        t[f"mtp.layers.1.mixer.experts.{e}.up_proj.weight"] = r(c["moe_intermediate_size"], w)
        t[f"mtp.layers.1.mixer.experts.{e}.down_proj.weight"] = r(w, c["moe_intermediate_size"])
    f = path / "model.safetensors"
    sd = load_file(f)
    sd.update(t)
    save_file(sd, f, metadata={"format": "pt"})
    cfg = json.loads((path / "config.json").read_text())
    cfg["num_nextn_predict_layers"] = 1
    cfg["mtp_layers_block_type"] = ["full_attention", "moe"]
    (path / "config.json").write_text(json.dumps(cfg, indent=2))


def build_text_checkpoint(path: Path, pattern: str, seed: int = 0, mtp: bool = False,
                          max_shard_size: str | None = None, **overrides):
    """Save a tiny random NemotronHForCausalLM to `path`; returns the transformers model."""
    model = build_hf_model(pattern, seed, **overrides)
    kw = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(path, **kw)
    if mtp:
        add_mtp_weights(Path(path), overrides)
    return model


def align_mtp_head(m):
    """Make a loaded model's MTP head draft exactly what the model will say: every mixer's
    output projection zeroed makes the model a bigram model (hidden = norm_f(embed(x_t))), and
    an MTP head with eh_proj = [I | 0] (its mixers zeroed too) predicts from embed(x_{t+1}) the
    same way. Costs the same to run as the original: only values change."""
    H = m.cfg.hidden_size
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith(("out_proj.weight", "o_proj.weight", "down_proj.weight")):
                p.zero_()
        first, last = m.mtp.layers[0], m.mtp.layers[-1]
        first.eh_proj.weight.copy_(torch.cat([torch.eye(H), torch.zeros(H, H)], dim=1))
        first.enorm.weight.fill_(1.0)
        last.final_layernorm.weight.copy_(m.backbone.norm_f.weight)
    return m
