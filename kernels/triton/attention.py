"""Causal GQA attention over the session's KV cache: prefill (flash attention) and decode
(split over the keys, then merged by log-sum-exp).

Query i of a call sits at position offset + i and sees keys 0 .. offset + i. Scores are in
base 2 (q k^T * scale * log2 e) so the online softmax uses exp2.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import dot_precision, launch, next_pow2


@triton.jit
def attention_prefill_kernel(q_ptr, k_ptr, v_ptr, out_ptr, T, Lk, offset, H, heads_per_kv, scale_log2,
                             stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
                             stride_vb, stride_vh, stride_vt, stride_ob, stride_oh, stride_ot,
                             HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                             BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
    h = tl.program_id(1) % H
    b = (tl.program_id(1) // H).to(tl.int64)
    kvh = h // heads_per_kv
    i = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    imask = i < T
    d = tl.arange(0, BLOCK_D)
    dmask = d < HEAD_DIM
    q = tl.load(q_ptr + b * stride_qb + h * stride_qh + i[:, None] * stride_qt + d[None, :],
                mask=imask[:, None] & dmask[None, :], other=0.0)
    k_base = k_ptr + b * stride_kb + kvh * stride_kh
    v_base = v_ptr + b * stride_vb + kvh * stride_vh
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    hi = tl.minimum(Lk, offset + (tl.program_id(0) + 1) * BLOCK_M)    # the block's last query sees up to here
    for j0 in range(0, hi, BLOCK_N):
        j = j0 + tl.arange(0, BLOCK_N)
        jmask = j < Lk
        kt = tl.load(k_base + j[None, :] * stride_kt + d[:, None], mask=jmask[None, :] & dmask[:, None], other=0.0)
        s = tl.dot(q, kt, input_precision=PRECISION) * scale_log2
        s = tl.where((j[None, :] <= offset + i[:, None]) & jmask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_base + j[:, None] * stride_vt + d[None, :], mask=jmask[:, None] & dmask[None, :], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    out = acc / l_i[:, None]
    tl.store(out_ptr + b * stride_ob + h * stride_oh + i[:, None] * stride_ot + d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=imask[:, None] & dmask[None, :])


@triton.jit
def attention_decode_kernel(q_ptr, k_ptr, v_ptr, lengths_ptr, part_o_ptr, part_lse_ptr, seq_len, H, R, split_len,
                            n_splits, scale_log2, stride_qb, stride_qh, stride_kb, stride_kh, stride_kt,
                            stride_vb, stride_vh, stride_vt,
                            HAS_LENGTHS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_R: tl.constexpr,
                            BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
    """One token per row; the R query heads of KV head `kvh` over keys [lo, hi) of one split."""
    b = tl.program_id(0).to(tl.int64)
    kvh = tl.program_id(1)
    sp = tl.program_id(2)
    if HAS_LENGTHS:
        n_keys = tl.load(lengths_ptr + b)
    else:
        n_keys = seq_len
    r = tl.arange(0, BLOCK_R)
    rmask = r < R
    h = kvh * R + r
    d = tl.arange(0, BLOCK_D)
    dmask = d < HEAD_DIM
    q = tl.load(q_ptr + b * stride_qb + h[:, None] * stride_qh + d[None, :], mask=rmask[:, None] & dmask[None, :],
                other=0.0)
    k_base = k_ptr + b * stride_kb + kvh * stride_kh
    v_base = v_ptr + b * stride_vb + kvh * stride_vh
    lo = sp * split_len
    hi = tl.minimum(lo + split_len, n_keys)
    m_i = tl.full((BLOCK_R,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_R,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_R, BLOCK_D), dtype=tl.float32)
    for j0 in range(lo, hi, BLOCK_N):
        j = j0 + tl.arange(0, BLOCK_N)
        jmask = j < hi
        kt = tl.load(k_base + j[None, :] * stride_kt + d[:, None], mask=jmask[None, :] & dmask[:, None], other=0.0)
        s = tl.dot(q, kt, input_precision=PRECISION) * scale_log2
        s = tl.where(jmask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_base + j[:, None] * stride_vt + d[None, :], mask=jmask[:, None] & dmask[None, :], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    seen = l_i > 0                                           # an empty split contributes nothing
    o = tl.where(seen[:, None], acc / tl.where(seen, l_i, 1.0)[:, None], 0.0)
    lse = tl.where(seen, m_i + tl.log2(tl.where(seen, l_i, 1.0)), float("-inf"))
    row = (b * H + h) * n_splits + sp
    tl.store(part_o_ptr + row[:, None] * HEAD_DIM + d[None, :], o, mask=rmask[:, None] & dmask[None, :])
    tl.store(part_lse_ptr + row, lse, mask=rmask)


@triton.jit
def attention_merge_kernel(part_o_ptr, part_lse_ptr, out_ptr, H, n_splits, stride_ob, stride_oh,
                           HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    """Weights each split's output by 2^(lse - max lse); one (row, head) per program."""
    bh = tl.program_id(0).to(tl.int64)
    s = tl.arange(0, BLOCK_S)
    smask = s < n_splits
    d = tl.arange(0, BLOCK_D)
    dmask = d < HEAD_DIM
    lse = tl.load(part_lse_ptr + bh * n_splits + s, mask=smask, other=float("-inf"))
    w = tl.exp2(lse - tl.max(lse, axis=0))
    o = tl.load(part_o_ptr + (bh * n_splits + s)[:, None] * HEAD_DIM + d[None, :], mask=smask[:, None] & dmask[None, :],
                other=0.0)
    out = tl.sum(o * w[:, None], axis=0) / tl.sum(w, axis=0)
    tl.store(out_ptr + (bh // H) * stride_ob + (bh % H) * stride_oh + d, out.to(out_ptr.dtype.element_ty), mask=dmask)


def _unit_last(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def prefill_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, offset: int) -> torch.Tensor:
    """q (b, H, T, D) at positions offset .. offset+T-1 over keys/values (b, Hkv, Lk, D) -> (b, H, T, D)."""
    b, H, T, D = q.shape
    Hkv, Lk = keys.shape[1], keys.shape[2]
    q, keys, values = _unit_last(q), _unit_last(keys), _unit_last(values)
    out = torch.empty(b, T, H, D, dtype=q.dtype, device=q.device)    # the layout o_proj reads
    block_m, block_n = 64, 64 if D <= 64 else 32
    launch(attention_prefill_kernel, (triton.cdiv(T, block_m), b * H), q.device, q, keys, values, out, T, Lk, offset,
           H, H // Hkv, D ** -0.5 * math.log2(math.e), q.stride(0), q.stride(1), q.stride(2),
           keys.stride(0), keys.stride(1), keys.stride(2), values.stride(0), values.stride(1), values.stride(2),
           out.stride(0), out.stride(2), out.stride(1), HEAD_DIM=D, BLOCK_M=block_m, BLOCK_N=block_n,
           BLOCK_D=max(16, next_pow2(D)), PRECISION=dot_precision(q.dtype), num_warps=4, num_stages=2)
    return out.transpose(1, 2)


def decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                     lengths: list[int] | None = None) -> torch.Tensor:
    """One query per row, q (b, H, 1, D), over the first `lengths[r]` keys of row r (all Lk when
    None) of keys/values (b, Hkv, Lk, D) -> (b, H, 1, D)."""
    b, H, _, D = q.shape
    Hkv, Lk = keys.shape[1], keys.shape[2]
    R = H // Hkv
    q, keys, values = _unit_last(q), _unit_last(keys), _unit_last(values)
    block_n = 64
    max_len = max(lengths) if lengths is not None else Lk
    n_splits = max(1, min(triton.cdiv(max_len, block_n), 256 // (b * Hkv)))
    split_len = triton.cdiv(triton.cdiv(max_len, n_splits), block_n) * block_n
    n_splits = max(1, triton.cdiv(max_len, split_len))
    dev = q.device
    part_o = torch.empty(b, H, n_splits, D, dtype=torch.float32, device=dev)
    part_lse = torch.empty(b, H, n_splits, dtype=torch.float32, device=dev)
    lens = torch.tensor(lengths, dtype=torch.int32).to(dev) if lengths is not None else part_lse
    launch(attention_decode_kernel, (b, Hkv, n_splits), dev, q, keys, values, lens, part_o, part_lse, Lk, H, R,
           split_len, n_splits, D ** -0.5 * math.log2(math.e), q.stride(0), q.stride(1),
           keys.stride(0), keys.stride(1), keys.stride(2), values.stride(0), values.stride(1), values.stride(2),
           HAS_LENGTHS=lengths is not None, HEAD_DIM=D, BLOCK_R=max(16, next_pow2(R)), BLOCK_N=block_n,
           BLOCK_D=max(16, next_pow2(D)), PRECISION=dot_precision(q.dtype), num_warps=4)
    out = torch.empty(b, 1, H, D, dtype=q.dtype, device=dev)
    launch(attention_merge_kernel, (b * H,), dev, part_o, part_lse, out, H, n_splits, out.stride(0), out.stride(2),
           HEAD_DIM=D, BLOCK_S=next_pow2(n_splits), BLOCK_D=next_pow2(D), num_warps=4)
    return out.transpose(1, 2)
