"""EVS dissimilarity: 1 - cos(e_t, e_{t-1}) per spatial position, BLOCK_R positions per program."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import launch, next_pow2

COS_EPS = 1e-8   # torch.cosine_similarity's: each norm clamped to at least this


@triton.jit
def evs_dissimilarity_kernel(e_ptr, out_ptr, n_rows, n, D, stride_t, stride_n, eps,
                             BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)      # over tubelets 1.. and positions
    rmask = r < n_rows
    t = (r // n + 1).to(tl.int64)
    pos = r % n
    cur = e_ptr + t * stride_t + pos * stride_n
    prev = cur - stride_t
    dot = tl.zeros((BLOCK_R,), dtype=tl.float32)
    n_cur = tl.zeros((BLOCK_R,), dtype=tl.float32)
    n_prev = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        mask = rmask[:, None] & (d < D)[None, :]
        a = tl.load(cur[:, None] + d[None, :], mask=mask, other=0.0).to(tl.float32)
        b = tl.load(prev[:, None] + d[None, :], mask=mask, other=0.0).to(tl.float32)
        dot += tl.sum(a * b, axis=1)
        n_cur += tl.sum(a * a, axis=1)
        n_prev += tl.sum(b * b, axis=1)
    cos = dot / (tl.maximum(tl.sqrt(n_cur), eps) * tl.maximum(tl.sqrt(n_prev), eps))
    tl.store(out_ptr + t * n + pos, 1.0 - cos, mask=rmask)


def evs_dissimilarity(video_embeds: torch.Tensor, first_score: float) -> torch.Tensor:
    """kernels.evs.evs_dissimilarity: [T, n, D] -> [T, n] fp32, the first tubelet `first_score`."""
    T, n, D = video_embeds.shape
    e = video_embeds if video_embeds.stride(-1) == 1 else video_embeds.contiguous()
    out = torch.empty(T, n, dtype=torch.float32, device=e.device)
    out[:1] = first_score
    rows = (T - 1) * n
    if rows > 0:
        block_r = 16
        launch(evs_dissimilarity_kernel, (triton.cdiv(rows, block_r),), e.device, e, out, rows, n, D, e.stride(0),
               e.stride(1), COS_EPS, BLOCK_R=block_r, BLOCK_D=min(256, next_pow2(D)), num_warps=4)
    return out
