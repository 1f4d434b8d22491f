"""Helpers shared by the kernel tests (a uniquely named module: every test area has a conftest)."""

from __future__ import annotations

import torch

HAS_CUDA = torch.cuda.is_available()
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| in float64; NaN anywhere fails every comparison."""
    actual64, expected64 = actual.detach().double().cpu(), expected.detach().double().cpu()
    if torch.isnan(actual64).any():
        return float("inf")
    return float((actual64 - expected64).norm() / expected64.norm().clamp(min=1e-30))


def sizes(cpu, gpu):
    """Small shapes under the interpreter, full ones on a GPU."""
    return gpu if HAS_CUDA else cpu
