"""C++ kernels for decoding on the CPU (decode.cpp), compiled at first use.

A decode step is a stream over the weights plus a few hundred tiny ops; on the CPU both are
faster in C++ (see decode.cpp). The library is built once per source, torch version and CPU
with the system's C++ compiler (g++ from build-essential) into `.cache/cpu-kernels/` and loaded
as `torch.ops.omnistream_cpu`. Where it cannot be built, a warning says why and every caller
keeps its PyTorch path, which defines the semantics (and is what the tests compare against).

`enabled(*tensors)` is the dispatch rule, as kernels.triton's: fp32 CPU tensors, autograd not
recording, and OMNISTREAM_KERNELS unset or `auto` (`torch` forces the PyTorch path, `triton`
the Triton kernels).
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import torch

from .. import triton as tk

SOURCE = Path(__file__).with_name("decode.cpp")
CACHE = Path(__file__).resolve().parents[2] / ".cache" / "cpu-kernels"
MAX_ROWS = 16     # token rows up to which the products here beat BLAS (decode, small batches, drafts)
RELU2 = 1         # `act` of linear: relu(.)^2 on every output
PREFIX_MAX_ROWS = 96   # query rows of prefix_attention (a question's heads x tokens)
# -fopenmp: at::parallel_for is an inline template that is serial unless the including file is
# compiled with OpenMP (torch's CPU build uses it); the library then shares torch's libgomp.
FLAGS = ("-O3", "-march=native", "-std=gnu++20", "-fopenmp", "-shared", "-fPIC", "-w")

_lock = threading.Lock()
_ops = None
_tried = False


def _cpu_id() -> str:
    """What -march=native compiles for: the CPU's model and feature flags."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags", "Features", "CPU part"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() + platform.machine()


