"""RMSNorm and Mamba2's grouped gated RMSNorm, one row (or one group of a row) per program."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import launch, next_pow2


@triton.jit
def rms_norm_kernel(x_ptr, w_ptr, out_ptr, n_cols, stride_x, stride_out, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=0) / n_cols + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_out + cols, (x * rstd * w).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def gated_rms_norm_kernel(y_ptr, z_ptr, w_ptr, out_ptr, group_size, n_groups, stride_y, stride_z, stride_out,
                          eps, BLOCK: tl.constexpr):
    """out = w * rmsnorm_group(y * silu(z)), one (row, group) per program, fp32 throughout."""
    row = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1)
    cols = g * group_size + tl.arange(0, BLOCK)
    mask = tl.arange(0, BLOCK) < group_size
    y = tl.load(y_ptr + row * stride_y + cols, mask=mask, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + row * stride_z + cols, mask=mask, other=0.0).to(tl.float32)
    gated = y * (z * tl.sigmoid(z))
    rstd = tl.rsqrt(tl.sum(gated * gated, axis=0) / group_size + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_out + cols, (gated * rstd * w).to(out_ptr.dtype.element_ty), mask=mask)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(..., n) as (rows, n) with unit stride along n, without a copy where possible."""
    t2 = t.reshape(-1, t.shape[-1])
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """kernels.norm.rms_norm: fp32 statistics and weight, result in x's dtype."""
    n = x.shape[-1]
    x2 = _rows(x)
    out = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
    if x2.shape[0]:
        launch(rms_norm_kernel, (x2.shape[0],), x.device, x2, weight, out, n, x2.stride(0), out.stride(0), eps,
               BLOCK=next_pow2(n), num_warps=8 if n >= 2048 else 4)
    return out.view(x.shape)


def gated_rms_norm(y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, group_size: int,
                   eps: float) -> torch.Tensor:
    """kernels.norm.gated_rms_norm: fp32 result."""
    n = y.shape[-1]
    y2, z2 = _rows(y), _rows(z)
    out = torch.empty(y2.shape, dtype=torch.float32, device=y.device)
    if y2.shape[0]:
        launch(gated_rms_norm_kernel, (y2.shape[0], n // group_size), y.device, y2, z2, weight, out, group_size,
               n // group_size, y2.stride(0), z2.stride(0), out.stride(0), eps, BLOCK=next_pow2(group_size),
               num_warps=4)
    return out.view(y.shape)
