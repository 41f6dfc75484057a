"""What the GPU benchmarks share: the card's peak memory bandwidth, timing, and Nano's layer sizes."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch

from kernels import kernels_mode  # noqa: E402

# Nemotron 3 Nano 30B-A3B decoder sizes (the layer shapes the benchmarks use).
NANO = dict(vocab_size=131072, hidden_size=2688, num_attention_heads=32, num_key_value_heads=2, head_dim=128,
            mamba_num_heads=64, mamba_head_dim=64, ssm_state_size=128, n_groups=8, conv_kernel=4, chunk_size=128,
            n_routed_experts=128, num_experts_per_tok=6, moe_intermediate_size=1856,
            moe_shared_expert_intermediate_size=3712, routed_scaling_factor=2.5, n_group=1, topk_group=1,
            norm_topk_prob=True, max_position_embeddings=262144)

# Peak DRAM bandwidth in GB/s by device name; the first substring that matches wins.
PEAK_GBS = [
    ("GH200", 4000), ("H200", 4800), ("H100 NVL", 3900), ("H100 PCIe", 2000), ("H100", 3350), ("H800", 3350),
    ("B200", 8000), ("B100", 8000), ("A100-SXM4-80GB", 2039), ("A100 80GB PCIe", 1935), ("A100", 1555),
    ("A800", 2039), ("L40S", 864), ("L40", 864), ("L4", 300), ("A40", 696), ("A10G", 600), ("A10", 600),
    ("RTX 6000 Ada", 960), ("RTX 4090", 1008), ("RTX 3090", 936), ("V100", 900), ("T4", 320),
]


def peak_gbs(override: float | None = None) -> tuple[float | None, str]:
    """(peak GB/s, device name); None when the card is not in the table and no override is given."""
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    if override:
        return override, name
    for key, gbs in PEAK_GBS:
        if key.lower() in name.lower():
            return float(gbs), name
    return None, name


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def bench_ms(fn, device, reps: int = 20) -> float:
    """Median milliseconds of fn(): triton.testing.do_bench on CUDA (L2 flushed between calls,
    so memory-bound kernels read from DRAM as they would in the model), wall clock on CPU."""
    if torch.device(device).type == "cuda":
        from triton.testing import do_bench
        return float(do_bench(fn, warmup=10, rep=max(25, reps * 2), return_mode="median"))
    fn()
    times = []
    for _ in range(max(2, reps // 10)):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


kernels = kernels_mode      # OMNISTREAM_KERNELS=mode within a block (kernels/__init__.py)
