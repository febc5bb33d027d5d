"""Which implementation of a kernel runs: Triton or its torch reference.

`backend="auto"` picks Triton when the tensors live on CUDA and Triton imports,
else the torch reference. `backend="triton"` insists on Triton: compiled on
CUDA, interpreted on CPU (the tests' way to run the Triton code without a GPU;
it needs `TRITON_INTERPRET=1` set before triton is first imported).

Triton decides between compiling and interpreting when `@triton.jit` runs,
that is at import time. `triton_kernel` defers that choice to each launch, so
kernel modules import without Triton installed and one module serves both.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from typing import Any, Callable

import torch

BACKENDS = ("auto", "triton", "torch")


@functools.cache
def triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreter_forced() -> bool:
    """True when TRITON_INTERPRET asks Triton to interpret every kernel."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes")


def interpreter_ready() -> bool:
    """Whether this process can interpret Triton kernels (run them on CPU tensors).

    Triton's own library functions (`tl.zeros`, `tl.sum`, ...) are compiled or
    interpreted as decided when `triton` is first imported, so the interpreter
    works only if `TRITON_INTERPRET=1` was set before that import.
    """
    if not triton_importable():
        return False
    if "triton.language" not in sys.modules:
        return interpreter_forced()
    return _stdlib_interpreted()


@functools.cache  # fixed once triton.language is imported
def _stdlib_interpreted() -> bool:
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction
    return isinstance(tl.zeros, InterpretedFunction)


def triton_usable(device: torch.device | str) -> bool:
    """Whether `backend="auto"` runs Triton for tensors on `device`: CUDA with Triton installed.

    The interpreter is never chosen automatically (it is orders of magnitude
    slower than the torch reference); tests ask for it with `backend="triton"`.
    """
    return triton_importable() and torch.device(device).type == "cuda"


def use_triton(backend: str, device: torch.device | str) -> bool:
    """Resolve a backend name for tensors on `device`: True means run Triton."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown kernel backend {backend!r}; expected one of {BACKENDS}")
    if backend == "torch":
        return False
    if backend == "auto":
        return triton_usable(device)
    if not triton_importable():
        raise RuntimeError("backend='triton' was requested but Triton is not installed "
                           "(pip install 'ttsc[triton]')")
    device = torch.device(device)
    if device.type == "cpu" and not interpreter_ready():
        raise RuntimeError("Triton kernels run on CPU tensors only under the Triton interpreter: "
                           "set TRITON_INTERPRET=1 before triton is first imported")
    if device.type not in ("cuda", "cpu"):
        raise RuntimeError(f"Triton kernels run on CUDA (or interpreted on CPU), not on {device.type}")
    return True


class TritonKernel:
    """A Triton kernel function, compiled for CUDA launches and interpreted for CPU ones.

    Launch it as `kernel[grid](*args, **meta)`, like a `@triton.jit` function.
    """

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn
        functools.update_wrapper(self, fn)
        self._compiled = None
        self._interpreted = None

    def __getitem__(self, grid: Any) -> Callable[..., Any]:
        return functools.partial(self._launch, grid)

    def _launch(self, grid: Any, *args: Any, **kwargs: Any) -> Any:
        on_cuda = any(isinstance(a, torch.Tensor) and a.is_cuda for a in (*args, *kwargs.values()))
        # Once triton's library is interpreted, every kernel must be (as under
        # TRITON_INTERPRET=1 itself, CUDA tensors are then copied to the host).
        impl = self.compiled if on_cuda and not _stdlib_interpreted() else self.interpreted
        return impl[grid](*args, **kwargs)

    @property
    def compiled(self) -> Any:
        if self._compiled is None:
            from triton.runtime.jit import JITFunction
            self._compiled = JITFunction(self.fn)
        return self._compiled

    @property
    def interpreted(self) -> Any:
        if self._interpreted is None:
            from triton.runtime.interpreter import InterpretedFunction
            self._interpreted = InterpretedFunction(self.fn)
        return self._interpreted


def triton_kernel(fn: Callable[..., Any]) -> TritonKernel:
    """Decorator used instead of `@triton.jit` on every kernel of ttsc.

    Kernel modules write their annotations as strings (`from __future__ import
    annotations`), so they import even where Triton is not installed.
    """
    return TritonKernel(fn)


def next_power_of_2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()
