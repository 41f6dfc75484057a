"""Mamba2 in plain PyTorch: the causal depthwise conv, the SSD scan and the one-step update.

Shapes (b batch, L length, h heads, p head dim, g groups, n state size):
    x  (b, L, h, p)     dt (b, L, h)      A (h,)      B, C (b, L, g, n)      D (h,)
    state (b, h, p, n), always fp32.

The recurrence every function here computes (`dt` already softplus'ed and clamped):
    state_t = exp(dt_t * A) * state_{t-1} + dt_t * x_t (outer) B_t
    y_t     = state_t . C_t + D * x_t

`ssd_sequential` is that recurrence written out, the reference the others are tested against.
`ssd_chunked` is the fast path for prefill: within a chunk of Q positions the recurrence is a
masked (Q x Q) matrix product, between chunks a short loop carries the state (Mamba2's "SSD").
`ssd_step` is the decode step. On CUDA the Triton kernels in kernels/triton/ replace them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import triton as tk


def causal_conv1d(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor,
                  bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Depthwise causal conv + SiLU over `x` (b, L, c), continuing from `conv_state` (b, c, K-1).

    Returns the output (b, L, c) and the new state: the last K-1 inputs, so that a stream
    convolved in pieces equals one pass over the whole.
    """
    if tk.enabled(x, conv_state, weight):
        from .triton import conv
        return conv.causal_conv1d(x, conv_state, weight, bias)
    b, L, c = x.shape
    k = weight.shape[-1]
    full = torch.cat([conv_state.to(x.dtype), x.transpose(1, 2)], dim=2)        # (b, c, K-1+L)
    if L == 1:  # decode: one dot product per channel, cheaper than a conv call
        out = (full * weight.view(c, k)).sum(-1, keepdim=True)
        if bias is not None:
            out += bias[:, None]
    else:
        out = F.conv1d(full, weight.view(c, 1, k), bias, groups=c)                # (b, c, L)
    new_state = full[:, :, full.shape[2] - (k - 1):]
    return F.silu(out).transpose(1, 2), new_state


