"""Per-entity reductions for GLMix's sequential Bayesian update (Lambda Learner, arXiv 2010.05154).

The Laplace update of each member's (or item's) random effect needs, over that entity's events,
the gradient and the Hessian of the logistic loss:

    segment_sum(values, ids, S)[s]                  = sum_{i: ids_i = s} values_i          [S, d]
    segment_outer_sum(x, w, ids, S)[s]              = sum_{i: ids_i = s} w_i x_i x_i^T     [S, d, d]

(with values_i = (p_i - y_i) x_i for the gradient and w_i = p_i (1 - p_i) for the Hessian).
segment_ids may come in any order: they are ordered by a stable sort (skipped when the caller
passes ids_sorted=True), so each segment's rows are summed in row order by one program: the
result is deterministic (no atomics), unlike index_add_ on CUDA. Segments with no rows give 0.
Arithmetic is float32; the outputs take the features' (values') dtype.

Gradients: d values_i = G_{ids_i};  d x_i = w_i (G_s + G_s^T) x_i;  d w_i = x_i^T G_s x_i. The outer
sum's backward walks the forward's sorted layout, one program per segment, so each G_s is read once.
"""

from __future__ import annotations

import torch

from kernels._launch import check_float, next_power_of_2
from kernels.dispatch import use_triton


