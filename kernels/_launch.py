"""Small helpers shared by the kernel launch wrappers (shapes, dtypes, grid sizes)."""

from __future__ import annotations

import functools

import torch


def rows_view(tensor: torch.Tensor, n_cols: int) -> torch.Tensor:
    """A contiguous [rows, n_cols] view of `tensor` (a copy only when it is not contiguous)."""
    return tensor.contiguous().view(-1, n_cols)


def common_dtype(*tensors: torch.Tensor) -> torch.dtype:
    dtype = tensors[0].dtype
    for tensor in tensors[1:]:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


def check_float(name: str, tensor: torch.Tensor) -> None:
    if tensor.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"{name} must be float32, bfloat16 or float16, got {tensor.dtype}")


def next_power_of_2(value: int) -> int:
    return 1 << max(0, (int(value) - 1).bit_length())


@functools.cache
def _cuda_multiprocessors(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def multiprocessor_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (sizes persistent grids); 1 under the CPU interpreter."""
    if device.type != "cuda":
        return 1
    return _cuda_multiprocessors(device.index if device.index is not None else torch.cuda.current_device())
