"""Linear layers for a few rows of input on the CPU (decoding), as weight-times-input products.

Decoding multiplies every weight matrix W (out, in) by one or a few token vectors: a pure
stream over W's memory. Computed the usual way, x @ W^T, MKL picks a matrix-vector kernel that
reads memory on one core at about half the machine's bandwidth. Computed as W @ x^T with at
least two columns, the same product takes MKL's multithreaded matrix-matrix kernel: measured
here 1.5-3x faster for every weight shape of the model, from one to eight rows. Faster still
are the C++ kernels (kernels/cpu), used where they are built. Larger inputs (prefill, training)
go through F.linear unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import cpu

MAX_ROWS = cpu.MAX_ROWS   # beyond this the product is compute-bound and F.linear is as fast


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias); faster for a few rows of fp32 input on the CPU."""
    in_features = x.shape[-1]
    rows = x.numel() // in_features if in_features else 0
    if not (0 < rows <= MAX_ROWS and x.dtype == torch.float32 and weight.dtype == torch.float32
            and x.device.type == "cpu" and weight.is_contiguous()):
        return F.linear(x, weight, bias)
    if cpu.enabled(x, weight) and (bias is None or (bias.dtype == torch.float32 and bias.is_contiguous())):
        return cpu.linear(x, weight, bias)
    x2 = column_pair(x.reshape(in_features)) if rows == 1 else x.reshape(rows, in_features).t()
    y = torch.mm(weight, x2)[:, :rows].t().contiguous()   # callers view it as heads
    if bias is not None:
        y = y + bias
    return y.reshape(*x.shape[:-1], weight.shape[0])


def column_pair(v: torch.Tensor) -> torch.Tensor:
    """A vector (n,) as the first of two columns (n, 2), the second zero, laid out as the
    transpose of a (2, n) matrix: the operand layout of the fast kernel (one column alone
    would take the slow matrix-vector kernel again)."""
    return torch.stack([v, torch.zeros_like(v)]).t()
