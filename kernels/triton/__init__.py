"""Triton kernels for the hot paths, one file per family, each launcher taking the arguments and
returning what its PyTorch reference in kernels/ returns.

`enabled(*tensors)` is the one dispatch rule: the kernels run when the tensors are on CUDA,
Triton imports and autograd is not recording (the kernels have no backward). The environment
variable OMNISTREAM_KERNELS overrides it: `torch` forces the PyTorch path (for A/B runs),
`triton` forces the kernels (on CPU tensors they then run in Triton's interpreter, slowly:
that is how the tests check them without a GPU), `auto` (default) is the rule above.

Launchers call their kernels through `launch`, which picks the interpreter for CPU tensors
(so nothing depends on TRITON_INTERPRET being set before triton was first imported) and lets
tests record the launches instead of running them (`recording`), to compile each one for a
real GPU target.
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch

MODES = ("auto", "torch", "triton")


def mode() -> str:
    m = os.environ.get("OMNISTREAM_KERNELS", "auto").strip().lower() or "auto"
    if m not in MODES:
        raise ValueError(f"OMNISTREAM_KERNELS={m!r}: expected one of {', '.join(MODES)}")
    return m


@functools.cache
def available() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except ImportError:
        return False
    return True


def enabled(*tensors: torch.Tensor) -> bool:
    """Whether the Triton kernels should replace the PyTorch path for these input tensors.
    Called once per kernel call on the CPU path too, so the common case returns early."""
    m = os.environ.get("OMNISTREAM_KERNELS")
    if m is not None and m != "auto":
        m = mode()                                  # normalizes the spelling or raises
    if m == "torch":
        return False
    if m != "triton":
        for t in tensors:
            if not t.is_cuda:
                return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    return available()


# ---- launching ----------------------------------------------------------------------------
_recorder: list | None = None


@contextlib.contextmanager
def recording():
    """Within this block launchers record (kernel, grid, args, kwargs) instead of running."""
    global _recorder
    saved, _recorder = _recorder, []
    try:
        yield _recorder
    finally:
        _recorder = saved


@functools.cache
def _interpreted(fn):
    from triton.runtime.interpreter import InterpretedFunction
    return InterpretedFunction(fn)


@contextlib.contextmanager
def _interpreter_mode():
    """What TRITON_INTERPRET=1 at import time would have given: Triton's own library functions
    (tl.cumsum, tl.sigmoid, ...) were decorated as compiled JIT functions when triton was
    imported, so while a kernel is interpreted their calls are routed to the interpreter too."""
    from triton import knobs
    from triton.runtime.interpreter import _patch_lang
    from triton.runtime.jit import JITFunction

    def call(self, *args, **kwargs):
        # as InterpretedFunction.__call__, but undoing its patches of triton.language on return
        # (left in place they would break later compilations in this process)
        scope = _patch_lang(self.fn)
        try:
            return _interpreted(self.fn).rewrite()(*args, **kwargs)
        finally:
            scope.restore()

    saved_call, saved_flag = JITFunction.__call__, knobs.runtime.interpret
    JITFunction.__call__ = call
    knobs.runtime.interpret = True
    try:
        yield
    finally:
        JITFunction.__call__ = saved_call
        knobs.runtime.interpret = saved_flag


def launch(kernel, grid: tuple[int, ...], device: torch.device, *args, **kwargs) -> None:
    """kernel[grid](*args, **kwargs), through the interpreter when the tensors are on the CPU."""
    if _recorder is not None:
        _recorder.append((kernel, grid, args, kwargs))
        return
    if device.type != "cpu":
        if device.index is not None and device.index != torch.cuda.current_device():
            with torch.cuda.device(device):             # Triton launches on the current device
                kernel[grid](*args, **kwargs)
        else:
            kernel[grid](*args, **kwargs)
        return
    kwargs = {k: v for k, v in kwargs.items() if k not in ("num_warps", "num_stages")}
    with _interpreter_mode():
        _interpreted(getattr(kernel, "fn", kernel))[grid](*args, **kwargs)


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 products exactly (tl.dot would use tf32 on the GPU); half types on tensor cores."""
    return "ieee" if dtype == torch.float32 else "tf32"
