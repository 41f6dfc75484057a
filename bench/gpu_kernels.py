"""Microbenchmarks of the Triton kernels against the PyTorch eager path of the same function
(kernels/*.py with OMNISTREAM_KERNELS=torch) and, when installed, mamba_ssm / causal_conv1d.

Sizes are Nemotron 3 Nano 30B-A3B's, bf16, batch 1: a decode step (one token) and a prefill
of --prefill tokens. Each row: kernel, shape, our ms, eager ms, speed-up, the bytes the kernel
must move divided by our time (GB/s, and % of the card's peak), the peer's ms, and the max
abs difference between our output and eager's (a sanity check, not the test).

    python bench/gpu_kernels.py [--prefill 4096] [--context 32768] [--peak-gbs 4800]
    python bench/gpu_kernels.py --smoke     # tiny sizes on the CPU (interpreter): checks the script
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_common import NANO, bench_ms, kernels, peak_gbs

import torch

from kernels import attention as ref_attention
from kernels import evs as ref_evs
from kernels import mamba as ref_mamba
from kernels import moe as ref_moe
from kernels import norm as ref_norm
from kernels.triton import attention, conv, evs, moe, norm, ssd

TINY = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16, mamba_num_heads=4,
            mamba_head_dim=16, ssm_state_size=16, n_groups=2, n_routed_experts=8, num_experts_per_tok=2,
            moe_intermediate_size=32)


@dataclass
class Case:
    name: str
    shape: str
    ours: Callable
    eager: Callable
    bytes: float
    peer: Callable | None = None
    flops: float = 0.0


def eager(fn):
    def run(*a, **kw):
        with kernels("torch"):
            return fn(*a, **kw)
    return run


def first(out):
    return out[0] if isinstance(out, tuple) else out


def peers():
    found = {}
    try:
        from causal_conv1d import causal_conv1d_fn, causal_conv1d_update
        found["causal_conv1d"] = (causal_conv1d_fn, causal_conv1d_update)
    except Exception:
        pass
    try:
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
        found["mamba_ssm"] = (mamba_chunk_scan_combined, selective_state_update)
    except Exception:
        pass
    return found


def cases(c: dict, L: int, ctx: int, device, dt) -> list[Case]:
    g = torch.Generator(device=device).manual_seed(0)

    def r(*shape, dtype=dt, scale=1.0):
        return torch.randn(*shape, generator=g, device=device, dtype=torch.float32).mul_(scale).to(dtype)

    es = torch.tensor([], dtype=dt).element_size()
    H, d_inner = c["hidden_size"], c["mamba_num_heads"] * c["mamba_head_dim"]
    h, p, n, grp = c["mamba_num_heads"], c["mamba_head_dim"], c["ssm_state_size"], c["n_groups"]
    conv_dim = d_inner + 2 * grp * n
    E, k, inner = c["n_routed_experts"], c["num_experts_per_tok"], c["moe_intermediate_size"]
    Hq, Hkv, D = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    P = peers()
    out: list[Case] = []

    # norms
    for N in (1, L):
        x, w = r(N, H), r(H) + 1
        out.append(Case("rms_norm", f"{N}x{H}", lambda x=x, w=w: norm.rms_norm(x, w, 1e-5),
                        lambda x=x, w=w: eager(ref_norm.rms_norm)(x, w, 1e-5), 2 * N * H * es))
    zy = r(L, 2 * d_inner)
    z, y, w = zy[:, :d_inner], zy[:, d_inner:], r(d_inner) + 1
    out.append(Case("gated_rms_norm", f"{L}x{d_inner}/{grp}", lambda: norm.gated_rms_norm(y, z, w, d_inner // grp, 1e-5),
                    lambda: eager(ref_norm.gated_rms_norm)(y, z, w, d_inner // grp, 1e-5), L * d_inner * (2 * es + 4)))

    # causal conv1d
    cw, cb = r(conv_dim, 1, 4), r(conv_dim)
    xs, st = r(1, L, conv_dim), r(1, conv_dim, 3)
    peer = None
    if "causal_conv1d" in P:
        fn = P["causal_conv1d"][0]
        peer = lambda: fn(xs.transpose(1, 2), cw.view(conv_dim, 4), cb, activation="silu")   # noqa: E731
    out.append(Case("causal_conv1d", f"{L}x{conv_dim}", lambda: conv.causal_conv1d(xs, st, cw, cb),
                    lambda: eager(ref_mamba.causal_conv1d)(xs, st, cw, cb), 2 * L * conv_dim * es, peer))
    x1, st1 = r(1, 1, conv_dim), r(1, conv_dim, 3)
    st1b = st1.clone()
    peer = None
    if "causal_conv1d" in P:
        fn = P["causal_conv1d"][1]
        st1c = st1.clone()
        peer = lambda: fn(x1[:, 0], st1c, cw.view(conv_dim, 4), cb, activation="silu")   # noqa: E731
    out.append(Case("causal_conv1d update", f"1x{conv_dim}", lambda: conv.causal_conv1d(x1, st1, cw, cb),
                    lambda: eager(ref_mamba.causal_conv1d)(x1, st1b, cw, cb), 2 * conv_dim * (4 + 1) * es, peer))

    # SSD
    xm = r(1, L, h, p)
    dtm = (torch.rand(1, L, h, generator=g, device=device) * 0.1 + 0.01)
    A = -(torch.rand(h, generator=g, device=device) * 4 + 0.5)
    Bm, Cm, Dm = r(1, L, grp, n), r(1, L, grp, n), torch.rand(h, generator=g, device=device) + 0.5
    s0 = r(1, h, p, n, dtype=torch.float32)
    peer = None
    if "mamba_ssm" in P:
        fn = P["mamba_ssm"][0]
        peer = lambda: fn(xm, dtm, A, Bm, Cm, 128, D=Dm, initial_states=s0, return_final_states=True)  # noqa: E731
    out.append(Case("ssd_chunked", f"L{L} h{h} p{p} g{grp} n{n}", lambda: ssd.ssd_chunked(xm, dtm, A, Bm, Cm, Dm, s0),
                    lambda: eager(ref_mamba.ssd_chunked)(xm, dtm, A, Bm, Cm, Dm, s0, 128),
                    L * (2 * h * p * es + h * 4 + 2 * grp * n * es + h * p * 4), peer,
                    flops=2 * L * h * (64 * (n + p) + 2 * n * p)))
    sa, sb = s0.clone(), s0.clone()
    peer = None
    if "mamba_ssm" in P:
        fn = P["mamba_ssm"][1]
        sc = s0.clone()
        dt_e = dtm[:, 0, :, None].expand(1, h, p)
        A_e = A[:, None, None].expand(h, p, n)
        D_e = Dm[:, None].expand(h, p)
        peer = lambda: fn(sc, xm[:, 0], dt_e, A_e, Bm[:, 0], Cm[:, 0], D=D_e)   # noqa: E731
    out.append(Case("ssd_step", f"h{h} p{p} n{n}", lambda: ssd.ssd_step(sa, xm[:, 0], dtm[:, 0], A, Bm[:, 0], Cm[:, 0], Dm),
                    lambda: eager(ref_mamba.ssd_step)(sb, xm[:, 0], dtm[:, 0], A, Bm[:, 0], Cm[:, 0], Dm),
                    2 * h * p * n * 4, peer))

    # MoE
    bias = r(E, dtype=torch.float32, scale=0.1)
    up = [r(inner, H, scale=H ** -0.5) for _ in range(E)]
    down = [r(H, inner, scale=inner ** -0.5) for _ in range(E)]
    for N in (1, L):
        logits = r(N, E, dtype=torch.float32)
        out.append(Case("route", f"{N}x{E} top{k}", lambda lg=logits: moe.route(lg, bias, k, 1, 1, True, 2.5),
                        lambda lg=logits: eager(ref_moe.route)(lg, bias, k, 1, 1, True, 2.5), N * E * 4))
        ids, wts = ref_moe.route(logits, bias, k, 1, 1, True, 2.5) if device == "cpu" else moe.route(
            logits, bias, k, 1, 1, True, 2.5)
        xe = r(N, H)
        hit = min(E, N * k)
        out.append(Case("grouped_experts", f"{N} tok x{k} of {E}, {inner}x{H}",
                        lambda x=xe, i=ids, ww=wts: moe.grouped_experts(x, i, ww, up, down),
                        lambda x=xe, i=ids, ww=wts: eager(ref_moe.grouped_experts)(x, i, ww, up, down),
                        hit * 2 * inner * H * es + N * k * (2 * inner * es + H * 4), flops=N * k * 4 * inner * H))

    # attention
    q = r(1, L, Hq, D).transpose(1, 2)
    kv = r(1, Hkv, L, D)
    out.append(Case("attention prefill", f"T{L} H{Hq}/{Hkv} D{D}", lambda: attention.prefill_attention(q, kv, kv, 0),
                    lambda: eager(ref_attention.causal_attention)(q, kv, kv, [0]),
                    (2 * L * Hq * D + 2 * L * Hkv * D) * es, flops=2 * L * L * Hq * D))
    for Lk in (4096, ctx):
        q1 = r(1, 1, Hq, D).transpose(1, 2)
        kc = r(1, Hkv, Lk, D)
        out.append(Case("attention decode", f"ctx {Lk} H{Hq}/{Hkv} D{D}",
                        lambda q1=q1, kc=kc: attention.decode_attention(q1, kc, kc),
                        lambda q1=q1, kc=kc: eager(ref_attention.causal_attention)(q1, kc, kc, [kc.shape[2] - 1]),
                        2 * Lk * Hkv * D * es))

    # EVS
    T, npos = 16, 256
    ve = r(T, npos, H)
    out.append(Case("evs_dissimilarity", f"{T}x{npos}x{H}", lambda: evs.evs_dissimilarity(ve, 255.0),
                    lambda: eager(ref_evs.evs_dissimilarity)(ve), T * npos * H * es))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prefill", type=int, default=4096, help="prefill length for the sequence kernels")
    ap.add_argument("--context", type=int, default=32768, help="the longer KV length for decode attention")
    ap.add_argument("--peak-gbs", type=float, default=None, help="the card's peak bandwidth, if not in the table")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU through the interpreter")
    args = ap.parse_args(argv)
    if args.smoke:
        device, dt, c, L, ctx = "cpu", torch.float32, {**NANO, **TINY}, 40, 200
    elif torch.cuda.is_available():
        device, dt, c, L, ctx = "cuda", torch.bfloat16, NANO, args.prefill, args.context
    else:
        print("gpu_kernels: no CUDA device (use --smoke to check the script on the CPU)", file=sys.stderr)
        return 1
    peak, name = peak_gbs(args.peak_gbs)
    print(f"# {name}, {dt}, peak {peak or '?'} GB/s; times are medians (triton.testing.do_bench, L2 flushed)")
    print("| kernel | shape | ours ms | eager ms | speed-up | ours GB/s | % peak | ours TFLOP/s | peer ms | max abs diff |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for case in cases(c, L, ctx, device, dt):
        a, b = first(case.ours()), first(case.eager())
        diff = (a.float() - b.float()).abs().max().item() if a.is_floating_point() else float((a != b).sum())
        t_ours, t_eager = bench_ms(case.ours, device), bench_ms(case.eager, device)
        t_peer = None
        if case.peer is not None:
            try:
                t_peer = bench_ms(case.peer, device)
            except Exception as e:                                   # a peer's API drift must not stop the run
                print(f"# {case.name}: peer failed: {type(e).__name__}: {e}", file=sys.stderr)
        gbs = case.bytes / (t_ours * 1e-3) / 1e9
        pct = f"{100 * gbs / peak:.0f}%" if peak and device == "cuda" else "-"
        tflops = f"{case.flops / (t_ours * 1e-3) / 1e12:.1f}" if case.flops else "-"
        peer = f"{t_peer:.3f}" if t_peer is not None else "-"
        print(f"| {case.name} | {case.shape} | {t_ours:.3f} | {t_eager:.3f} | {t_eager / t_ours:.2f}x | {gbs:,.0f} | "
              f"{pct} | {tflops} | {peer} | {diff:.2g} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
