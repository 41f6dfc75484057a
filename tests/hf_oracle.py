"""transformers as the test oracle, with its image and video processors importable on CPU torch.

The PyPI torchvision wheel is a CUDA build whose C++ ops cannot load beside CPU torch; `make test`
installs it with --no-deps into .cache/pylib. Its import registers fake kernels for two ops, so
we define those op schemas first; only its pure-Python transforms (what the processors use) run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

_PYLIB = Path(__file__).resolve().parent.parent / ".cache" / "pylib"
_LIB = None


def import_torchvision():
    """Import torchvision's Python part; raises ImportError if `make test` did not install it."""
    global _LIB
    if "torchvision" in sys.modules:
        return sys.modules["torchvision"]
    if _PYLIB.is_dir() and str(_PYLIB) not in sys.path:
        sys.path.append(str(_PYLIB))
    if _LIB is None:
        _LIB = torch.library.Library("torchvision", "DEF")
        _LIB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _LIB.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import torchvision
    return torchvision
