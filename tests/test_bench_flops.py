"""bench/decoder.py's prefill FLOP count (the denominator of its fp32 compute bound), against
hand-computed values for one-kind patterns and, for the SSD scan, against the matrix products
kernels/mamba.py actually runs (torch's FLOP counter)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from engine.config import DecoderConfig
from kernels.mamba import ssd_chunked

ROOT = Path(__file__).resolve().parent.parent


def _bench():
    # bench/ is not a package: load decoder.py by path (registered first: its dataclass needs it)
    if "bench_decoder" not in sys.modules:
        spec = importlib.util.spec_from_file_location("bench_decoder", ROOT / "bench" / "decoder.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules["bench_decoder"] = mod
        spec.loader.exec_module(mod)
    return sys.modules["bench_decoder"]


TINY = dict(vocab_size=10, hidden_size=16,
            num_attention_heads=2, num_key_value_heads=1, head_dim=4,
            intermediate_size=12,
            mamba_num_heads=2, mamba_head_dim=4, ssm_state_size=3, n_groups=1, chunk_size=4,
            n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=6, moe_shared_expert_intermediate_size=5)
HEAD_T8 = 2 * 16 * 10 / 8          # the output head, last position only, spread over 8 tokens


def flops(pattern: str, T: int, **over) -> dict:
    return _bench().prefill_flops(DecoderConfig(pattern=pattern, **{**TINY, **over}), T)


def test_mamba_layer():
    f = flops("M", 8)
    # in_proj 16 -> d_inner 8 + conv_dim (8 + 2*1*3) 14 + heads 2 = 24, out_proj 8 -> 16
    assert f["linear"] == 2 * 16 * 24 + 2 * 8 * 16 == 1024
    # Q = 4, 2 chunks; per chunk C.B^T 4*4*1*3 + L.X 2*4*4*4 + states in and out 2 * 2*4*3*4
    assert f["ssd"] == 2 * 2 * (48 + 128 + 192) / 8 == 184
    assert f["attention"] == 0 and f["head"] == HEAD_T8
    assert f["total"] == 1024 + 184 + 40


def test_mamba_short_prompt_uses_one_chunk_of_the_prompt_length():
    f = flops("M", 3)                  # Q = min(4, 3) = 3: one chunk, no padding
    assert f["ssd"] == 2 * (3 * 3 * (1 * 3 + 2 * 4) + 2 * 3 * 2 * 4 * 3) / 3


def test_attention_layer_counts_causal_keys_exactly():
    f = flops("*", 8)
    assert f["linear"] == 2 * (2 * 16 * 8) + 2 * (2 * 16 * 4) == 768           # q, o: 16x8; k, v: 16x4
    # token i attends to i keys: q.k and the weighted values, heads 2 x head_dim 4 each
    assert f["attention"] == sum(2 * 2 * 2 * 4 * i for i in range(1, 9)) / 8 == 144
    assert f["total"] == 768 + 144 + 40


def test_mlp_and_moe_layers():
    assert flops("-", 8)["linear"] == 2 * (2 * 16 * 12) == 768
    # router 16x4, 2 routed experts (16x6 up and down), the shared expert (16x5 up and down)
    assert flops("E", 8)["linear"] == 2 * 16 * 4 + 2 * (2 * 2 * 16 * 6) + 2 * (2 * 16 * 5) == 1216
    # latent 8: the routed experts run at width 8, plus the 16 -> 8 -> 16 latent projections
    assert flops("E", 8, moe_latent_size=8)["linear"] == 128 + 2 * (2 * 2 * 8 * 6) + 320 + 2 * (2 * 16 * 8) == 1344


def test_layers_add_up():
    parts = [flops(c, 8)["total"] - HEAD_T8 for c in "M*-E"]
    assert flops("M*-E", 8)["total"] == sum(parts) + HEAD_T8


def test_ssd_count_matches_the_products_kernels_run():
    torch.manual_seed(0)
    for T in (8, 10, 3):                      # whole chunks, a padded last chunk, a single short chunk
        h, p, g, n = 2, 4, 1, 3
        x, B, C = torch.randn(1, T, h, p), torch.randn(1, T, g, n), torch.randn(1, T, g, n)
        dt, A, D = torch.rand(1, T, h), -torch.rand(h), torch.ones(h)
        with FlopCounterMode(display=False) as fc:
            ssd_chunked(x, dt, A, B, C, D, chunk_size=4)
        assert fc.get_total_flops() == flops("M", T)["ssd"] * T, T
