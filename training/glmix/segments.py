"""Segment sums over events sorted by entity: the gradients and Hessians of all entities at once.

For events e with segment (entity) s(e):

    segment_sum(v)[s]             = sum_{e: s(e)=s} v_e
    segment_outer_sum(x, w)[s]    = sum_{e: s(e)=s} w_e x_e x_e^T

On float32 CUDA tensors both go through the kernels package's Triton ops, `kernels.segment.segment_sum` and
`segment_outer_sum` (kernels.dispatch decides, docs/contracts.md, Kernels: one program per segment, no
(events, d, d) tensor, deterministic where index_add_'s atomics on CUDA are not). Otherwise (CPU; float64,
which the kernels do not take, said once per process on CUDA; or no kernels package) the sums are
`index_add_`, the outer sums over blocks of events, so the transient (block, d, d) tensor stays within
`block_elements` whatever the number of events.
"""

from __future__ import annotations

import functools
import logging

import torch


def segment_sum(values: torch.Tensor, segment_ids: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Sum rows of `values` (events, ...) into `num_segments` rows by `segment_ids`."""
    out = values.new_zeros((num_segments, *values.shape[1:]))
    return out.index_add_(0, segment_ids, values)


@functools.cache
def _say_no_kernel(dtype: torch.dtype) -> None:
    logging.getLogger(__name__).warning(
        "GLMix on CUDA in %s: the Triton segment kernels take float32; the PyTorch sums run instead", dtype)


def _fused_ops(features: torch.Tensor):
    """(segment_sum, segment_outer_sum) of the kernels package when they apply to these tensors, else None."""
    if not features.is_cuda:
        return None  # the kernels' CPU reference materialises (events, d, d); ours is blocked
    if features.dtype != torch.float32:
        _say_no_kernel(features.dtype)
        return None
    try:
        from kernels.dispatch import use_triton
        from kernels.segment import segment_outer_sum, segment_sum
    except ImportError:
        return None
    return (segment_sum, segment_outer_sum) if use_triton(features) else None


def _fused_outer_sum(features: torch.Tensor):
    """The kernels package's Triton outer sum when it applies to these tensors, else None."""
    ops = _fused_ops(features)
    return None if ops is None else ops[1]


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
    if sorted_ids:
        return _bucketed_outer_sum(features, weights, segment_ids, num_segments, block_elements)
    return _blocked_outer_sum(features, weights, segment_ids, num_segments, block_elements)


def _blocked_outer_sum(features, weights, segment_ids, num_segments, block_elements):
    """index_add_ of per-event outer products, a block of events at a time (any id order)."""
    events, dim = features.shape
    out = features.new_zeros((num_segments, dim * dim))
    block = max(1, block_elements // (dim * dim))
    for start in range(0, events, block):
        x = features[start : start + block]
        outer = (x * weights[start : start + block, None]).unsqueeze(2) * x.unsqueeze(1)
        out.index_add_(0, segment_ids[start : start + block], outer.reshape(-1, dim * dim))
    return out.view(num_segments, dim, dim)


def _bucketed_outer_sum(features, weights, segment_ids, num_segments, block_elements):
    """X_s^T W_s X_s by batched matmul, segments grouped by length rounded up to a power of two.

    Events are contiguous per segment (sorted ids). A segment of c events is padded to the bucket length
    L = 2^ceil(log2 c) < 2c, so the padded copy is under twice the events (never the largest segment's
    length for all), and no (events, d, d) tensor exists: the d x d sums come out of BLAS.
    """
    events, dim = features.shape
    out = features.new_zeros((num_segments, dim, dim))
    if events == 0:
        return out
    counts = torch.bincount(segment_ids, minlength=num_segments)
    starts = torch.cumsum(counts, 0) - counts
    weighted = features * weights.unsqueeze(1)
    present = (counts > 0).nonzero().squeeze(1)
    exponent = torch.ceil(torch.log2(counts[present].double())).long()
    for power in torch.unique(exponent).tolist():
        length = 1 << power
        group = present[exponent == power]
        # Bound the (group, length, d) gathers by block_elements, a slice of segments at a time.
        per_slice = max(1, block_elements // (length * dim))
        for first in range(0, group.numel(), per_slice):
            segments = group[first : first + per_slice]
            offsets = torch.arange(length, device=features.device)
            rows = starts[segments, None] + offsets
            valid = offsets < counts[segments, None]
            rows = torch.where(valid, rows, 0)
            x = features[rows]
            xw = weighted[rows] * valid.unsqueeze(2)
            out[segments] = torch.bmm(xw.transpose(1, 2), x)
    return out


class SortedSegments:
    """Events sorted by segment, laid out once for repeated outer sums with changing weights (Newton steps).

    The padded per-bucket copies of the features (see `_bucketed_outer_sum`) are built here once, so each
    `outer_sum(weights)` is a gather of the weights and one batched matmul per bucket.
    """

    def __init__(self, features: torch.Tensor, segment_ids: torch.Tensor, num_segments: int,
                 block_elements: int = 1 << 24) -> None:
        self.features, self.segment_ids, self.num_segments = features, segment_ids, num_segments
        ops = _fused_ops(features)
        self.fused_sum, self.fused = ops if ops is not None else (None, None)
        self.blocks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.covers_all = False
        if self.fused is not None or features.shape[0] == 0:
            return
        dim = features.shape[1]
        counts = torch.bincount(segment_ids, minlength=num_segments)
        self.covers_all = bool((counts > 0).all())
        starts = torch.cumsum(counts, 0) - counts
        present = (counts > 0).nonzero().squeeze(1)
        exponent = torch.ceil(torch.log2(counts[present].double())).long()
        for power in torch.unique(exponent).tolist():
            length = 1 << power
            group = present[exponent == power]
            per_slice = max(1, block_elements // (length * dim))
            offsets = torch.arange(length, device=features.device)
            for first in range(0, group.numel(), per_slice):
                segments = group[first : first + per_slice]
                valid = offsets < counts[segments, None]
                rows = torch.where(valid, starts[segments, None] + offsets, 0)
                self.blocks.append((segments, rows, valid, features[rows] * valid.unsqueeze(2)))

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Per segment sum of `values` (events,) or (events, d)."""
        if self.fused_sum is None:
            return segment_sum(values, self.segment_ids, self.num_segments)
        columns = values if values.dim() == 2 else values.unsqueeze(1)
        out = self.fused_sum(columns, self.segment_ids, self.num_segments, ids_sorted=True)
        return out if values.dim() == 2 else out.squeeze(1)

    def outer_sum(self, weights: torch.Tensor) -> torch.Tensor:
        """Per segment sum of w x x^T, (num_segments, d, d)."""
        if self.fused is not None:
            return self.fused(self.features, weights, self.segment_ids, self.num_segments, ids_sorted=True)
        dim = self.features.shape[1]
        if self.covers_all:  # every segment sits in exactly one block: no zero-fill needed
            out = self.features.new_empty((self.num_segments, dim, dim))
        else:
            out = self.features.new_zeros((self.num_segments, dim, dim))
        for segments, rows, _, padded in self.blocks:
            out[segments] = torch.bmm((padded * weights[rows].unsqueeze(2)).transpose(1, 2), padded)
        return out
