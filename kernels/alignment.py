"""Tensor-core alignment: run linear layers of an odd feature width on zero-padded columns.

A ranker's input width is rarely a multiple of 8 (26 x 64 embeddings + 13 dense = 1677). With a
row stride of 1677 bf16 values the rows are not 16-byte aligned, and cuBLAS falls back to old,
unaligned GEMM kernels (the H100 profile in benchmarks/README.md shows sm75 `s1688gemm` kernels
running 5-7x under the aligned rate) and every elementwise kernel loses its wide loads. Padding
the activations with zero columns up to `aligned_width(d)` fixes both. The parameters keep their
true shapes (checkpoints do not change); they are zero-padded at use:

    x_pad = [x, 0],   W_pad = [[W, 0], [0, 0]],   b_pad = [b, 0]
    x_pad W_pad^T + b_pad = [x W^T + b, 0]                               (exact, not approximate)

The padded weight entries multiply zeros, so their gradients are exactly zero and the gradient
of W is the unpadded one; padded output columns are exactly zero.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

# 8 bf16 (16 bytes): the alignment cuBLAS's Hopper kernels and 16-byte vector loads need.
TENSOR_CORE_MULTIPLE = 8


def aligned_width(width: int, multiple: int = TENSOR_CORE_MULTIPLE) -> int:
    """The smallest multiple of `multiple` not below `width`."""
    return -(-int(width) // multiple) * multiple


def pad_columns(x: torch.Tensor, width: int) -> torch.Tensor:
    """x [..., d] with zero columns appended up to `width` (x itself when d == width)."""
    missing = width - x.shape[-1]
    if missing < 0:
        raise ValueError(f"pad_columns: tensor is {x.shape[-1]} wide, more than the target width {width}")
    return F.pad(x, (0, missing)) if missing else x


def padded_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, out_width: int | None = None
) -> torch.Tensor:
    """x W^T + b where x may carry trailing zero columns past W's input width, and the output is
    zero-padded to `out_width` columns (default: W's output width, no padding)."""
    out_features, in_features = weight.shape
    in_width = x.shape[-1]
    out_width = out_features if out_width is None else out_width
    if in_width < in_features or out_width < out_features:
        raise ValueError(
            f"padded_linear: weight is {out_features} x {in_features}, input {in_width} wide, output {out_width} wide"
        )
    if in_width != in_features or out_width != out_features:
        weight = F.pad(weight, (0, in_width - in_features, 0, out_width - out_features))
        if bias is not None:
            bias = pad_columns(bias, out_width)
    return F.linear(x, weight, bias)