def _compile(cxx: str, out: Path) -> None:
    """Build the library; a compiler without OpenMP (clang without libomp) builds it serial."""
    from torch.utils.cpp_extension import include_paths, library_paths
    lib = library_paths()[0]
    cmd = [cxx, *FLAGS, f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
           *(f"-I{p}" for p in include_paths()), str(SOURCE), f"-L{lib}", f"-Wl,-rpath,{lib}",
           "-lc10", "-ltorch_cpu", "-o", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode and subprocess.run([f for f in cmd if f != "-fopenmp"], capture_output=True).returncode == 0:
        warnings.warn(f"{cxx} could not build the CPU kernels with OpenMP (-fopenmp): they run on one thread. "
                      "Install the compiler's OpenMP runtime (libomp-dev for clang) to use all threads.",
                      RuntimeWarning, stacklevel=4)
        return
    if res.returncode:
        tail = "\n".join((res.stderr or res.stdout).strip().splitlines()[-15:])
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed:\n{tail}")


def library_path() -> Path:
    """The compiled library, built now if this source, torch and CPU have none yet."""
    want = os.environ.get("CXX") or "g++"
    cxx = shutil.which(want) or (None if "CXX" in os.environ else shutil.which("c++"))
    if cxx is None:
        raise RuntimeError(f"no C++ compiler ({want!r} not found; install build-essential or set CXX)")
    key = hashlib.sha256(b"\0".join([SOURCE.read_bytes(), " ".join(FLAGS).encode(), torch.__version__.encode(), cxx.encode(),
                                     sys.version.encode(), _cpu_id().encode()])).hexdigest()[:16]
    for cache in (CACHE, Path(tempfile.gettempdir()) / "omnistream-cpu-kernels"):   # a read-only checkout
        out = cache / f"decode-{key}.so"
        if out.exists():
            return out
        try:
            cache.mkdir(parents=True, exist_ok=True)
            tmp = tempfile.TemporaryDirectory(dir=cache)
        except OSError:
            continue
        with tmp:                       # concurrent builds each write their own file; the last rename wins
            part = Path(tmp.name) / out.name
            print(f"kernels/cpu: compiling {SOURCE.name} with {cxx} into {cache} (once per machine, about 20 s)",
                  file=sys.stderr, flush=True)
            _compile(cxx, part)
            os.replace(part, out)
        return out
    raise RuntimeError(f"no writable folder for the compiled kernels ({CACHE})")


def ops():
    """torch.ops.omnistream_cpu, built and loaded on the first call; None if it cannot be."""
    global _ops, _tried
    if _tried:
        return _ops
    with _lock:
        if not _tried:
            try:
                torch.ops.load_library(str(library_path()))
                _ops = torch.ops.omnistream_cpu
            except Exception as e:     # no compiler, a failed build: the PyTorch paths remain
                warnings.warn(f"CPU decode kernels unavailable, decoding on the slower PyTorch path: {e}",
                              RuntimeWarning, stacklevel=2)
            _tried = True
    return _ops


def enabled(*tensors: torch.Tensor) -> bool:
    """Whether these tensors take the C++ kernels (see the module docstring)."""
    m = os.environ.get("OMNISTREAM_KERNELS")
    if m is not None and m != "auto" and tk.mode() != "auto":
        return False
    for t in tensors:
        if t.device.type != "cpu" or t.dtype != torch.float32:
            return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    return (_ops if _tried else ops()) is not None


# ---- the kernels (fp32, CPU; callers check `enabled` first) ---------------------------------
def parallel_threads(n: int) -> int:
    """How many threads the kernels' parallel loops spread `n` jobs over (torch's thread count
    for n >= it, when the library is built with OpenMP)."""
    return _ops.parallel_threads(n)


def prefix_attention(q, keys, values):
    """(softmax(q k^T / sqrt(D)) v, its log-sum-exp) over keys that are all visible: q (b, Hkv,
    R, D) with R <= PREFIX_MAX_ROWS, keys / values (b, Hkv, L, D); D a multiple of 16."""
    return _ops.prefix_attention(q, keys, values)


def linear(x, weight, bias=None, act: int = 0):
    """F.linear(x, weight, bias), then relu(.)^2 if act == RELU2; for up to MAX_ROWS rows of x."""
    return _ops.linear(x, weight, bias, act)


def linears(x, weights: list, biases: list, acts: list[int] | None = None) -> list:
    """[linear(x, w, b, act) for each], as one parallel loop over all the weights."""
    return _ops.linears(x, weights, biases, acts or [0] * len(weights))


def add_rms_norm(x, residual, weight, eps: float):
    """(h, RMSNorm(h) * weight) with h = x + residual (x itself when residual is None)."""
    return _ops.add_rms_norm(x, residual, weight, eps)


def mamba_step(x, in_weight, in_bias, conv_state, ssm_state, conv_weight, conv_bias, dt_bias, A_log, D,
               norm_weight, out_weight, out_bias, n_groups: int, eps: float, dt_min: float, dt_max: float):
    """NemotronH's Mamba2 mixer at one token per row: normed x (b, H) -> (b, H), in_proj to
    out_proj; the conv and SSM states (contiguous) are updated in place."""
    return _ops.mamba_step(x, in_weight, in_bias, conv_state, ssm_state, conv_weight, conv_bias, dt_bias, A_log, D,
                           norm_weight, out_weight, out_bias, n_groups, eps, dt_min, dt_max)


def route(logits, correction_bias, top_k, n_group, topk_group, norm_topk_prob, scaling):
    """kernels.moe.route for a few rows of fp32 logits: (expert ids, weights), best first."""
    return _ops.route(logits, correction_bias, top_k, n_group, topk_group, norm_topk_prob, scaling)


def grouped_experts(x, ids, weights, up, down):
    """kernels.moe.grouped_experts for a few tokens: each hit expert reads its weights once."""
    return _ops.grouped_experts(x, ids, weights, up, down)


def moe_step(x, gate_weight, correction_bias, up, down, shared_up, shared_up_bias, shared_down, shared_down_bias,
             top_k, n_group, topk_group, norm_topk_prob, scaling):
    """NemotronH's MoE (no latent projection) for a few tokens x (N, H): router, routing, chosen
    experts and the shared expert, in three parallel loops; fp32 (N, H)."""
    return _ops.moe_step(x, gate_weight, correction_bias, up, down, shared_up, shared_up_bias, shared_down,
                         shared_down_bias, top_k, n_group, topk_group, norm_topk_prob, scaling)


def decode_attention(q, keys, values, lengths: list[int], new_k=None, new_v=None):
    """causal_attention for one query per row: row r sees its first lengths[r] keys. With new_k
    and new_v (b, Hkv, D), those are written into keys / values at lengths[r] - 1 first."""
    return _ops.decode_attention(q, keys, values, lengths, new_k, new_v)
