"""RMSNorm and Mamba2's gated, grouped RMSNorm in plain PyTorch (on CUDA the Triton kernels in
kernels/triton/norm.py replace them)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import triton as tk


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Variance in fp32, weight multiplied in fp32, result cast back to x's dtype."""
    if tk.enabled(x, weight):
        from .triton import norm
        return norm.rms_norm(x, weight, eps)
    return F.rms_norm(x.float(), (x.shape[-1],), weight.float(), eps).to(x.dtype)


def gated_rms_norm(y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, group_size: int,
                   eps: float) -> torch.Tensor:
    """weight * RMSNorm over groups of `group_size` channels of y * silu(z); fp32 throughout and out."""
    if tk.enabled(y, z, weight):
        from .triton import norm
        return norm.gated_rms_norm(y, z, weight, group_size, eps)
    y = y.float() * F.silu(z.float())
    g = F.rms_norm(y.view(*y.shape[:-1], -1, group_size), (group_size,), None, eps)
    return weight.float() * g.view_as(y)
