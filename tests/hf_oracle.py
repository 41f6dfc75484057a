"""transformers as the test oracle, with its image and video processors importable on CPU torch.

The PyPI torchvision wheel is a CUDA build whose C++ ops cannot load beside CPU torch; `make test`
installs it with --no-deps into .cache/pylib. Its import registers fake kernels for two ops, so
we define those op schemas first; only its pure-Python transforms (what the processors use) run.
transformers decides once, when first imported, whether torchvision is available, so conftest.py
calls `prepare()` before any test imports transformers.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

_PYLIB = Path(__file__).resolve().parent.parent / ".cache" / "pylib"
_LIB = None


def prepare() -> None:
    """Put torchvision on the path and define the op schemas its import needs (idempotent)."""
    global _LIB
    if _PYLIB.is_dir() and str(_PYLIB) not in sys.path:
        sys.path.append(str(_PYLIB))
    if _LIB is None:
        _LIB = torch.library.Library("torchvision", "DEF")
        _LIB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _LIB.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")


def import_torchvision():
    """Import torchvision's Python part; raises ImportError if `make test` did not install it."""
    prepare()
    import torchvision
    return torchvision
