"""Kernel tests run the Triton kernels twice over: on a GPU at full size, and on CI's CPU under
Triton's interpreter at small sizes.

Triton decides at decoration time (`@triton.jit`) whether a kernel is interpreted, from
TRITON_INTERPRET, so the variable is set here, before kernels.* is imported; kernel modules that
another test area imported earlier are reloaded so that their kernels pick it up.
"""

from __future__ import annotations

import importlib
import os
import sys

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ["TRITON_INTERPRET"] = "1"
    for _name in [n for n in sys.modules if n.startswith("kernels.")]:
        importlib.reload(sys.modules[_name])

import pytest  # noqa: E402

from kernels import dispatch  # noqa: E402

DEVICE = "cuda" if HAS_CUDA else "cpu"


@pytest.fixture
def device() -> str:
    return DEVICE


@pytest.fixture
def triton_backend():
    """Force the Triton kernels (interpreted on CPU), restoring the previous backend afterwards."""
    with dispatch.backend("triton"):
        yield
