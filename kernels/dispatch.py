"""The one place that chooses between the Triton kernels and their PyTorch references.

Rule (docs/contracts.md, "Kernels"): CUDA tensors run the Triton kernels; CPU tensors run the
plain PyTorch references. On a GPU there is never a silent fallback: if Triton cannot be
imported while the tensors are on CUDA, the call fails loudly.

Tests and benchmarks may force a backend once, through `set_backend`:
- "auto" (default): Triton for CUDA tensors, reference otherwise.
- "triton": always Triton. With CPU tensors this needs Triton's interpreter
  (TRITON_INTERPRET=1 set before triton is first imported; tests/kernels/conftest.py does it).
- "reference": always the PyTorch reference (the baseline for benchmarks and loss curves).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator

import torch

BACKENDS = ("auto", "triton", "reference")
_backend = "auto"


def set_backend(name: str) -> None:
    """Choose the backend for every kernel call that follows in this process."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"kernels backend must be one of {BACKENDS}, got {name!r}")
    _backend = name


def get_backend() -> str:
    return _backend


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    """Temporarily force a backend (tests, benchmarks)."""
    previous = _backend
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except ImportError:
        return False
    return True


def triton_interpreter_active() -> bool:
    # Triton reads TRITON_INTERPRET when `triton` is imported; this only reports it for error messages.
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def use_triton(*tensors: torch.Tensor | None) -> bool:
    """True when the Triton kernels must run for these tensors, False for the PyTorch reference."""
    present = [t for t in tensors if t is not None]
    if not present:
        raise ValueError("use_triton needs at least one tensor")
    on_cuda = [t.is_cuda for t in present]
    if any(on_cuda) and not all(on_cuda):
        devices = sorted({str(t.device) for t in present})
        raise ValueError(f"kernel inputs are on different devices: {devices}")
    cuda = all(on_cuda)
    if _backend == "reference":
        return False
    if _backend == "auto" and not cuda:
        return False
    if not triton_available():
        raise RuntimeError(
            "Triton is not importable but the kernels were asked to run on "
            + ("CUDA tensors" if cuda else "the forced 'triton' backend")
            + ": install triton (pip install triton) - rankflow never falls back silently on a GPU"
        )
    if not cuda and not triton_interpreter_active():
        raise RuntimeError(
            "backend 'triton' with CPU tensors needs Triton's interpreter: set TRITON_INTERPRET=1 "
            "before triton is imported (tests/kernels/conftest.py does this)"
        )
    return True
