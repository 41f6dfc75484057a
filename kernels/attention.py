"""Causal GQA attention of new queries over a KV cache, in PyTorch (scaled_dot_product_attention);
on CUDA the Triton kernels in kernels/triton/attention.py replace it, on the CPU at one query per
row the C++ kernel of kernels/cpu."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import cpu
from . import triton as tk


def causal_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, offsets: list[int]) -> torch.Tensor:
    """q (b, H, T, D): row r's queries sit at positions offsets[r] .. offsets[r]+T-1 and see the
    keys/values (b, Hkv, Lk, D) up to their own position. Rows of different offsets (ragged
    batches) decode one token each. Scale D ** -0.5; returns (b, H, T, D)."""
    b, H, T, D = q.shape
    Lk = keys.shape[2]
    o = offsets[0]
    ragged = any(x != o for x in offsets)
    if ragged and T != 1:
        raise ValueError("rows of different lengths can only decode one token at a time")
    if tk.enabled(q, keys, values):
        from .triton import attention
        if T == 1:
            return attention.decode_attention(q, keys, values, [x + 1 for x in offsets] if ragged else None)
        return attention.prefill_attention(q, keys, values, o)
    if T == 1 and cpu.enabled(q, keys, values) and keys.stride(-1) == 1 and values.stride(-1) == 1:
        return cpu.decode_attention(q, keys, values, [x + 1 for x in offsets])
    causal = not ragged and o == 0 and T > 1        # a first prefill: plain causal attention
    if ragged:
        mask = (torch.arange(Lk) < torch.tensor(offsets)[:, None] + 1)[:, None, None, :]
    elif T == 1 or causal:
        mask = None
    else:
        mask = torch.arange(Lk)[None, :] <= (o + torch.arange(T))[:, None]
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=None if mask is None else mask.to(q.device),
                                          is_causal=causal, enable_gqa=H != keys.shape[1])
