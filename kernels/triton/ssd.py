"""Mamba2's SSD scan: the chunked prefill (three kernels) and the one-token state update.

Prefill, per chunk of Q positions (a_cum: the running sum of dt * A within the chunk):
  1. `ssd_chunk_state_kernel`: what the chunk adds to the state,
     sum_l exp(a_cum[-1] - a_cum[l]) dt_l x_l (outer) B_l, and the chunk's total decay;
  2. `ssd_state_passing_kernel`: a loop over chunks carrying the state; each chunk's slot is
     overwritten with the state at its start, and the final state is written out;
  3. `ssd_chunk_scan_kernel`: y_l = exp(a_cum[l]) C_l . start + sum_{j<=l} (C_l . B_j)
     exp(a_cum[l] - a_cum[j]) dt_j x_j + D x_l.
Positions past the end load dt = 0: no decay and no input, so any length works.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import dot_precision, launch, next_pow2

CHUNK = 64   # positions per chunk: a (64 x 64) decay block per program; any size gives the same result


@triton.jit
def ssd_chunk_state_kernel(x_ptr, dt_ptr, A_ptr, B_ptr, states_ptr, a_end_ptr, L, H, P, N, n_chunks, heads_per_group,
                           stride_xb, stride_xl, stride_xh, stride_db, stride_dl, stride_bb, stride_bl, stride_bg,
                           Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    pid = tl.program_id(0)
    c = pid % n_chunks
    h = (pid // n_chunks) % H
    b = (pid // n_chunks // H).to(tl.int64)
    g = h // heads_per_group
    pos = tl.arange(0, Q)
    l = c * Q + pos
    lmask = l < L
    dt = tl.load(dt_ptr + b * stride_db + l * stride_dl + h, mask=lmask, other=0.0).to(tl.float32)
    a_cum = tl.cumsum(dt * tl.load(A_ptr + h).to(tl.float32), axis=0)
    a_end = tl.sum(tl.where(pos == Q - 1, a_cum, 0.0), axis=0)
    w = dt * tl.exp(a_end - a_cum)
    p = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    x = tl.load(x_ptr + b * stride_xb + l[:, None] * stride_xl + h * stride_xh + p[None, :],
                mask=lmask[:, None] & (p[None, :] < P), other=0.0)
    Bt = tl.load(B_ptr + b * stride_bb + l[:, None] * stride_bl + g * stride_bg + n[None, :],
                 mask=lmask[:, None] & (n[None, :] < N), other=0.0)
    xw = (x.to(tl.float32) * w[:, None]).to(Bt.dtype)
    s = tl.dot(tl.trans(xw), Bt, input_precision=PRECISION)                          # (BLOCK_P, BLOCK_N)
    base = ((b * n_chunks + c) * H + h) * P * N
    tl.store(states_ptr + base + p[:, None] * N + n[None, :], s, mask=(p[:, None] < P) & (n[None, :] < N))
    if (tl.program_id(1) == 0) & (tl.program_id(2) == 0):
        tl.store(a_end_ptr + (b * n_chunks + c) * H + h, a_end)


@triton.jit
def ssd_state_passing_kernel(states_ptr, a_end_ptr, init_ptr, final_ptr, H, PN, n_chunks,
                             HAS_INIT: tl.constexpr, BLOCK: tl.constexpr):
    h = tl.program_id(0) % H
    b = (tl.program_id(0) // H).to(tl.int64)
    idx = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < PN
    if HAS_INIT:
        s = tl.load(init_ptr + (b * H + h) * PN + idx, mask=mask, other=0.0)
    else:
        s = tl.zeros((BLOCK,), dtype=tl.float32)
    for c in range(n_chunks):
        ptr = states_ptr + ((b * n_chunks + c) * H + h) * PN + idx
        added = tl.load(ptr, mask=mask, other=0.0)
        decay = tl.exp(tl.load(a_end_ptr + (b * n_chunks + c) * H + h))
        tl.store(ptr, s, mask=mask)                  # the slot now holds the chunk's start state
        s = s * decay + added
    tl.store(final_ptr + (b * H + h) * PN + idx, s, mask=mask)


@triton.jit
def ssd_chunk_scan_kernel(x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, starts_ptr, y_ptr, L, H, P, N, n_chunks,
                          heads_per_group, stride_xb, stride_xl, stride_xh, stride_db, stride_dl,
                          stride_bb, stride_bl, stride_bg, stride_cb, stride_cl, stride_cg,
                          Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    pid = tl.program_id(0)
    c = pid % n_chunks
    h = (pid // n_chunks) % H
    b = (pid // n_chunks // H).to(tl.int64)
    g = h // heads_per_group
    pos = tl.arange(0, Q)
    l = c * Q + pos
    lmask = l < L
    dt = tl.load(dt_ptr + b * stride_db + l * stride_dl + h, mask=lmask, other=0.0).to(tl.float32)
    a_cum = tl.cumsum(dt * tl.load(A_ptr + h).to(tl.float32), axis=0)
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = p < P
    start_base = ((b * n_chunks + c) * H + h) * P * N

    from_start = tl.zeros((Q, BLOCK_P), dtype=tl.float32)
    CB = tl.zeros((Q, Q), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        nmask = n < N
        Ct = tl.load(C_ptr + b * stride_cb + l[:, None] * stride_cl + g * stride_cg + n[None, :],
                     mask=lmask[:, None] & nmask[None, :], other=0.0)
        Bt = tl.load(B_ptr + b * stride_bb + l[:, None] * stride_bl + g * stride_bg + n[None, :],
                     mask=lmask[:, None] & nmask[None, :], other=0.0)
        St = tl.load(starts_ptr + start_base + p[None, :] * N + n[:, None],
                     mask=nmask[:, None] & pmask[None, :], other=0.0)                 # (BLOCK_N, BLOCK_P)
        from_start += tl.dot(Ct, St.to(Ct.dtype), input_precision=PRECISION)
        CB += tl.dot(Ct, tl.trans(Bt), input_precision=PRECISION)
    acc = from_start * tl.exp(a_cum)[:, None]

    causal = pos[:, None] >= pos[None, :]
    decay = tl.exp(tl.where(causal, a_cum[:, None] - a_cum[None, :], float("-inf")))
    M = CB * decay * dt[None, :]
    x = tl.load(x_ptr + b * stride_xb + l[:, None] * stride_xl + h * stride_xh + p[None, :],
                mask=lmask[:, None] & pmask[None, :], other=0.0)
    acc += tl.dot(M.to(x.dtype), x, input_precision=PRECISION)
    acc += tl.load(D_ptr + h).to(tl.float32) * x.to(tl.float32)
    tl.store(y_ptr + ((b * L + l[:, None]) * H + h) * P + p[None, :], acc, mask=lmask[:, None] & pmask[None, :])


@triton.jit
def ssd_step_kernel(state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, y_ptr, H, P, N, heads_per_group,
                    stride_xb, stride_xh, stride_db, stride_bb, stride_bg, stride_cb, stride_cg,
                    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    """state = exp(dt A) state + dt x (outer) B;  y = state . C + D x   (in place on the state)."""
    h = tl.program_id(0) % H
    b = (tl.program_id(0) // H).to(tl.int64)
    g = h // heads_per_group
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    n = tl.arange(0, BLOCK_N)
    pmask, nmask = p < P, n < N
    mask = pmask[:, None] & nmask[None, :]
    s_ptr = state_ptr + ((b * H + h) * P + p[:, None]) * N + n[None, :]
    s = tl.load(s_ptr, mask=mask, other=0.0)
    x = tl.load(x_ptr + b * stride_xb + h * stride_xh + p, mask=pmask, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + b * stride_db + h).to(tl.float32)
    dA = tl.exp(dt * tl.load(A_ptr + h).to(tl.float32))
    Bv = tl.load(B_ptr + b * stride_bb + g * stride_bg + n, mask=nmask, other=0.0).to(tl.float32)
    Cv = tl.load(C_ptr + b * stride_cb + g * stride_cg + n, mask=nmask, other=0.0).to(tl.float32)
    s = s * dA + (dt * x)[:, None] * Bv[None, :]
    tl.store(s_ptr, s, mask=mask)
    y = tl.sum(s * Cv[None, :], axis=1) + tl.load(D_ptr + h).to(tl.float32) * x
    tl.store(y_ptr + (b * H + h) * P + p, y, mask=pmask)


def _unit_last(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def ssd_chunked(x, dt, A, B, C, D, state=None, chunk_size: int = CHUNK):
    """kernels.mamba.ssd_chunked: (y (b, L, h, p) fp32, final state fp32). `chunk_size` is the
    kernel's tile (a power of two >= 16), not a property of the result."""
    if chunk_size < 16 or chunk_size & (chunk_size - 1):
        raise ValueError(f"ssd_chunked: chunk_size must be a power of two >= 16, got {chunk_size}")
    b, L, h, p = x.shape
    g, n = B.shape[-2], B.shape[-1]
    x, B, C, dt = _unit_last(x), _unit_last(B), _unit_last(C), _unit_last(dt.float())
    A, D = A.float().contiguous(), D.float().contiguous()
    Q = chunk_size
    nc = triton.cdiv(L, Q)
    dev = x.device
    states = torch.empty(b, nc, h, p, n, dtype=torch.float32, device=dev)
    a_end = torch.empty(b, nc, h, dtype=torch.float32, device=dev)
    final = torch.empty(b, h, p, n, dtype=torch.float32, device=dev)
    y = torch.empty(b, L, h, p, dtype=torch.float32, device=dev)
    if L == 0:
        return y, (state.float().clone() if state is not None else final.zero_())
    bp = max(16, min(64, next_pow2(p)))
    bn = max(16, min(64, next_pow2(n)))
    prec = dot_precision(x.dtype)
    launch(ssd_chunk_state_kernel, (b * h * nc, triton.cdiv(n, bn), triton.cdiv(p, bp)), dev,
           x, dt, A, B, states, a_end, L, h, p, n, nc, h // g, x.stride(0), x.stride(1), x.stride(2),
           dt.stride(0), dt.stride(1), B.stride(0), B.stride(1), B.stride(2),
           Q=Q, BLOCK_P=bp, BLOCK_N=bn, PRECISION=prec, num_warps=4)
    init = state.float().contiguous() if state is not None else final
    block = 1024
    launch(ssd_state_passing_kernel, (b * h, triton.cdiv(p * n, block)), dev, states, a_end, init, final, h, p * n,
           nc, HAS_INIT=state is not None, BLOCK=block, num_warps=4)
    launch(ssd_chunk_scan_kernel, (b * h * nc, triton.cdiv(p, bp)), dev,
           x, dt, A, B, C, D, states, y, L, h, p, n, nc, h // g, x.stride(0), x.stride(1), x.stride(2),
           dt.stride(0), dt.stride(1), B.stride(0), B.stride(1), B.stride(2), C.stride(0), C.stride(1), C.stride(2),
           Q=Q, BLOCK_P=bp, BLOCK_N=bn, PRECISION=prec, num_warps=4)
    return y, final


def ssd_step(state, x, dt, A, B, C, D):
    """kernels.mamba.ssd_step: in place on the fp32 `state` (b, h, p, n); returns y (b, h, p) fp32."""
    b, h, p, n = state.shape
    g = B.shape[1]
    if not state.is_contiguous():
        raise ValueError("ssd_step: the SSM state must be contiguous (it is updated in place)")
    x, B, C, dt = _unit_last(x), _unit_last(B), _unit_last(C), _unit_last(dt.float())
    y = torch.empty(b, h, p, dtype=torch.float32, device=state.device)
    bp = min(16, next_pow2(p))
    launch(ssd_step_kernel, (b * h, triton.cdiv(p, bp)), state.device, state, x, dt, A.float().contiguous(), B, C,
           D.float().contiguous(), y, h, p, n, h // g, x.stride(0), x.stride(1), dt.stride(0), B.stride(0),
           B.stride(1), C.stride(0), C.stride(1), BLOCK_P=bp, BLOCK_N=next_pow2(n), num_warps=4)
    return y
