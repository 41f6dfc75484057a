"""NemotronH MoE: the sigmoid router, and the experts as a grouped GEMM over tokens sorted by expert.

`route_kernel`: one token per program; scores sigmoid(logits), choice scores + correction bias,
optionally restricted to the best `topk_group` groups (each scored by its two best choices),
then k rounds of arg-max; the chosen experts' uncorrected scores normalized and scaled.

The experts: (token, slot) pairs sorted by expert and cut into tiles of BLOCK_M rows of one
expert. `expert_up_kernel` computes relu(x W_up^T)^2 for a tile, `expert_down_kernel` multiplies
by W_down^T and the routing weight and writes each row back to its (token, slot) place; the
launcher sums a token's k slots. Expert weights stay where the checkpoint loader put them: the
kernels find expert e's matrices through a table of their addresses.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import dot_precision, launch, next_pow2

_TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


@triton.jit
def route_kernel(logits_ptr, bias_ptr, ids_ptr, weights_ptr, E, experts_per_group, scaling,
                 TOP_K: tl.constexpr, N_GROUP: tl.constexpr, TOPK_GROUP: tl.constexpr, NORMALIZE: tl.constexpr,
                 BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    e = tl.arange(0, BLOCK_E)
    emask = e < E
    scores = tl.sigmoid(tl.load(logits_ptr + row * E + e, mask=emask, other=0.0).to(tl.float32))
    choice = scores + tl.load(bias_ptr + e, mask=emask, other=0.0).to(tl.float32)
    choice = tl.where(emask, choice, float("-inf"))
    if N_GROUP > 1:
        group = e // experts_per_group
        gi = tl.arange(0, N_GROUP)
        group_scores = tl.zeros((N_GROUP,), dtype=tl.float32)
        for j in tl.static_range(N_GROUP):                         # each group: its two best choices
            in_j = (group == j) & emask
            first = tl.max(tl.where(in_j, choice, float("-inf")), axis=0)
            first_at = tl.min(tl.where(in_j & (choice == first), e, BLOCK_E), axis=0)
            second = tl.max(tl.where(in_j & (e != first_at), choice, float("-inf")), axis=0)
            group_scores = tl.where(gi == j, first + second, group_scores)
        keep = tl.zeros((BLOCK_E,), dtype=tl.int1)
        for _ in tl.static_range(TOPK_GROUP):                      # the best topk_group groups
            best = tl.max(group_scores, axis=0)
            best_at = tl.min(tl.where(group_scores == best, gi, N_GROUP), axis=0)
            keep = keep | (group == best_at)
            group_scores = tl.where(gi == best_at, float("-inf"), group_scores)
        choice = tl.where(keep, choice, float("-inf"))
    k = tl.arange(0, BLOCK_K)
    chosen_w = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for j in tl.static_range(TOP_K):                               # k rounds of arg-max, best first
        best = tl.max(choice, axis=0)
        best_at = tl.min(tl.where(choice == best, e, BLOCK_E), axis=0)
        tl.store(ids_ptr + row * TOP_K + j, best_at.to(ids_ptr.dtype.element_ty))
        chosen_w = tl.where(k == j, tl.sum(tl.where(e == best_at, scores, 0.0), axis=0), chosen_w)
        choice = tl.where(e == best_at, float("-inf"), choice)
    if NORMALIZE:
        chosen_w = chosen_w / (tl.sum(chosen_w, axis=0) + 1e-20)
    tl.store(weights_ptr + row * TOP_K + k, chosen_w * scaling, mask=k < TOP_K)


@triton.jit
def expert_up_kernel(x_ptr, up_table_ptr, token_ptr, tile_expert_ptr, tile_start_ptr, tile_end_ptr, h_ptr,
                     D, I, stride_x, W_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """h[rows] = relu(x[token[rows]] @ W_up[e]^T)^2 for one tile of one expert e."""
    tile = tl.program_id(0)
    e = tl.load(tile_expert_ptr + tile)
    if e < 0:
        return
    start, end = tl.load(tile_start_ptr + tile), tl.load(tile_end_ptr + tile)
    rows = start + tl.arange(0, BLOCK_M)
    rmask = rows < end
    tok = tl.load(token_ptr + rows, mask=rmask, other=0).to(tl.int64)
    w_ptr = tl.load(up_table_ptr + e).to(tl.pointer_type(W_DTYPE))
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = cols < I
    kk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        kmask = k0 + kk < D
        xa = tl.load(x_ptr + tok[:, None] * stride_x + (k0 + kk)[None, :], mask=rmask[:, None] & kmask[None, :],
                     other=0.0)
        wb = tl.load(w_ptr + cols[None, :].to(tl.int64) * D + (k0 + kk)[:, None], mask=kmask[:, None] & cmask[None, :],
                     other=0.0)                                                    # (BLOCK_K, BLOCK_N) of W^T
        acc += tl.dot(xa, wb, input_precision=PRECISION)
    acc = tl.maximum(acc.to(h_ptr.dtype.element_ty).to(tl.float32), 0.0)     # rounded as F.linear would
    h = acc * acc
    tl.store(h_ptr + rows[:, None].to(tl.int64) * I + cols[None, :], h.to(h_ptr.dtype.element_ty),
             mask=rmask[:, None] & cmask[None, :])


@triton.jit
def expert_down_kernel(h_ptr, down_table_ptr, slot_ptr, route_w_ptr, tile_expert_ptr, tile_start_ptr, tile_end_ptr,
                       out_ptr, D, I, W_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """out[slot[rows]] = route_w[slot[rows]] * (h[rows] @ W_down[e]^T), fp32."""
    tile = tl.program_id(0)
    e = tl.load(tile_expert_ptr + tile)
    if e < 0:
        return
    start, end = tl.load(tile_start_ptr + tile), tl.load(tile_end_ptr + tile)
    rows = start + tl.arange(0, BLOCK_M)
    rmask = rows < end
    slot = tl.load(slot_ptr + rows, mask=rmask, other=0).to(tl.int64)
    w_ptr = tl.load(down_table_ptr + e).to(tl.pointer_type(W_DTYPE))
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = cols < D
    kk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, I, BLOCK_K):
        kmask = k0 + kk < I
        ha = tl.load(h_ptr + rows[:, None].to(tl.int64) * I + (k0 + kk)[None, :], mask=rmask[:, None] & kmask[None, :],
                     other=0.0)
        wb = tl.load(w_ptr + cols[None, :].to(tl.int64) * I + (k0 + kk)[:, None], mask=kmask[:, None] & cmask[None, :],
                     other=0.0)
        acc += tl.dot(ha, wb, input_precision=PRECISION)
    rw = tl.load(route_w_ptr + slot, mask=rmask, other=0.0)
    y = acc.to(h_ptr.dtype.element_ty).to(tl.float32) * rw[:, None]
    tl.store(out_ptr + slot[:, None] * D + cols[None, :], y, mask=rmask[:, None] & cmask[None, :])


def route(logits: torch.Tensor, correction_bias: torch.Tensor, top_k: int, n_group: int, topk_group: int,
          norm_topk_prob: bool, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """kernels.moe.route."""
    N, E = logits.shape
    logits = logits.float().contiguous()
    ids = torch.empty(N, top_k, dtype=torch.int64, device=logits.device)
    weights = torch.empty(N, top_k, dtype=torch.float32, device=logits.device)
    if N:
        launch(route_kernel, (N,), logits.device, logits, correction_bias.float().contiguous(), ids, weights, E,
               E // n_group, float(scaling), TOP_K=top_k, N_GROUP=n_group, TOPK_GROUP=topk_group,
               NORMALIZE=bool(norm_topk_prob), BLOCK_E=next_pow2(E), BLOCK_K=next_pow2(top_k), num_warps=4)
    return ids, weights


_tables: dict[tuple, torch.Tensor] = {}


def _address_table(weights: list[torch.Tensor], device) -> torch.Tensor:
    """The experts' matrices' addresses, int64 on `device`; cached by the addresses themselves
    (so a table can never point at freed weights that were replaced)."""
    key = (str(device), *(w.data_ptr() for w in weights))
    table = _tables.get(key)
    if table is None:
        if len(_tables) > 256:
            _tables.clear()
        table = _tables[key] = torch.tensor(key[1:], dtype=torch.int64).to(device)
    return table


def grouped_experts(x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor,
                    up: list[torch.Tensor], down: list[torch.Tensor]) -> torch.Tensor:
    """kernels.moe.grouped_experts: sum_k w_k * down_e(relu(up_e(x))^2), fp32 (N, d)."""
    N, k = ids.shape
    d = x.shape[1]
    inner = up[0].shape[0]
    wdtype = up[0].dtype
    for w, shape in [(w, (inner, d)) for w in up] + [(w, (d, inner)) for w in down]:
        if tuple(w.shape) != shape or w.dtype != wdtype or not w.is_contiguous():
            raise ValueError("grouped_experts: expert weights must be contiguous, of one dtype and shape")
    dev = x.device
    x = x.to(wdtype)
    if x.stride(-1) != 1:
        x = x.contiguous()
    M = N * k
    flat = ids.reshape(-1)
    if N == 1:   # decode: each slot its own tile, no sort
        block_m = 16
        slot = torch.arange(M, device=dev)
        tile_expert, tile_start = flat, slot
        tile_end = slot + 1
    else:        # sorted by expert; tile t covers rows [tile_start, tile_end) of one expert
        block_m = 64 if M >= 1024 else 16
        slot = flat.argsort(stable=True)
        counts = torch.bincount(flat, minlength=len(up))
        ends = counts.cumsum(0)
        tiles = (counts + block_m - 1) // block_m
        tiles_end = tiles.cumsum(0)
        n_tiles = triton.cdiv(M, block_m) + min(len(up), M)     # an upper bound, known without a sync
        t = torch.arange(n_tiles, device=dev)
        expert = torch.searchsorted(tiles_end, t, right=True)
        valid = expert < len(up)
        expert = expert.clamp(max=len(up) - 1)
        tile_start = ends[expert] - counts[expert] + (t - (tiles_end[expert] - tiles[expert])) * block_m
        tile_end = torch.minimum(tile_start + block_m, ends[expert])
        tile_expert = torch.where(valid, expert, -1)
    tile_expert, tile_start, tile_end = (v.to(torch.int32) for v in (tile_expert, tile_start, tile_end))
    token = (slot // k).to(torch.int32)
    h = torch.empty(M, inner, dtype=wdtype, device=dev)
    out = torch.empty(M, d, dtype=torch.float32, device=dev)
    prec = dot_precision(wdtype)
    tl_dtype = _TL_DTYPES[wdtype]
    block_n, block_k = 64, 64
    grid_tiles = tile_expert.shape[0]
    launch(expert_up_kernel, (grid_tiles, triton.cdiv(inner, block_n)), dev, x, _address_table(up, dev), token,
           tile_expert, tile_start, tile_end, h, d, inner, x.stride(0), W_DTYPE=tl_dtype, PRECISION=prec,
           BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=4)
    launch(expert_down_kernel, (grid_tiles, triton.cdiv(d, block_n)), dev, h, _address_table(down, dev),
           slot.to(torch.int32), weights.float().contiguous().reshape(-1), tile_expert, tile_start, tile_end, out, d,
           inner, W_DTYPE=tl_dtype, PRECISION=prec, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=4)
    return out.view(N, k, d).sum(1)
