"""Efficient Video Sampling: which video tokens to keep.

Per spatial position, a tubelet's token is scored by its dissimilarity to the same position in
the previous tubelet, `1 - cos(e_t, e_{t-1})`; the first tubelet scores highest (it is always
kept). The `max(n, int(T * n * (1 - q)))` highest-scoring tokens of the whole clip are kept, in
their original order (ties broken by position, as a stable sort does).
"""

from __future__ import annotations

import torch

from . import triton as tk

FIRST_TUBELET_SCORE = 255.0   # above any 1 - cos (at most 2): the first tubelet always survives


def evs_dissimilarity(video_embeds: torch.Tensor) -> torch.Tensor:
    """[T, n, D] projected embeddings of one clip -> [T, n] scores (fp32)."""
    if tk.enabled(video_embeds):
        from .triton import evs
        return evs.evs_dissimilarity(video_embeds, FIRST_TUBELET_SCORE)
    e = video_embeds.float()
    d = 1 - torch.nn.functional.cosine_similarity(e[1:], e[:-1], dim=-1)
    first = torch.full_like(e[:1, :, 0], FIRST_TUBELET_SCORE)
    return torch.cat([first, d], dim=0)


def evs_num_kept(num_tubelets: int, tokens_per_tubelet: int, rate: float) -> int:
    return max(tokens_per_tubelet, int(num_tubelets * tokens_per_tubelet * (1 - rate)))


def evs_retention_mask(video_embeds: torch.Tensor, rate: float) -> torch.Tensor:
    """[T, n, D] -> bool [T, n]: True for the tokens EVS keeps at pruning rate `rate`."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"EVS pruning rate must be in [0, 1), got {rate}")
    t, n = video_embeds.shape[:2]
    scores = evs_dissimilarity(video_embeds).reshape(-1)
    order = torch.argsort(scores, descending=True, stable=True)
    keep = torch.zeros(t * n, dtype=torch.bool, device=video_embeds.device)
    keep[order[:evs_num_kept(t, n, rate)]] = True
    return keep.view(t, n)
