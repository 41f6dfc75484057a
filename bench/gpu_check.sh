#!/usr/bin/env bash
# One command for a CUDA machine, under 8 minutes:
#   1. the kernel tests, compiled and run on CUDA tensors (fp32, fp16, bf16) against the PyTorch references;
#   2. microbenchmarks of every kernel against PyTorch eager (and mamba_ssm / causal_conv1d if installed);
#   3. end-to-end bf16 decode at Nano 30B-A3B layer shapes (6 layers, MEMEM*), Triton kernels vs PyTorch eager,
#      with the achieved memory bandwidth against the card's peak.
#
#   bench/gpu_check.sh [--peak-gbs N]     (N: the card's peak GB/s when its name is not in bench/gpu_common.py)
#   PYTHON=/path/to/python bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
PEAK=()
if [ "${1:-}" = "--peak-gbs" ] && [ -n "${2:-}" ]; then PEAK=(--peak-gbs "$2"); fi

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: torch sees no CUDA device here; run this on a GPU machine" >&2
    exit 2
fi
"$PY" -c 'import torch, triton; p = torch.cuda.get_device_properties(0)
print(f"# {p.name}, {p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}; torch {torch.__version__}, triton {triton.__version__}")'

export TRITON_DEFAULT_FP_FUSION="${TRITON_DEFAULT_FP_FUSION:-1}"   # the default the kernels were tested with
unset TRITON_INTERPRET OMNISTREAM_KERNELS

# Each step has its own time limit (together 7.5 minutes); a failed step does not stop the next.
status=0
echo "## 1. kernel tests on CUDA"
timeout 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_triton_kernels.py || status=1

echo "## 2. kernel microbenchmarks (bf16, Nano sizes)"
timeout 180 "$PY" bench/gpu_kernels.py ${PEAK[@]+"${PEAK[@]}"} || status=1

echo "## 3. end-to-end decode (bf16, Nano layer shapes, random weights)"
timeout 120 "$PY" bench/gpu_decode.py ${PEAK[@]+"${PEAK[@]}"} || status=1
exit $status
