"""Decoder benchmark: omnistream's engine against transformers' NemotronHForCausalLM.

Both sides run the SAME random checkpoint (built with transformers, Mamba dt_bias set as in
tests/builders.py so dt is realistic, saved with save_pretrained; ours loads it from disk,
transformers keeps the in-memory model), on CPU, fp32, 2 threads. Measured:

* prefill tokens/s: one forward over the prompt (ours `model(state, input_ids=...)`, theirs
  `hf(input_ids, use_cache=True, logits_to_keep=1)`: both compute the last position's logits only);
* decode tokens/s at batch 1 and 8 (ours Session + generate / BatchDecoder; theirs a greedy loop
  over its own DynamicCache, one forward per token, the same work as our loop);
* peak memory: the RSS high-water mark (VmHWM) of a separate subprocess per side (load,
  prefill, decode);
* the streaming case: time to the first answer token of a 20-token question after a long
  streamed prefix (ours: fork of a session that already read the prefix; theirs: re-prefill
  of prefix + question, as reference servers do);
* this machine's copy bandwidth and the decode bound it implies (bandwidth / weight bytes read
  per decoded token);
* this machine's fp32 matrix-product peak (the best median GFLOP/s of `torch.mm` at 2 threads
  over a few prefill-like shapes) and the prefill bound it implies at each prompt length (peak /
  the prefill FLOPs per token counted from the config, see `prefill_flops`): the ceiling that
  the "prefill >= 2x transformers" target is checked against.

Run from the repo root: `python bench/decoder.py [--quick] [--json PATH]`.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")   # silence the "reference implementation" notices
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

THREADS = 2
SEED = 0
QUESTION_LEN = 20
QUESTION_REPEATS = 15     # our question takes 60-120 ms: the median of many, as the 32k / 1k ratio is a target
STREAM_PIECE = 512

# The benchmark model: ~189M parameters, ~62M read per decoded token.
PATTERN = "MEMEM*EMEMEM*EMEMEM*EMEM"
BENCH_CONFIG = dict(
    vocab_size=32000, hidden_size=512,
    num_attention_heads=8, num_key_value_heads=2, head_dim=64,
    mamba_num_heads=16, mamba_head_dim=64, ssm_state_size=64, n_groups=4, conv_kernel=4, chunk_size=128,
    n_routed_experts=32, num_experts_per_tok=4, moe_intermediate_size=384,
    moe_shared_expert_intermediate_size=768, n_shared_experts=1, routed_scaling_factor=2.5, norm_topk_prob=True,
    n_group=1, topk_group=1, intermediate_size=1536,
    layer_norm_epsilon=1e-5, initializer_range=0.02, tie_word_embeddings=False,
    max_position_embeddings=65536, bos_token_id=1, eos_token_id=2, pad_token_id=0,
)

TARGETS = {"decode": 3.0, "prefill": 2.0, "stream_growth": 1.5, "bandwidth_fraction": 0.5}


# ---- sizes ---------------------------------------------------------------------------------
def sizes(quick: bool) -> dict:
    if quick:
        return dict(prefill=[256], decode_ctx=128, decode_tokens=8, decode_batch=[1, 8], prefixes=[256, 1024],
                    repeats=2, mem_prefill=256, mem_decode=8, hf_prefill_limit_s=240.0, wait_budget_s=60.0)
    return dict(prefill=[512, 2048], decode_ctx=256, decode_tokens=32, decode_batch=[1, 8],
                prefixes=[1024, 8192, 32768], repeats=3, mem_prefill=2048, mem_decode=32, hf_prefill_limit_s=240.0,
                wait_budget_s=180.0)


def engine_fingerprint() -> dict:
    """Which engine code produced the figures: a hash of engine/ and kernels/ (the C++ CPU
    kernels included) and their newest modification time (the tree is edited while benchmarks run)."""
    import hashlib
    h = hashlib.sha256()
    files = sorted([*ROOT.glob("engine/*.py"), *ROOT.glob("kernels/**/*.py"), *ROOT.glob("kernels/**/*.cpp")])
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    newest = max((f.stat().st_mtime for f in files), default=0)
    return {"sha256": h.hexdigest()[:12], "newest_file_time": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(newest))}


# ---- the checkpoint ------------------------------------------------------------------------
def build_hf(seed: int = SEED):
    """The transformers model, with realistic Mamba parameters (tests/builders.py)."""
    from builders import build_hf_model
    return build_hf_model(PATTERN, seed, **BENCH_CONFIG).requires_grad_(False)


def param_counts(cfg) -> dict:
    """Parameters of the decoder and the parameters read per decoded token, from the config
    (an engine DecoderConfig)."""
    H, V = cfg.hidden_size, cfg.vocab_size
    lin = lambda i, o, bias=False: i * o + (o if bias else 0)
    mamba = (lin(H, cfg.mamba_d_inner + cfg.mamba_conv_dim + cfg.mamba_num_heads, cfg.mamba_proj_bias)
             + cfg.mamba_conv_dim * cfg.conv_kernel + (cfg.mamba_conv_dim if cfg.use_conv_bias else 0)
             + 3 * cfg.mamba_num_heads + cfg.mamba_d_inner + lin(cfg.mamba_d_inner, H, cfg.mamba_proj_bias))
    q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    attn = (lin(H, q, cfg.attention_bias) + 2 * lin(H, kv, cfg.attention_bias) + lin(q, H, cfg.attention_bias))
    mlp = lin(H, cfg.intermediate_size, cfg.mlp_bias) + lin(cfg.intermediate_size, H, cfg.mlp_bias)
    width = cfg.moe_latent_size or H
    expert = 2 * width * cfg.moe_intermediate_size
    shared = (lin(H, cfg.moe_shared_expert_intermediate_size, cfg.mlp_bias)
              + lin(cfg.moe_shared_expert_intermediate_size, H, cfg.mlp_bias))
    latent = (lin(H, width, cfg.mlp_bias) + lin(width, H, cfg.mlp_bias)) if cfg.moe_latent_size else 0
    router = cfg.n_routed_experts * H
    moe = router + cfg.n_routed_experts * expert + shared + latent
    per_kind = {"M": mamba, "*": attn, "-": mlp, "E": moe}
    layers = sum(per_kind[c] + H for c in cfg.pattern)            # + the block's RMSNorm
    total = V * H + layers + H + H * V                             # embeddings, layers, norm_f, lm_head
    n_moe = cfg.pattern.count("E")
    unused = n_moe * (cfg.n_routed_experts - cfg.num_experts_per_tok) * expert + (V - 1) * H
    return {"total": total, "read_per_token": total - unused, "expert": expert, "moe_layers": n_moe}


def prefill_flops(cfg, T: int) -> dict:
    """FLOPs per token of a T-token prefill (batch 1), from the config (an engine DecoderConfig).

    Matrix products only, 2 FLOPs per multiply-add; elementwise work (norms, gates, activations,
    softmax, the depthwise conv, the SSD decay exponentials) is left out, so the count is a lower
    bound on the work and the tok/s bound derived from it an upper bound. Per token:

    * linear layers: Mamba in_proj (H -> d_inner + conv_dim + heads) and out_proj; attention
      q, k, v, o; MLP up and down; MoE router (H -> n_routed_experts), num_experts_per_tok
      routed experts (up and down, at width moe_latent_size or H), the shared expert and, with
      moe_latent_size, the latent down and up projections. 2 * in * out each.
    * causal attention, per layer: token i (1-based) attends to i keys, scores q.k and the
      weighted sum of values each cost heads * head_dim multiply-adds a key, so the prompt costs
      2 * 2 * heads * head_dim * T (T + 1) / 2 FLOPs: 2 * heads * head_dim * (T + 1) a token.
    * Mamba2 chunked scan (SSD), per layer, with Q = min(chunk_size, T), c = ceil(T / Q) chunks
      (padded, as kernels/mamba.py runs it), h heads of dim p, g groups, state size n: per chunk
      the dense intra-chunk products C.B^T (g x Q x Q x n, shared by the heads of a group) and
      L.X (h x Q x Q x p), the chunk's state contribution X^T.B (h x p x n x Q) and the carried
      state's output C.S (h x Q x n x p):
          2 * c * (Q^2 * (g n + h p) + 2 Q h p n) / T  FLOPs a token.
    * the output head at the last position only (logits_to_keep=1 on both sides): 2 H V / T.
    """
    H, Q = cfg.hidden_size, min(cfg.chunk_size, T)
    lin = lambda i, o: 2 * i * o
    width = cfg.moe_latent_size or H
    per_kind = {
        "M": lin(H, cfg.mamba_d_inner + cfg.mamba_conv_dim + cfg.mamba_num_heads) + lin(cfg.mamba_d_inner, H),
        "*": 2 * lin(H, cfg.num_attention_heads * cfg.head_dim) + 2 * lin(H, cfg.num_key_value_heads * cfg.head_dim),
        "-": 2 * lin(H, cfg.intermediate_size),
        "E": (lin(H, cfg.n_routed_experts) + cfg.num_experts_per_tok * 2 * lin(width, cfg.moe_intermediate_size)
              + 2 * lin(H, cfg.moe_shared_expert_intermediate_size) + (2 * lin(H, width) if cfg.moe_latent_size else 0)),
    }
    h, p, g, n = cfg.mamba_num_heads, cfg.mamba_head_dim, cfg.n_groups, cfg.ssm_state_size
    chunks = -(-T // Q)
    ssd = 2 * chunks * (Q * Q * (g * n + h * p) + 2 * Q * h * p * n) / T
    attn = 2 * cfg.num_attention_heads * cfg.head_dim * (T + 1)
    out = {"linear": sum(per_kind[c] for c in cfg.pattern),
           "attention": cfg.pattern.count("*") * attn, "ssd": cfg.pattern.count("M") * ssd,
           "head": lin(H, cfg.vocab_size) / T}
    out["total"] = sum(out.values())
    return out


MM_SHAPES = [(2048, 512, 2576), (2048, 512, 384), (2048, 1024, 512), (2048, 2048, 2048)]   # (m, k, n)


def matmul_peak(repeats: int = 5) -> tuple[float, dict, bool]:
    """This machine's fp32 matrix-product peak at THREADS threads: the best median FLOP/s of
    `torch.mm(a, b, out=c)` over MM_SHAPES (Mamba in_proj, an expert's up projection, Mamba
    out_proj at a 2048-token prefill, and a large square product). Returns (FLOP/s, GFLOP/s per
    shape, whether a figure was contended)."""
    per_shape, contended = {}, False
    for m, k, n in MM_SHAPES:
        a, b, c = torch.randn(m, k), torch.randn(k, n), torch.empty(m, n)
        ms = measure(lambda: torch.mm(a, b, out=c), repeats, warmup=2)
        per_shape[f"{m}x{k}@{k}x{n}"] = 2 * m * k * n / ms.seconds / 1e9
        contended |= ms.contended
    return max(per_shape.values()) * 1e9, per_shape, contended


# ---- timing helpers ------------------------------------------------------------------------
# The machine may be shared: while a figure is timed, other processes taking CPU time make it
# meaningless (with 2 busy-waiting OpenMP threads on 2 cores, a competing process slows small ops
# down 10-100x). So every timed call also counts the CPU ticks that went to anyone else (from
# /proc/stat minus this process's own ticks); a call where others took more than CONTENDED of the
# machine is thrown away and retried, and a figure that could not get clean runs is flagged.
CONTENDED = 0.10


def _cpu_ticks() -> tuple[int, int, int] | None:
    """(machine ticks, idle ticks, this process's ticks), all in USER_HZ ticks."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]   # user nice system idle iowait irq softirq steal
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return sum(v), v[3] + v[4], int(fields[11]) + int(fields[12])   # utime + stime of all threads
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class Measurement:
    seconds: float              # median over the kept runs
    result: object              # what the last kept run returned
    others: float               # the largest share of the machine other processes took in a kept run
    contended: bool             # a kept run was contended (no clean run to replace it)
    runs: int                   # kept runs
    discarded: int              # runs thrown away because others were using the CPUs


def _run(fn, self_timed: bool):
    a = _cpu_ticks()
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    b = _cpu_ticks()
    if self_timed:                                   # fn returns (seconds, result): it times its own part
        seconds, out = out
    if a is None or b is None:                       # no /proc: cannot tell
        return seconds, out, 0.0, True
    total, others = b[0] - a[0], (b[0] - a[0]) - (b[1] - a[1]) - (b[2] - a[2])
    share = max(0, others) / max(1, total)
    return seconds, out, share, others <= max(2, CONTENDED * total)


_wait_budget = {"s": 120.0}     # seconds a run may spend in all waiting for the machine to go quiet


def wait_for_quiet(max_s: float = 30.0) -> float:
    """Sleep until other processes leave the CPUs alone (or max_s, or the run's wait budget, is
    spent); returns the seconds waited."""
    t0 = time.perf_counter()
    limit = min(max_s, _wait_budget["s"])
    while time.perf_counter() - t0 < limit:
        busy = cpu_busy(0.5)
        if busy is None or busy < CONTENDED:
            break
    waited = time.perf_counter() - t0
    _wait_budget["s"] = max(0.0, _wait_budget["s"] - waited)
    return waited


def measure(fn, repeats: int, warmup: int = 1, self_timed: bool = False,
            max_attempts: int | None = None) -> Measurement:
    """Median of `repeats` uncontended runs of fn after `warmup` untimed ones. A contended run is
    retried once the machine is quiet again (see wait_for_quiet); after `max_attempts` runs
    (default 3 x repeats) the least contended ones are kept and the figure is flagged."""
    for _ in range(warmup):
        fn()
    max_attempts = max_attempts or 3 * repeats
    clean, dirty = [], []
    while len(clean) < repeats and len(clean) + len(dirty) < max_attempts:
        seconds, out, share, ok = _run(fn, self_timed)
        (clean if ok else dirty).append((seconds, out, share, ok))
        if not ok:
            last = len(clean) + len(dirty) >= max_attempts
            log(f"  (another process took {100 * share:.0f}% of the CPUs during a {seconds:.2f} s run"
                + ("; no retries left)" if last else "; retrying)"))
            if not last:
                wait_for_quiet(max_s=max(30.0, 2 * seconds))
    kept = clean + sorted(dirty, key=lambda r: r[2])[:max(0, repeats - len(clean))]
    return Measurement(statistics.median(r[0] for r in kept), kept[-1][1], max(r[2] for r in kept),
                       not all(r[3] for r in kept), len(kept), len(clean) + len(dirty) - len(kept))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cpu_busy(seconds: float = 1.0) -> float | None:
    """Share of the machine's CPU time used by others over `seconds` while this process sleeps."""
    a = _cpu_ticks()
    time.sleep(seconds)
    b = _cpu_ticks()
    if a is None or b is None:
        return None
    return 1 - (b[1] - a[1]) / max(1, b[0] - a[0])


def warn_if_busy(res: dict, when: str) -> None:
    busy = cpu_busy()
    res.setdefault("cpu_busy_while_idle", {})[when] = busy
    if busy is not None and busy > 0.15:
        log(f"WARNING: the machine is {100 * busy:.0f}% busy {when} while this benchmark sleeps: another "
            f"process is using the CPUs and the figures will not be reliable")


def copy_bandwidth(mb: int = 512, repeats: int = 7) -> tuple[float, Measurement]:
    """Bytes/s of a large tensor copy (`dst.copy_(src)`), counting the bytes read plus written."""
    n = mb * (1 << 20) // 4
    src = torch.ones(n, dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)                                                   # fault the pages in
    m = measure(lambda: dst.copy_(src), repeats, warmup=1)
    return 2 * n * 4 / m.seconds, m


# ---- ours and theirs -----------------------------------------------------------------------
def rand_ids(gen: torch.Generator, *shape) -> torch.Tensor:
    return torch.randint(3, BENCH_CONFIG["vocab_size"], shape, generator=gen)


def ours_prefill(model, ids):
    st = model.new_state(ids.shape[0])
    return model(st, input_ids=ids, logits="last").logits


def hf_prefill(hf, ids):
    with torch.inference_mode():
        return hf(input_ids=ids, use_cache=True, logits_to_keep=1)


def ours_decode(model, prompts: torch.Tensor, n: int) -> tuple[float, list[list[int]]]:
    """Seconds to decode n tokens for every row of prompts (b, T) (prefill not timed)."""
    from engine.generate import BatchDecoder, SamplingParams, Session, generate
    sessions = []
    for row in prompts:
        s = Session(model)
        s.prefill(row.tolist())
        sessions.append(s)
    params = SamplingParams(max_new_tokens=n)
    if len(sessions) == 1:
        t0 = time.perf_counter()
        toks = list(generate(sessions[0], params))
        return time.perf_counter() - t0, [toks]
    bd = BatchDecoder(model)
    for s in sessions:
        bd.join(s, params)
    out = {id(s): [] for s in sessions}
    t0 = time.perf_counter()
    while len(bd):
        for s, tok in bd.step():
            out[id(s)].append(tok)
    return time.perf_counter() - t0, [out[id(s)] for s in sessions]


def hf_decode(hf, prompts: torch.Tensor, n: int) -> tuple[float, list[list[int]]]:
    """transformers: greedy loop over its DynamicCache, one single-token forward a step
    (prefill not timed). The same work as our generate loop, without generate()'s overhead."""
    with torch.inference_mode():
        out = hf(input_ids=prompts, use_cache=True, logits_to_keep=1)
        cache, logits = out.cache, out.logits[:, -1]
        toks = []
        t0 = time.perf_counter()
        for _ in range(n):
            tok = logits.argmax(-1)
            toks.append(tok)
            out = hf(input_ids=tok[:, None], cache=cache, use_cache=True, logits_to_keep=1)
            logits = out.logits[:, -1]
        dt = time.perf_counter() - t0
    return dt, torch.stack(toks, 1).tolist()


def ours_stream_session(model, prefix: torch.Tensor):
    from engine.generate import Session
    s = Session(model)
    for i in range(0, prefix.shape[1], STREAM_PIECE):
        s.prefill(prefix[0, i:i + STREAM_PIECE].tolist())
    return s


def ours_answer_first_token(session, question: list[int]) -> int:
    from engine.generate import SamplingParams, sample
    f = session.fork()
    logits = f.prefill(question)
    return int(sample(logits, SamplingParams())[0])


def hf_answer_first_token(hf, prefix: torch.Tensor, question: torch.Tensor) -> int:
    out = hf_prefill(hf, torch.cat([prefix, question], dim=1))
    return int(out.logits[0, -1].argmax())


# ---- memory: one subprocess per side --------------------------------------------------------
def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _rss_mb() -> float:
    return _status_mb("VmRSS")


def _peak_rss_mb() -> float:
    """The process's RSS high-water mark. VmHWM, not getrusage's ru_maxrss: on Linux ru_maxrss
    survives fork + exec, so a worker would report its parent's peak if that is higher."""
    peak = _status_mb("VmHWM")
    return peak if peak == peak else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_worker(side: str, ckpt: str, prefill: int, decode: int) -> None:
    """Load one side from the checkpoint, prefill `prefill` tokens, decode `decode` tokens at
    batch 1; print the RSS before loading, after loading and the high-water mark, in MB."""
    torch.set_num_threads(THREADS)
    gen = torch.Generator().manual_seed(1)
    ids = rand_ids(gen, 1, prefill)
    if side == "ours":
        base = _rss_mb()
        from engine.loader import load_decoder
        model = load_decoder(ckpt)
        loaded = _rss_mb()
        ours_decode(model, ids, decode)
    else:
        from transformers import NemotronHForCausalLM
        base = _rss_mb()
        hf = NemotronHForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
        loaded = _rss_mb()
        hf_decode(hf, ids, decode)
    peak = _peak_rss_mb()
    print(json.dumps({"base_mb": base, "loaded_mb": loaded, "peak_mb": peak}))


def measure_memory(side: str, ckpt: str, prefill: int, decode: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_mem-worker", side, "--_ckpt", ckpt,
           "--_prefill", str(prefill), "--_decode", str(decode)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if r.returncode:
        raise RuntimeError(f"memory worker ({side}) failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# ---- report --------------------------------------------------------------------------------
def fmt(x, unit=""):
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    if abs(x) >= 100:
        s = f"{x:,.0f}"
    elif abs(x) >= 10:
        s = f"{x:.1f}"
    else:
        s = f"{x:.2f}"
    return s + unit


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run of a minute or two")
    p.add_argument("--json", type=Path, help="write the figures to this file")
    p.add_argument("--_mem-worker", dest="mem_worker", choices=["ours", "hf"], help=argparse.SUPPRESS)
    p.add_argument("--_ckpt", dest="ckpt", help=argparse.SUPPRESS)
    p.add_argument("--_prefill", dest="w_prefill", type=int, help=argparse.SUPPRESS)
    p.add_argument("--_decode", dest="w_decode", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.mem_worker:
        memory_worker(args.mem_worker, args.ckpt, args.w_prefill, args.w_decode)
        return 0

    try:
        import transformers
    except ImportError:
        print("bench/decoder.py compares against transformers: pip install -r requirements-test.txt", file=sys.stderr)
        return 2

    from engine.config import DecoderConfig
    from engine.loader import load_decoder

    t_start = time.perf_counter()
    torch.set_num_threads(THREADS)
    S = sizes(args.quick)
    R = S["repeats"]
    _wait_budget["s"] = S["wait_budget_s"]
    res: dict = {"mode": "quick" if args.quick else "full", "threads": THREADS, "sizes": S,
                 "torch": torch.__version__, "transformers": transformers.__version__,
                 "cpu": platform.processor() or platform.machine()}
    gen = torch.Generator().manual_seed(1234)

    warn_if_busy(res, "at the start")
    tmp = tempfile.TemporaryDirectory(prefix="omnistream-bench-")
    ckpt = tmp.name
    log("building the random checkpoint with transformers")
    hf = build_hf()
    hf.save_pretrained(ckpt)
    model = load_decoder(ckpt)
    cfg = DecoderConfig.from_file(ckpt)
    res["engine"] = engine_fingerprint()
    from kernels import cpu                          # built now (once per source and CPU), not in a timed run
    res["cpu_kernels"] = "C++ (kernels/cpu)" if cpu.ops() is not None else "unavailable: PyTorch path"
    res["hf_impl"] = {"attention": hf.config._attn_implementation,
                      "experts": getattr(hf.config, "_experts_implementation", None)}

    counts = param_counts(cfg)
    n_ours = sum(t.numel() for t in model.parameters())
    n_hf = sum(t.numel() for t in hf.parameters())
    assert counts["total"] == n_ours == n_hf, (counts, n_ours, n_hf)
    bytes_per_token = counts["read_per_token"] * 4                 # fp32
    res["params"] = {"total": counts["total"], "read_per_token": counts["read_per_token"],
                     "weight_bytes_per_token": bytes_per_token}
    print(f"engine: engine/ + kernels/ sha256 {res['engine']['sha256']} (newest file {res['engine']['newest_file_time']}); "
          f"CPU decode kernels: {res['cpu_kernels']}")
    print(f"model: pattern {PATTERN} ({len(PATTERN)} layers), hidden {cfg.hidden_size}, vocab {cfg.vocab_size}")
    print(f"parameters: {counts['total'] / 1e6:.1f}M; read per decoded token: "
          f"{counts['read_per_token'] / 1e6:.1f}M ({bytes_per_token / 1e6:.0f} MB fp32: all but "
          f"{cfg.n_routed_experts - cfg.num_experts_per_tok} unused experts x {counts['moe_layers']} MoE layers "
          f"and the embedding rows)")
    print(f"transformers {transformers.__version__} (attention: {res['hf_impl']['attention']}, experts: "
          f"{res['hf_impl']['experts']}, Mamba: PyTorch reference path), torch {torch.__version__}, "
          f"{THREADS} threads, fp32, CPU", flush=True)

    # -- parity: both sides compute the same function ----------------------------------------
    ids = rand_ids(gen, 1, 64)
    a = ours_prefill(model, ids)[0, -1]
    b = hf_prefill(hf, ids).logits[0, -1]
    res["parity_max_abs_logit_diff"] = float((a - b).abs().max())
    log(f"parity: max |logit diff| after 64 tokens = {res['parity_max_abs_logit_diff']:.2e}")

    # -- bandwidth -----------------------------------------------------------------------------
    bw, m = copy_bandwidth()
    bound = bw / bytes_per_token
    res["bandwidth"] = {"copy_bytes_per_s": bw, "decode_bound_tok_s": bound, "contended": m.contended}
    log(f"copy bandwidth {bw / 1e9:.1f} GB/s (read+write) -> decode bound {bound:.1f} tok/s")
    peak, per_shape, contended = matmul_peak()
    res["compute"] = {"mm_peak_flop_s": peak, "mm_gflop_s": per_shape, "contended": contended}
    log(f"fp32 torch.mm peak {peak / 1e9:.1f} GFLOP/s at {THREADS} threads (" +
        ", ".join(f"{k}: {v:.1f}" for k, v in per_shape.items()) + ")")

    # -- prefill -------------------------------------------------------------------------------
    res["prefill"] = {}
    for T in S["prefill"]:
        ids = rand_ids(gen, 1, T)
        mo = measure(lambda: ours_prefill(model, ids), R)
        mh = measure(lambda: hf_prefill(hf, ids), R)
        fl = prefill_flops(cfg, T)
        res["prefill"][T] = {"ours_tok_s": T / mo.seconds, "hf_tok_s": T / mh.seconds, "ours_s": mo.seconds,
                             "hf_s": mh.seconds, "contended": mo.contended or mh.contended,
                             "flops_per_token": fl, "compute_bound_tok_s": peak / fl["total"]}
        log(f"prefill {T}: ours {T / mo.seconds:.0f} tok/s, transformers {T / mh.seconds:.0f} tok/s; "
            f"{fl['total'] / 1e6:.1f} MFLOP/token (linear {fl['linear'] / 1e6:.1f}, attention "
            f"{fl['attention'] / 1e6:.2f}, SSD {fl['ssd'] / 1e6:.2f}, head {fl['head'] / 1e6:.2f}) -> fp32 "
            f"compute bound {peak / fl['total']:.0f} tok/s")

    # -- decode --------------------------------------------------------------------------------
    res["decode"] = {}
    n, ctx = S["decode_tokens"], S["decode_ctx"]
    for bsz in S["decode_batch"]:
        prompts = rand_ids(gen, bsz, ctx)
        mo = measure(lambda: ours_decode(model, prompts, n), R, self_timed=True)
        mh = measure(lambda: hf_decode(hf, prompts, n), R, self_timed=True)
        same = sum(x == y for ro, rh in zip(mo.result, mh.result) for x, y in zip(ro, rh))
        res["decode"][bsz] = {"ours_tok_s": bsz * n / mo.seconds, "hf_tok_s": bsz * n / mh.seconds,
                              "ours_ms_per_step": 1e3 * mo.seconds / n, "hf_ms_per_step": 1e3 * mh.seconds / n,
                              "tokens_equal": f"{same}/{bsz * n}", "contended": mo.contended or mh.contended}
        log(f"decode batch {bsz}: ours {bsz * n / mo.seconds:.1f} tok/s, transformers {bsz * n / mh.seconds:.1f} "
            f"tok/s (greedy tokens equal: {same}/{bsz * n})")

    # -- streaming: first answer token after a long prefix ---------------------------------------
    res["stream"] = {}
    question = rand_ids(gen, 1, QUESTION_LEN)
    q_list = question[0].tolist()
    # ours: every prefix streamed first, then the questions timed in turns over the prefixes, so
    # the 32k / 1k ratio compares figures taken under the same machine noise
    prefixes = {L: rand_ids(gen, 1, L) for L in S["prefixes"]}
    sessions, t_stream = {}, {}
    for L, prefix in prefixes.items():
        t0 = time.perf_counter()
        sessions[L] = ours_stream_session(model, prefix)
        t_stream[L] = time.perf_counter() - t0
    for s in sessions.values():
        ours_answer_first_token(s, q_list)                             # warmup
    turns = {L: [] for L in sessions}
    for _ in range(max(R, QUESTION_REPEATS)):
        for L, s in sessions.items():
            turns[L].append(measure(lambda: ours_answer_first_token(s, q_list), 1, warmup=0))
    sessions = None                                                    # free the KV caches
    hf_times: dict[int, float] = {}
    for L, prefix in prefixes.items():
        ours = turns[L]
        mo = Measurement(statistics.median(m.seconds for m in ours), ours[-1].result, max(m.others for m in ours),
                         any(m.contended for m in ours), len(ours), sum(m.discarded for m in ours))
        entry = {"ours_s": mo.seconds, "ours_stream_prefill_s": t_stream[L], "contended": mo.contended}
        # transformers re-prefills prefix + question; too long a run is extrapolated instead
        prev = max((k for k in hf_times if k < L), default=None)
        estimate = hf_times[prev] * (L + QUESTION_LEN) / (prev + QUESTION_LEN) if prev else 0.0
        if estimate > S["hf_prefill_limit_s"]:
            entry.update(hf_s=estimate, hf_extrapolated_from=prev)
            log(f"stream {L}: ours {1e3 * mo.seconds:.0f} ms (prefix streamed in {t_stream[L]:.1f} s); transformers "
                f"~{estimate:.0f} s EXTRAPOLATED linearly from {prev} (measured {hf_times[prev]:.1f} s)")
        else:
            reps = R if estimate < 5 else 1
            mh = measure(lambda: hf_answer_first_token(hf, prefix, question), reps, warmup=0 if reps == 1 else 1,
                         max_attempts=2 if reps == 1 else None)
            hf_times[L] = mh.seconds
            entry.update(hf_s=mh.seconds, first_token_equal=mh.result == mo.result,
                         contended=mo.contended or mh.contended)
            log(f"stream {L}: ours {1e3 * mo.seconds:.0f} ms (prefix streamed in {t_stream[L]:.1f} s); "
                f"transformers {mh.seconds:.2f} s (same first token: {mh.result == mo.result})")
        res["stream"][L] = entry

    # -- peak memory ---------------------------------------------------------------------------
    hf = None
    mem = {side: measure_memory(side, ckpt, S["mem_prefill"], S["mem_decode"]) for side in ("ours", "hf")}
    res["memory"] = mem
    log(f"peak RSS: ours {mem['ours']['peak_mb']:.0f} MB, transformers {mem['hf']['peak_mb']:.0f} MB")
    tmp.cleanup()

    warn_if_busy(res, "at the end")
    if engine_fingerprint() != res["engine"]:
        log("WARNING: engine/ or kernels/ changed during the run: the figures mix two versions")
        res["engine_changed_during_run"] = engine_fingerprint()
    res["wall_s"] = time.perf_counter() - t_start
    report(res, S)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2, default=str))
        print(f"\nfigures written to {args.json}")
    return 0


def report(res: dict, S: dict) -> None:
    rows = []     # metric, ours, theirs, ratio (x better), target, status
    checks = []
    comp = res["compute"]
    flag = lambda r: " †" if r.get("contended") else ""
    for kind, label, unit in (("prefill", "prefill {} tokens", "tok/s"), ("decode", "decode batch {}", "tok/s")):
        for n, r in res[kind].items():
            ratio = r["ours_tok_s"] / r["hf_tok_s"]
            ok = ratio >= TARGETS[kind]
            checks.append(ok)
            rows.append((f"{label.format(n)} ({unit}){flag(r)}", fmt(r["ours_tok_s"]), fmt(r["hf_tok_s"]),
                         fmt(ratio, "x"), f">= {TARGETS[kind]:g}x transformers", verdict(ok)))
        if kind == "prefill":                    # what the target asks for against what the CPU can do
            for n, r in res["prefill"].items():
                bound, need = r["compute_bound_tok_s"], TARGETS["prefill"] * r["hf_tok_s"]
                rows.append((f"prefill {n} tokens: fp32 compute bound (tok/s){flag(comp)}", fmt(bound), "-", "-",
                             f"{TARGETS['prefill']:g}x transformers = {fmt(need)} tok/s = "
                             f"{fmt(100 * need / bound, '%')} of the bound", ""))
                rows.append((f"prefill {n} tokens: share of the compute bound{flag(r)}",
                             fmt(100 * r["ours_tok_s"] / bound, "%"), fmt(100 * r["hf_tok_s"] / bound, "%"), "-", "", ""))
    bw = res["bandwidth"]
    if 1 in res["decode"]:
        frac = res["decode"][1]["ours_tok_s"] / bw["decode_bound_tok_s"]
        ok = frac >= TARGETS["bandwidth_fraction"]
        checks.append(ok)
        rows.append((f"decode batch 1, share of the bandwidth bound{flag(bw)}", fmt(100 * frac, "%"), "-", "-",
                     f">= {100 * TARGETS['bandwidth_fraction']:.0f}% of {bw['decode_bound_tok_s']:.1f} tok/s",
                     verdict(ok)))
    stream = res["stream"]
    for L, r in stream.items():
        theirs = fmt(r["hf_s"] * 1e3, " ms") + (" (extrapolated)" if "hf_extrapolated_from" in r else "")
        rows.append((f"question after a {L:,}-token prefix (s to first token){flag(r)}",
                     fmt(r["ours_s"] * 1e3, " ms"), theirs, fmt(r["hf_s"] / r["ours_s"], "x"), "", ""))
    Ls = sorted(stream)
    if len(Ls) >= 2:
        growth = stream[Ls[-1]]["ours_s"] / stream[Ls[0]]["ours_s"]
        ok = growth <= TARGETS["stream_growth"]
        checks.append(ok)
        rows.append((f"ours: question latency after {Ls[-1]:,} / after {Ls[0]:,}", f"{growth:.3f}x", "-", "-",
                     f"<= {TARGETS['stream_growth']:g}x", verdict(ok)))
    mem = res["memory"]
    rows.append((f"peak RSS, prefill {S['mem_prefill']} + decode {S['mem_decode']} (MB)",
                 fmt(mem["ours"]["peak_mb"]), fmt(mem["hf"]["peak_mb"]),
                 fmt(mem["hf"]["peak_mb"] / mem["ours"]["peak_mb"], "x"), "", ""))

    p = res["params"]
    print()
    print(f"## Decoder benchmark ({res['mode']}): ours vs transformers {res['transformers']}, CPU fp32, "
          f"{res['threads']} threads")
    print()
    print(f"engine/ + kernels/ sha256 {res['engine']['sha256']} (newest file {res['engine']['newest_file_time']}); "
          f"CPU decode kernels: {res['cpu_kernels']}")
    print()
    print(f"parameters {p['total'] / 1e6:.1f}M, read per decoded token {p['read_per_token'] / 1e6:.1f}M "
          f"({p['weight_bytes_per_token'] / 1e6:.0f} MB fp32); copy bandwidth {bw['copy_bytes_per_s'] / 1e9:.1f} GB/s "
          f"(512 MB dst.copy_(src), read+write) -> batch-1 decode bound {bw['decode_bound_tok_s']:.1f} tok/s; "
          f"parity: max |logit diff| {res['parity_max_abs_logit_diff']:.1e}")
    print()
    print(f"fp32 torch.mm peak {comp['mm_peak_flop_s'] / 1e9:.1f} GFLOP/s at {res['threads']} threads (best median "
          "of " + ", ".join(f"{k}: {v:.1f}" for k, v in comp["mm_gflop_s"].items()) + "); prefill FLOPs per token "
          "(matrix products, see prefill_flops): " + ", ".join(
              f"{n} tokens: {r['flops_per_token']['total'] / 1e6:.1f}M" for n, r in res["prefill"].items()))
    print()
    head = ("metric", "ours", "transformers", "ratio (x better)", "target", "")
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join(["---"] + ["---:"] * 3 + ["---", "---"]) + "|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print()
    d = res["decode"]
    print(f"- decode: {S['decode_tokens']} greedy tokens after a {S['decode_ctx']}-token prompt (prompt not timed); "
          "ms per step: " + ", ".join(f"batch {b}: ours {r['ours_ms_per_step']:.1f} / transformers "
                                      f"{r['hf_ms_per_step']:.1f} (greedy tokens equal {r['tokens_equal']})"
                                      for b, r in d.items()) + ".")
    print("  transformers decodes with a greedy loop over its DynamicCache (one 1-token forward a step, "
          "logits_to_keep=1): the same work as our generate loop, without generate()'s per-step overhead.")
    print("- prefill: one forward of the prompt into an empty cache, last-position logits only on both sides. "
          "The compute bound is the torch.mm peak over the prefill's FLOPs per token (matrix products only: "
          "linear layers, causal attention, the SSD scan's chunk products, the head at the last position): "
          "an upper bound on fp32 prefill tok/s on this machine.")
    for n, r in res["prefill"].items():
        bound, need = r["compute_bound_tok_s"], TARGETS["prefill"] * r["hf_tok_s"]
        if need > bound:
            print(f"- prefill {n}: {TARGETS['prefill']:g}x transformers ({need:,.0f} tok/s) EXCEEDS the fp32 compute "
                  f"bound ({bound:,.0f} tok/s = {comp['mm_peak_flop_s'] / 1e9:.1f} GFLOP/s / "
                  f"{r['flops_per_token']['total'] / 1e6:.1f} MFLOP per token) by {need / bound:.2f}x: transformers "
                  f"already reaches {100 * r['hf_tok_s'] / bound:.0f}% of the bound, ours "
                  f"{100 * r['ours_tok_s'] / bound:.0f}%; " + (
                      "but the peak was measured while other processes used the CPUs (a low peak makes a low "
                      "bound): rerun on a quiet machine before relying on this." if comp.get("contended") else
                      "the target cannot be met on this CPU in fp32."))
    print(f"- question: ours forks a session that streamed the prefix in {STREAM_PIECE}-token pieces (not timed), "
          f"prefills the {QUESTION_LEN}-token question and takes the first token; transformers re-prefills "
          "prefix + question from scratch" + (
              f"; extrapolated figures are the last measured one scaled linearly in length (measuring would "
              f"take over {S['hf_prefill_limit_s']:.0f} s)" if any("hf_extrapolated_from" in r for r in stream.values())
              else "") + ".")
    print("- memory: peak RSS (VmHWM) of a fresh subprocess per side that loads the checkpoint from disk, prefills "
          "and decodes at batch 1; whole process, imports included (" + "; ".join(
              f"{'transformers' if k == 'hf' else k}: {v['base_mb']:.0f} MB before loading, {v['loaded_mb']:.0f} MB "
              "after" for k, v in mem.items()) + ").")
    print(f"- figures are medians of {S['repeats']} runs after a warmup ({max(S['repeats'], QUESTION_REPEATS)} for our "
          "questions, timed in turns over the prefixes; single runs for transformers prefills over 5 s); "
          f"runs during which other processes took over {100 * CONTENDED:.0f}% of the CPUs are discarded and retried.")
    if any(r.get("contended") for r in [*res["prefill"].values(), *d.values(), *stream.values(), bw, comp]):
        print("- † other processes were using the CPUs during this figure's runs even after retries: not reliable.")
    busy = {k: v for k, v in res.get("cpu_busy_while_idle", {}).items() if v is not None and v > 0.15}
    if busy:
        print("- WARNING: other processes were using the CPUs (" + ", ".join(
            f"{100 * v:.0f}% busy {k}" for k, v in busy.items()) + ").")
    if "engine_changed_during_run" in res:
        print("- WARNING: engine/ or kernels/ changed during the run: the figures mix two versions of the engine.")
    print(f"\ntargets met: {sum(checks)}/{len(checks)}; total run time {res['wall_s']:.0f} s")


if __name__ == "__main__":
    raise SystemExit(main())
