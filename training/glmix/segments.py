"""Segment sums over events sorted by entity: the gradients and Hessians of all entities at once.

For events e with segment (entity) s(e):

    segment_sum(v)[s]             = sum_{e: s(e)=s} v_e
    segment_outer_sum(x, w)[s]    = sum_{e: s(e)=s} w_e x_e x_e^T

The outer sum uses the kernels package's fused Triton `kernels.segment.segment_outer_sum` for float32
CUDA tensors when that module is installed (docs/contracts.md, Kernels: one program per segment, no
(events, d, d) tensor, deterministic). Otherwise (CPU, float64, or no kernels package) it is `index_add_`
over blocks of events, so the transient (block, d, d) tensor stays within `block_elements` whatever the
number of events.
"""

from __future__ import annotations

import torch


def segment_sum(values: torch.Tensor, segment_ids: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Sum rows of `values` (events, ...) into `num_segments` rows by `segment_ids`."""
    out = values.new_zeros((num_segments, *values.shape[1:]))
    return out.index_add_(0, segment_ids, values)


def _fused_outer_sum(features: torch.Tensor):
    """The kernels package's Triton op when it applies to these tensors, else None."""
    if not features.is_cuda or features.dtype != torch.float32:
        return None  # its CPU path materialises (events, d, d); ours is blocked
    try:
        from kernels.dispatch import use_triton
        from kernels.segment import segment_outer_sum as fused
    except ImportError:
        return None
    return fused if use_triton(features) else None


def segment_outer_sum(
    features: torch.Tensor,
    weights: torch.Tensor,
    segment_ids: torch.Tensor,
    num_segments: int,
    block_elements: int = 1 << 24,
    sorted_ids: bool = False,
) -> torch.Tensor:
    """Per segment sum of w x x^T, shape (num_segments, d, d). `sorted_ids`: ids are non-decreasing."""
    fused = _fused_outer_sum(features)
    if fused is not None:
        return fused(features, weights, segment_ids, num_segments, ids_sorted=sorted_ids)
    events, dim = features.shape
    out = features.new_zeros((num_segments, dim * dim))
    block = max(1, block_elements // (dim * dim))
    for start in range(0, events, block):
        x = features[start : start + block]
        outer = (x * weights[start : start + block, None]).unsqueeze(2) * x.unsqueeze(1)
        out.index_add_(0, segment_ids[start : start + block], outer.reshape(-1, dim * dim))
    return out.view(num_segments, dim, dim)
