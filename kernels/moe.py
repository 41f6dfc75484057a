"""NemotronH mixture of experts in plain PyTorch: the router and the experts grouped by token.

`route` is the sigmoid router with correction bias: experts are *chosen* by
`sigmoid(logits) + e_score_correction_bias` (within the best `topk_group` of `n_group` groups,
each group scored by its two best experts), and *weighted* by the uncorrected sigmoid, then
normalized and scaled. `grouped_experts` runs every hit expert once over the tokens routed to
it (tokens sorted by expert), never a loop over experts per token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import cpu
from . import triton as tk
from .linear import column_pair, linear


def route(logits: torch.Tensor, correction_bias: torch.Tensor, top_k: int, n_group: int, topk_group: int,
          norm_topk_prob: bool, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Router logits (N, E), fp32 -> (expert ids (N, k), weights (N, k) fp32)."""
    if tk.enabled(logits, correction_bias):
        from .triton import moe
        return moe.route(logits, correction_bias, top_k, n_group, topk_group, norm_topk_prob, scaling)
    if logits.shape[0] <= cpu.MAX_ROWS and cpu.enabled(logits, correction_bias):
        return cpu.route(logits.contiguous(), correction_bias.contiguous(), top_k, n_group, topk_group,
                         norm_topk_prob, scaling)
    scores = logits.sigmoid()
    choice = scores + correction_bias
    if n_group > 1:
        N, E = choice.shape
        grouped = choice.view(N, n_group, E // n_group)
        group_scores = grouped.topk(2, dim=-1).values.sum(-1)                   # (N, n_group)
        keep = torch.zeros_like(group_scores, dtype=torch.bool)
        keep.scatter_(1, group_scores.topk(topk_group, dim=-1).indices, True)
        choice = grouped.masked_fill(~keep[..., None], float("-inf")).view(N, E)
    ids = choice.topk(top_k, dim=-1).indices
    weights = scores.gather(1, ids)
    if norm_topk_prob:
        weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
    return ids, weights * scaling


def grouped_experts(x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor,
                    up: list[torch.Tensor], down: list[torch.Tensor]) -> torch.Tensor:
    """sum_k w_k * down_e(relu(up_e(x))^2) for each token's experts e = ids[:, k]; fp32 out.

    x (N, d), ids/weights (N, k); up[e] (I, d), down[e] (d, I).
    """
    if tk.enabled(x, up[0], down[0]):
        from .triton import moe
        return moe.grouped_experts(x, ids, weights, up, down)
    N, k = ids.shape
    if N <= cpu.MAX_ROWS and cpu.enabled(x, weights, up[0], down[0]) and all(
            w.is_contiguous() for w in (up[0], down[0])):
        return cpu.grouped_experts(x.contiguous(), ids.contiguous(), weights.contiguous(), up, down)
    if N == 1 and x.dtype == torch.float32 and x.device.type == "cpu" and not torch.is_grad_enabled():
        # decode: just the token's k experts, in expert order as below, in kernels.linear's layout
        out = torch.zeros(x.shape[1], dtype=torch.float32, device=x.device)
        col = column_pair(x[0])
        for e, w in sorted(zip(ids[0].tolist(), weights[0].tolist())):
            h = torch.mm(up[e], col).relu_().square_()          # the zero column stays zero
            out.add_(torch.mm(down[e], h.t().contiguous().t())[:, 0], alpha=w)
        return out[None]
    flat = ids.reshape(-1)
    order = flat.argsort(stable=True)
    token = order // k
    counts = torch.bincount(flat, minlength=len(up)).tolist()
    xs = x[token]
    ys = torch.empty_like(xs)
    start = 0
    for e, count in enumerate(counts):
        if count:
            seg = slice(start, start + count)
            ys[seg] = linear(F.relu(linear(xs[seg], up[e])).square(), down[e])
            start += count
    out = torch.zeros(N, x.shape[1], dtype=torch.float32, device=x.device)
    return out.index_add_(0, token, ys.float() * weights.reshape(-1)[order, None])
