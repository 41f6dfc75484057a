"""Custom GPU kernels (Triton) for the hot paths of the engine, each with a plain PyTorch reference
implementation that defines its semantics and is used for testing and on machines without a GPU."""

import contextlib
import os


@contextlib.contextmanager
def kernels_mode(mode: str):
    """Within the block, OMNISTREAM_KERNELS=mode: 'torch' forces the PyTorch references, 'triton'
    the Triton kernels (interpreted on CPU), 'auto' the default choice by device (for A/B runs)."""
    saved = os.environ.get("OMNISTREAM_KERNELS")
    os.environ["OMNISTREAM_KERNELS"] = mode
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("OMNISTREAM_KERNELS", None)
        else:
            os.environ["OMNISTREAM_KERNELS"] = saved