def segment_sum_reference(values: torch.Tensor, segment_ids: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Plain PyTorch: index_add_ of the rows into their segments (float32 accumulation)."""
    out = torch.zeros((num_segments, values.shape[1]), dtype=torch.float32, device=values.device)
    out.index_add_(0, segment_ids.long(), values.float())
    return out.to(values.dtype)


def segment_outer_sum_reference(
    features: torch.Tensor, weights: torch.Tensor, segment_ids: torch.Tensor, num_segments: int
) -> torch.Tensor:
    """Plain PyTorch: per-row outer products w x x^T, index_add_ into their segments."""
    x = features.float()
    outer = torch.einsum("n,ni,nj->nij", weights.float(), x, x)
    out = torch.zeros((num_segments, x.shape[1], x.shape[1]), dtype=torch.float32, device=x.device)
    out.index_add_(0, segment_ids.long(), outer)
    return out.to(features.dtype)


def _check_ids(segment_ids: torch.Tensor, n_rows: int) -> None:
    if segment_ids.dtype not in (torch.int32, torch.int64) or segment_ids.shape != (n_rows,):
        raise ValueError(f"segment_ids must be int32/int64 of shape ({n_rows},), got {segment_ids.dtype} "
                         f"{tuple(segment_ids.shape)}")


def _check_id_range(segment_ids: torch.Tensor, num_segments: int) -> None:
    if segment_ids.numel():
        low, high = (int(v) for v in torch.aminmax(segment_ids))  # one host sync, not two
        if low < 0 or high >= num_segments:
            raise ValueError(f"segment_ids must lie in [0, {num_segments}); got [{low}, {high}]")


def segment_sum(
    values: torch.Tensor, segment_ids: torch.Tensor, num_segments: int, *, ids_sorted: bool = False
) -> torch.Tensor:
    """Sum of the rows of values [N, d] per segment -> [num_segments, d]."""
    check_float("values", values)
    if values.dim() != 2:
        raise ValueError(f"segment_sum: values must be [N, d], got {tuple(values.shape)}")
    _check_ids(segment_ids, values.shape[0])
    if not use_triton(values, segment_ids):
        _check_id_range(segment_ids, num_segments)
        return segment_sum_reference(values, segment_ids, num_segments)
    out = _SegmentSum.apply(values, segment_ids, num_segments, ids_sorted)
    _check_id_range(segment_ids, num_segments)  # see segment_outer_sum
    return out


def segment_outer_sum(
    features: torch.Tensor, weights: torch.Tensor, segment_ids: torch.Tensor, num_segments: int,
    *, ids_sorted: bool = False,
) -> torch.Tensor:
    """Per segment sum of w_i x_i x_i^T for features [N, d], weights [N] -> [num_segments, d, d]."""
    check_float("features", features)
    check_float("weights", weights)
    if features.dim() != 2 or weights.shape != (features.shape[0],):
        raise ValueError(f"segment_outer_sum: features must be [N, d] and weights [N], got "
                         f"{tuple(features.shape)} and {tuple(weights.shape)}")
    _check_ids(segment_ids, features.shape[0])
    if not use_triton(features, weights, segment_ids):
        _check_id_range(segment_ids, num_segments)
        return segment_outer_sum_reference(features, weights, segment_ids, num_segments)
    out = _SegmentOuterSum.apply(features, weights, segment_ids, num_segments, ids_sorted)
    # Checked once the kernels are queued, so the host sync overlaps them. Rows with an id outside
    # [0, S) fall outside every segment's range of the sorted layout: the kernels never index with it.
    _check_id_range(segment_ids, num_segments)
    return out


def _segment_layout(segment_ids: torch.Tensor, num_segments: int, ids_sorted: bool):
    """(row order, CSR starts [S+1]): rows order[starts[s]:starts[s+1]] belong to segment s."""
    ids = segment_ids
    if num_segments < 2**31 - 1:  # 32-bit keys: half the radix passes of a 64-bit sort
        ids = ids.to(torch.int32)
    if ids_sorted:
        order, sorted_ids = None, ids
    else:
        sorted_ids, order = torch.sort(ids, stable=True)
    boundaries = torch.arange(num_segments + 1, device=ids.device, dtype=ids.dtype)
    starts = torch.searchsorted(sorted_ids, boundaries)
    return order, starts


try:
    import triton
    import triton.language as tl
except ImportError:  # kernels.dispatch refuses the Triton path without triton
    triton = None

if triton is not None:

    @triton.jit
    def _segment_sum_kernel(
        values_ptr, order_ptr, starts_ptr, out_ptr, n_cols,
        HAS_ORDER: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        segment = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        col_mask = cols < n_cols
        start = tl.load(starts_ptr + segment)
        end = tl.load(starts_ptr + segment + 1)
        acc = tl.zeros((BLOCK_R, BLOCK_D), dtype=tl.float32)
        first = start
        # while, not for-range: Triton's interpreter cannot take a loaded scalar as a range bound.
        while first < end:
            positions = first + tl.arange(0, BLOCK_R)
            row_mask = positions < end
            rows = tl.load(order_ptr + positions, mask=row_mask, other=0) if HAS_ORDER else positions
            mask = row_mask[:, None] & col_mask[None, :]
            acc += tl.load(values_ptr + rows.to(tl.int64)[:, None] * n_cols + cols[None, :], mask=mask,
                           other=0.0).to(tl.float32)
            first += BLOCK_R
        out_offsets = segment.to(tl.int64) * n_cols + cols
        tl.store(out_ptr + out_offsets, tl.sum(acc, axis=0).to(out_ptr.dtype.element_ty), mask=col_mask)

    @triton.jit
    def _segment_outer_kernel(
        features_ptr, weights_ptr, order_ptr, starts_ptr, out_ptr, n_cols,
        HAS_ORDER: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        segment = tl.program_id(0)
        cols_i = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        cols_j = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
        mask_i, mask_j = cols_i < n_cols, cols_j < n_cols
        start = tl.load(starts_ptr + segment)
        end = tl.load(starts_ptr + segment + 1)
        acc = tl.zeros((BLOCK_D, BLOCK_D), dtype=tl.float32)
        first = start
        # while, not for-range: Triton's interpreter cannot take a loaded scalar as a range bound.
        while first < end:
            positions = first + tl.arange(0, BLOCK_R)
            row_mask = positions < end
            rows = tl.load(order_ptr + positions, mask=row_mask, other=0) if HAS_ORDER else positions
            row_offsets = rows.to(tl.int64)[:, None] * n_cols
            x_i = tl.load(features_ptr + row_offsets + cols_i[None, :], mask=row_mask[:, None] & mask_i[None, :],
                          other=0.0).to(tl.float32)
            x_j = tl.load(features_ptr + row_offsets + cols_j[None, :], mask=row_mask[:, None] & mask_j[None, :],
                          other=0.0).to(tl.float32)
            w = tl.load(weights_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)
            # IEEE float32 products: tf32 would cost ~1e-3 relative error on a Hessian.
            acc += tl.dot(tl.trans(x_i * w[:, None]), x_j, input_precision="ieee")
            first += BLOCK_R
        out_offsets = (segment.to(tl.int64) * n_cols + cols_i[:, None]) * n_cols + cols_j[None, :]
        tl.store(out_ptr + out_offsets, acc.to(out_ptr.dtype.element_ty), mask=mask_i[:, None] & mask_j[None, :])

    @triton.jit
    def _segment_outer_backward_kernel(
        grad_ptr, features_ptr, weights_ptr, order_ptr, starts_ptr, dfeatures_ptr, dweights_partial_ptr,
        n_rows, n_cols, HAS_ORDER: tl.constexpr, ONE_BLOCK: tl.constexpr, BLOCK_R: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        # Program (segment s, output column block i), over the segment's rows in the sorted layout: G_s is
        # read once per segment (not once per row), H = G_s + G_s^T, and for each row
        #   (d x)_i = w (x H)_i,   d w = x^T G_s x = 1/2 x^T H x  (this column block's share).
        segment = tl.program_id(0)
        block_i = tl.program_id(1)
        cols_i = block_i * BLOCK_D + tl.arange(0, BLOCK_D)
        mask_i = cols_i < n_cols
        grad_base = grad_ptr + segment.to(tl.int64) * n_cols * n_cols
        start = tl.load(starts_ptr + segment)
        end = tl.load(starts_ptr + segment + 1)
        if ONE_BLOCK:  # d fits one tile: H once per segment, in registers
            h_tile = (tl.load(grad_base + cols_i[:, None] * n_cols + cols_i[None, :],
                              mask=mask_i[:, None] & mask_i[None, :], other=0.0).to(tl.float32)
                      + tl.load(grad_base + cols_i[None, :] * n_cols + cols_i[:, None],
                                mask=mask_i[:, None] & mask_i[None, :], other=0.0).to(tl.float32))
        first = start
        # while, not for-range: Triton's interpreter cannot take a loaded scalar as a range bound.
        while first < end:
            positions = first + tl.arange(0, BLOCK_R)
            row_mask = positions < end
            rows = tl.load(order_ptr + positions, mask=row_mask, other=0) if HAS_ORDER else positions
            row_offsets = rows.to(tl.int64)[:, None] * n_cols
            x_i = tl.load(features_ptr + row_offsets + cols_i[None, :], mask=row_mask[:, None] & mask_i[None, :],
                          other=0.0).to(tl.float32)
            if ONE_BLOCK:
                xh = tl.dot(x_i, h_tile, input_precision="ieee")  # IEEE: tf32 costs ~1e-3 on a Hessian
            else:
                xh = tl.zeros((BLOCK_R, BLOCK_D), dtype=tl.float32)
                first_j = 0
                while first_j < n_cols:
                    cols_j = first_j + tl.arange(0, BLOCK_D)
                    mask_j = cols_j < n_cols
                    x_j = tl.load(features_ptr + row_offsets + cols_j[None, :],
                                  mask=row_mask[:, None] & mask_j[None, :], other=0.0).to(tl.float32)
                    tile_mask = mask_j[:, None] & mask_i[None, :]
                    h_ji = (tl.load(grad_base + cols_j[:, None] * n_cols + cols_i[None, :], mask=tile_mask,
                                    other=0.0).to(tl.float32)
                            + tl.load(grad_base + cols_i[None, :] * n_cols + cols_j[:, None], mask=tile_mask,
                                      other=0.0).to(tl.float32))
                    xh += tl.dot(x_j, h_ji, input_precision="ieee")
                    first_j += BLOCK_D
            w = tl.load(weights_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)
            tl.store(dfeatures_ptr + row_offsets + cols_i[None, :], (w[:, None] * xh).to(dfeatures_ptr.dtype.element_ty),
                     mask=row_mask[:, None] & mask_i[None, :])
            # The column blocks' shares are summed in a fixed order afterwards.
            tl.store(dweights_partial_ptr + block_i.to(tl.int64) * n_rows + rows, 0.5 * tl.sum(x_i * xh, axis=1),
                     mask=row_mask)
            first += BLOCK_R


# One program per segment (and column block): segments are small, so many programs must be resident at
# once to hide each one's chain of dependent loads (starts -> row order -> rows).
_OUTER_WARPS = 2
_OUTER_BLOCK_R = 16


def _block_d(n_cols: int, cap: int) -> int:
    return min(cap, max(16, next_power_of_2(n_cols)))


class _SegmentSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, segment_ids, num_segments, ids_sorted):
        values_c = values.contiguous()
        n_cols = values_c.shape[1]
        order, starts = _segment_layout(segment_ids, num_segments, ids_sorted)
        out = torch.empty((num_segments, n_cols), dtype=values.dtype, device=values.device)
        block_d = _block_d(n_cols, 128)
        grid = (num_segments, triton.cdiv(n_cols, block_d))
        _segment_sum_kernel[grid](values_c, order if order is not None else starts, starts, out, n_cols,
                                  HAS_ORDER=order is not None, BLOCK_R=16, BLOCK_D=block_d, num_warps=4)
        ctx.save_for_backward(segment_ids)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (segment_ids,) = ctx.saved_tensors
        # The adjoint of a segment sum is a gather: one read of G per row, one write; no reduction.
        return grad_out.index_select(0, segment_ids.long()), None, None, None


class _SegmentOuterSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features, weights, segment_ids, num_segments, ids_sorted):
        features_c, weights_c = features.contiguous(), weights.contiguous()
        n_cols = features_c.shape[1]
        order, starts = _segment_layout(segment_ids, num_segments, ids_sorted)
        out = torch.empty((num_segments, n_cols, n_cols), dtype=features.dtype, device=features.device)
        block_d = _block_d(n_cols, 64)
        n_blocks = triton.cdiv(n_cols, block_d)
        _segment_outer_kernel[(num_segments, n_blocks, n_blocks)](
            features_c, weights_c, order if order is not None else starts, starts, out, n_cols,
            HAS_ORDER=order is not None, BLOCK_R=_OUTER_BLOCK_R, BLOCK_D=block_d, num_warps=_OUTER_WARPS,
        )
        # The backward reuses the sorted layout: no second sort.
        ctx.save_for_backward(features_c, weights_c, order if order is not None else starts, starts)
        ctx.has_order = order is not None
        ctx.weights_dtype = weights.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        features, weights, order, starts = ctx.saved_tensors
        n_rows, n_cols = features.shape
        num_segments = starts.numel() - 1
        grad = grad_out.contiguous()
        block_d = _block_d(n_cols, 64)
        n_blocks = triton.cdiv(n_cols, block_d)
        dfeatures = torch.empty_like(features)
        dweights_partial = torch.empty((n_blocks, n_rows), dtype=torch.float32, device=features.device)
        if n_rows:
            _segment_outer_backward_kernel[(num_segments, n_blocks)](
                grad, features, weights, order, starts, dfeatures, dweights_partial, n_rows, n_cols,
                HAS_ORDER=ctx.has_order, ONE_BLOCK=n_blocks == 1, BLOCK_R=_OUTER_BLOCK_R, BLOCK_D=block_d,
                num_warps=_OUTER_WARPS,
            )
        dweights = (dweights_partial[0] if n_blocks == 1 else dweights_partial.sum(dim=0)).to(ctx.weights_dtype)
        return dfeatures, dweights, None, None, None