def _heads(t: torch.Tensor, h: int) -> torch.Tensor:
    """(..., g, n) -> (..., h, n): each group's B or C shared by its h/g heads."""
    g = t.shape[-2]
    return t.unsqueeze(-2).expand(*t.shape[:-1], h // g, t.shape[-1]).reshape(*t.shape[:-2], h, t.shape[-1])


def ssd_sequential(x, dt, A, B, C, D, state=None):
    """The reference: the recurrence, one position at a time (fp64 in tests). Returns (y, state)."""
    b, L, h, p = x.shape
    n = B.shape[-1]
    Bh, Ch = _heads(B, h), _heads(C, h)
    s = x.new_zeros(b, h, p, n) if state is None else state.to(x.dtype)
    ys = []
    for t in range(L):
        dA = torch.exp(dt[:, t] * A)                                          # (b, h)
        s = s * dA[:, :, None, None] + (dt[:, t, :, None] * x[:, t])[..., None] * Bh[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", s, Ch[:, t]) + D[:, None] * x[:, t])
    return torch.stack(ys, dim=1), s


def ssd_step(state, x, dt, A, B, C, D):
    """One decode step, in place on `state` (b, h, p, n). x (b, h, p), dt (b, h), B/C (b, g, n)."""
    if tk.enabled(state, x, B, C) and state.is_contiguous():
        from .triton import ssd
        return ssd.ssd_step(state, x, dt, A, B, C, D)
    b, h, p, n = state.shape
    g = B.shape[1]
    s = state.view(b, g, h // g, p, n)      # heads grouped: B and C broadcast, never copied
    xf = x.float()
    dA = torch.exp(dt * A)                                                    # (b, h)
    s.mul_(dA.view(b, g, h // g, 1, 1)).addcmul_((dt[:, :, None] * xf).view(b, g, h // g, p, 1),
                                                 B.float().view(b, g, 1, 1, n))
    # y = s . C as a row vector times the transposed state: MKL's fast layout for this product
    # (s @ C-as-a-column is a batch of tiny matrix-vector calls, measured 6x slower here)
    y = torch.matmul(C.float().view(b, g, 1, n), s.view(b, g, (h // g) * p, n).transpose(-1, -2))
    return y.view(b, h, p) + D[:, None] * xf


def _segsum_exp(a: torch.Tensor) -> torch.Tensor:
    """exp(sum_{j<k<=i} a_k) for i >= j, else 0, over the last axis (..., Q) -> (..., Q, Q).

    Built from a masked cumulative sum rather than a difference of cumsums, which keeps it
    exact to rounding when the cumulative decay is large. In place where it can be: these
    (Q x Q) blocks are the largest temporaries of a prefill.
    """
    Q = a.shape[-1]
    tri_strict = torch.tril(torch.ones(Q, Q, dtype=torch.bool, device=a.device), diagonal=-1)
    seg = a.unsqueeze(-1).repeat(*(1,) * a.dim(), Q)                          # [.., i, j] = a_i
    seg = seg.masked_fill_(~tri_strict, 0).cumsum_(dim=-2)                    # sum_{j<k<=i} a_k
    return seg.masked_fill_(~torch.tril(torch.ones_like(tri_strict)), float("-inf")).exp_()


def ssd_chunked(x, dt, A, B, C, D, state=None, chunk_size: int = 128):
    """The chunked SSD scan in batched matrix products (fp32). Returns (y, final state)."""
    if tk.enabled(x, B, C):
        from .triton import ssd
        return ssd.ssd_chunked(x, dt, A, B, C, D, state)     # its own chunk size: same result
    b, L, h, p = x.shape
    g, n = B.shape[-2], B.shape[-1]
    Q = min(chunk_size, L)
    pad = (-L) % Q
    x, dt, B, C = x.float(), dt.float(), B.float(), C.float()
    if pad:  # dt = 0 in the padding: no decay and no input, so the final state is exact
        x, B, C = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (x, B, C))
        dt = F.pad(dt, (0, 0, 0, pad))
    c = (L + pad) // Q
    xdt = (x * dt[..., None]).view(b, c, Q, h, p).permute(0, 1, 3, 2, 4)       # (b, c, h, Q, p)
    a = (dt * A).view(b, c, Q, h).permute(0, 1, 3, 2)                         # (b, c, h, Q)
    a_cum = a.cumsum(dim=-1)
    Bc = B.view(b, c, Q, g, n).permute(0, 1, 3, 2, 4)                         # (b, c, g, Q, n)
    Cc = C.view(b, c, Q, g, n).permute(0, 1, 3, 2, 4)
    r = h // g

    # 1. within each chunk: y = (C B^T * decay mask) (x dt), heads of a group share C B^T
    CB = torch.matmul(Cc, Bc.transpose(-1, -2))                               # (b, c, g, Q, Q)
    decay = _segsum_exp(a)                                                    # (b, c, h, Q, Q)
    M = (decay.view(b, c, g, r, Q, Q) * CB.unsqueeze(3)).view(b, c, h, Q, Q)
    y = torch.matmul(M, xdt)                                                  # (b, c, h, Q, p)

    # 2. what each chunk adds to the state: sum_l exp(a_cum[-1] - a_cum[l]) (x dt)_l B_l
    to_end = torch.exp(a_cum[..., -1:] - a_cum)                               # (b, c, h, Q)
    Bh = Bc.unsqueeze(3).expand(b, c, g, r, Q, n).reshape(b, c, h, Q, n)
    chunk_states = torch.matmul((xdt * to_end[..., None]).transpose(-1, -2), Bh)  # (b, c, h, p, n)

    # 3. carry the state across chunks (a short loop: c = L / Q steps)
    s = x.new_zeros(b, h, p, n) if state is None else state.float()
    chunk_decay = torch.exp(a_cum[..., -1])                                   # (b, c, h)
    starts = []
    for i in range(c):
        starts.append(s)
        s = s * chunk_decay[:, i, :, None, None] + chunk_states[:, i]
    starts = torch.stack(starts, dim=1)                                       # (b, c, h, p, n)

    # 4. the carried state's contribution: exp(a_cum[l]) C_l . state_start
    Ch = Cc.unsqueeze(3).expand(b, c, g, r, Q, n).reshape(b, c, h, Q, n)
    y = y + torch.matmul(Ch, starts.transpose(-1, -2)) * torch.exp(a_cum)[..., None]
    y = y.permute(0, 1, 3, 2, 4).reshape(b, c * Q, h, p)[:, :L]
    return y + D[:, None] * x[:, :L], s
