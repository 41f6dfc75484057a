"""Mamba2's causal depthwise conv1d + SiLU: over a whole sequence, and the one-token update.

The sequence kernel reads its first K-1 inputs of each channel from the conv state, so a
stream convolved in pieces equals one pass; the update kernel shifts the state in place.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import launch


@triton.jit
def causal_conv1d_kernel(x_ptr, state_ptr, w_ptr, bias_ptr, out_ptr, L, C,
                         stride_xb, stride_xl, stride_sb, stride_sc, stride_sk, stride_ob, stride_ol,
                         K: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    t = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    ch = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = ch < C
    tmask = t < L
    acc = tl.zeros((BLOCK_L, BLOCK_C), dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + ch, mask=cmask, other=0.0).to(tl.float32)[None, :]
    for k in tl.static_range(K):
        src = t + (k - (K - 1))                     # input position; negative: still in the state
        in_x = (src >= 0) & tmask
        in_state = (src < 0) & tmask
        xv = tl.load(x_ptr + b * stride_xb + src[:, None] * stride_xl + ch[None, :],
                     mask=in_x[:, None] & cmask[None, :], other=0.0).to(tl.float32)
        sv = tl.load(state_ptr + b * stride_sb + ch[None, :] * stride_sc + (src + (K - 1))[:, None] * stride_sk,
                     mask=in_state[:, None] & cmask[None, :], other=0.0).to(tl.float32)
        w = tl.load(w_ptr + ch * K + k, mask=cmask, other=0.0).to(tl.float32)
        acc += (xv + sv) * w[None, :]
    out = acc * tl.sigmoid(acc)
    tl.store(out_ptr + b * stride_ob + t[:, None] * stride_ol + ch[None, :], out.to(out_ptr.dtype.element_ty),
             mask=tmask[:, None] & cmask[None, :])


@triton.jit
def causal_conv1d_update_kernel(x_ptr, state_ptr, w_ptr, bias_ptr, out_ptr, C, stride_xb, stride_sb, stride_sc,
                                stride_sk, stride_ob, K: tl.constexpr, HAS_BIAS: tl.constexpr,
                                BLOCK_C: tl.constexpr):
    """One new input per channel: out = silu(bias + w . [state, x]); the state shifts left by one."""
    b = tl.program_id(0).to(tl.int64)
    ch = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = ch < C
    x = tl.load(x_ptr + b * stride_xb + ch, mask=cmask, other=0.0)
    acc = x.to(tl.float32) * tl.load(w_ptr + ch * K + (K - 1), mask=cmask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + ch, mask=cmask, other=0.0).to(tl.float32)
    s_row = state_ptr + b * stride_sb + ch * stride_sc
    for k in tl.static_range(K - 1):
        s = tl.load(s_row + k * stride_sk, mask=cmask, other=0.0)
        acc += s.to(tl.float32) * tl.load(w_ptr + ch * K + k, mask=cmask, other=0.0).to(tl.float32)
        if k > 0:
            tl.store(s_row + (k - 1) * stride_sk, s, mask=cmask)   # shift: loaded before overwritten
    if K > 1:
        tl.store(s_row + (K - 2) * stride_sk, x.to(state_ptr.dtype.element_ty), mask=cmask)
    out = acc * tl.sigmoid(acc)
    tl.store(out_ptr + b * stride_ob + ch, out.to(out_ptr.dtype.element_ty), mask=cmask)


def causal_conv1d(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor,
                  bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """kernels.mamba.causal_conv1d. For one token (decode) the state is updated in place and returned."""
    b, L, c = x.shape
    k = weight.shape[-1]
    if x.stride(-1) != 1:
        x = x.contiguous()
    w = weight.reshape(c, k).contiguous()
    out = torch.empty(b, L, c, dtype=x.dtype, device=x.device)
    if L == 1 and conv_state.dtype == x.dtype:
        block_c = 256
        launch(causal_conv1d_update_kernel, (b, triton.cdiv(c, block_c)), x.device, x, conv_state, w,
               bias if bias is not None else w, out, c, x.stride(0), conv_state.stride(0), conv_state.stride(1),
               conv_state.stride(2), out.stride(0), K=k, HAS_BIAS=bias is not None, BLOCK_C=block_c, num_warps=4)
        return out, conv_state
    block_l, block_c = 16, 128
    launch(causal_conv1d_kernel, (b, triton.cdiv(L, block_l), triton.cdiv(c, block_c)), x.device, x, conv_state,
           w, bias if bias is not None else w, out, L, c, x.stride(0), x.stride(1), conv_state.stride(0),
           conv_state.stride(1), conv_state.stride(2), out.stride(0), out.stride(1), K=k, HAS_BIAS=bias is not None,
           BLOCK_L=block_l, BLOCK_C=block_c, num_warps=4)
    tail = torch.cat([conv_state.to(x.dtype), x[:, max(0, L - (k - 1)):].transpose(1, 2)], dim=2)
    return out, tail[:, :, tail.shape[2] - (k - 1):].contiguous()
