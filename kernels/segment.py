"""Per-entity reductions for GLMix's sequential Bayesian update (Lambda Learner, arXiv 2010.05154).

The Laplace update of each member's (or item's) random effect needs, over that entity's events,
the gradient and the Hessian of the logistic loss:

    segment_sum(values, ids, S)[s]                  = sum_{i: ids_i = s} values_i          [S, d]
    segment_outer_sum(x, w, ids, S)[s]              = sum_{i: ids_i = s} w_i x_i x_i^T     [S, d, d]

(with values_i = (p_i - y_i) x_i for the gradient and w_i = p_i (1 - p_i) for the Hessian).
segment_ids may come in any order: they are ordered by a stable sort (skipped when the caller
passes ids_sorted=True: a caller that reuses one set of ids sorts them once; at the bfloat16 shape of
benchmarks/bench_kernels.py the sort takes longer than the reduction), so each segment's rows are summed
in row order by one program: the result is deterministic (no atomics), unlike index_add_ on CUDA.
Segments with no rows give 0.
Arithmetic is float32; the outputs take the features' (values') dtype.

Gradients: d values_i = G_{ids_i};  d x_i = w_i (G_s + G_s^T) x_i;  d w_i = x_i^T G_s x_i. The outer
sum's backward walks the forward's sorted layout, so each G_s is read once (not once per row).

One program per segment (and output tile) accumulates the d x d tile in registers over the segment's
rows and stores it once, so [S, d, d] is written once and G read once. One exception: the float32
backward with sorted ids, d of 16 or 32 and short segments (tens of rows) runs persistent programs,
each over a run of consecutive segments, reading G_s and the segment's first rows through tensor
descriptors (TMA) in a software-pipelined loop, so the next segments' loads wait in shared memory while
this one is multiplied; rows past the first BLOCK_R of a longer segment follow in a second loop.
Ids out of [0, S) fall outside every segment of the sorted layout (the kernels never index with
them) and are refused after the kernels are queued, from the layout itself (one host read of two
numbers); while a CUDA graph is being captured no host read is possible, and the check is skipped.
"""

from __future__ import annotations

import torch

from kernels._launch import check_float, multiprocessor_count, next_power_of_2
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


def _check_layout(starts: torch.Tensor, segment_ids: torch.Tensor, num_segments: int) -> None:
    """Refuse ids outside [0, S): then the segments do not cover every row (starts[0] > 0 or starts[S] < N)."""
    if segment_ids.is_cuda and torch.cuda.is_current_stream_capturing():
        return  # no host read inside a capture (see the module docstring)
    first, last = starts[[0, -1]].tolist()  # one host sync, after the kernels are queued
    if first != 0 or last != segment_ids.numel():
        _check_id_range(segment_ids, num_segments)  # raises, naming the range found


def _segment_layout(segment_ids: torch.Tensor, num_segments: int, ids_sorted: bool):
    """(row order or None, CSR starts [S+1]): rows order[starts[s]:starts[s+1]] belong to segment s."""
    if ids_sorted:
        order, sorted_ids = None, segment_ids
    else:
        keys = segment_ids
        if num_segments < 2**31 - 1:  # 32-bit keys: half the radix passes of a 64-bit sort
            keys = keys.to(torch.int32)
        sorted_ids, order = torch.sort(keys, stable=True)
    n_rows = sorted_ids.numel()
    starts = torch.empty(num_segments + 1, dtype=torch.int64, device=segment_ids.device)
    # One pass over the ids: on an H200 8-9 us for 1M ids, where searchsorted of the S + 1 boundaries took 15-16.
    _segment_starts_kernel[(triton.cdiv(n_rows + 1, _STARTS_BLOCK),)](sorted_ids, starts, n_rows, num_segments,
                                                                     BLOCK=_STARTS_BLOCK, num_warps=4)
    return order, starts


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
    order, starts = _segment_layout(segment_ids, num_segments, ids_sorted)
    out = _SegmentSum.apply(values, segment_ids, order, starts)
    _check_layout(starts, segment_ids, num_segments)
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
    order, starts = _segment_layout(segment_ids, num_segments, ids_sorted)
    out = _SegmentOuterSum.apply(features, weights, order, starts)
    _check_layout(starts, segment_ids, num_segments)
    return out


try:
    import triton
    import triton.language as tl
except ImportError:  # kernels.dispatch refuses the Triton path without triton
    triton = None

if triton is not None:

    @triton.jit
    def _segment_starts_kernel(sorted_ids_ptr, starts_ptr, n_rows, num_segments, BLOCK: tl.constexpr):
        # starts[s] = how many ids are below s, for s in [0, S] (searchsorted's left side): position i in
        # [0, N] writes i for every s with ids[i - 1] < s <= ids[i], reading ids[-1] as -1 and ids[N] as S.
        # Each s is written exactly once; ids out of [0, S) leave starts[0] > 0 or starts[S] < N, which
        # _check_layout reads. A run of k empty segments costs its program k masked stores.
        positions = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        ids = tl.load(sorted_ids_ptr + positions, mask=positions < n_rows, other=num_segments).to(tl.int64)
        previous = tl.load(sorted_ids_ptr + positions - 1, mask=(positions >= 1) & (positions <= n_rows),
                           other=-1).to(tl.int64)
        first = tl.maximum(previous + 1, 0)
        count = tl.where(positions <= n_rows, tl.minimum(ids, num_segments) - first + 1, 0)
        longest = tl.max(count, axis=0)
        k = 0
        while k < longest:  # while: see _segment_sum_kernel
            tl.store(starts_ptr + first + k, positions.to(tl.int64), mask=k < count)
            k += 1

    @triton.jit
    def _segment_bounds(starts_ptr, segment):
        """(first, end): the segment's rows lie at sorted positions first .. end - 1."""
        return tl.load(starts_ptr + segment), tl.load(starts_ptr + segment + 1)

    @triton.jit
    def _load_chunk(table_ptr, order_ptr, first, end, cols, col_mask, n_cols, HAS_ORDER: tl.constexpr,
                    BLOCK_R: tl.constexpr):
        """The rows at sorted positions first .. first + BLOCK_R - 1 that lie before end: their ids (int64),
        mask, and [BLOCK_R, cols] tile of the table in float32 (masked rows read as 0)."""
        positions = first + tl.arange(0, BLOCK_R)
        row_mask = positions < end
        if HAS_ORDER:
            rows = tl.load(order_ptr + positions, mask=row_mask, other=0).to(tl.int64)
        else:
            rows = positions.to(tl.int64)
        tile = tl.load(table_ptr + rows[:, None] * n_cols + cols[None, :], mask=row_mask[:, None] & col_mask[None, :],
                       other=0.0).to(tl.float32)
        return rows, row_mask, tile

    @triton.jit
    def _segment_sum_kernel(
        values_ptr, order_ptr, starts_ptr, out_ptr, n_cols,
        HAS_ORDER: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        segment = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        col_mask = cols < n_cols
        acc = tl.zeros((BLOCK_R, BLOCK_D), dtype=tl.float32)
        first, end = _segment_bounds(starts_ptr, segment)
        # while, not for-range: Triton's interpreter cannot take a loaded scalar as a range bound.
        while first < end:
            acc += _load_chunk(values_ptr, order_ptr, first, end, cols, col_mask, n_cols, HAS_ORDER, BLOCK_R)[2]
            first += BLOCK_R
        out_offsets = segment.to(tl.int64) * n_cols + cols
        tl.store(out_ptr + out_offsets, tl.sum(acc, axis=0).to(out_ptr.dtype.element_ty), mask=col_mask)

    @triton.jit
    def _segment_outer_kernel(
        features_ptr, weights_ptr, order_ptr, starts_ptr, out_ptr, n_cols,
        HAS_ORDER: tl.constexpr, ONE_BLOCK: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        # Program (segment s, output tile i, j): the tile sum_r w_r x_ri x_rj over the segment's rows, in
        # registers, then one store.
        segment = tl.program_id(0)
        cols_i = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        cols_j = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
        mask_i, mask_j = cols_i < n_cols, cols_j < n_cols
        acc = tl.zeros((BLOCK_D, BLOCK_D), dtype=tl.float32)
        first, end = _segment_bounds(starts_ptr, segment)
        while first < end:  # while: see _segment_sum_kernel
            rows, row_mask, x_i = _load_chunk(features_ptr, order_ptr, first, end, cols_i, mask_i, n_cols, HAS_ORDER,
                                              BLOCK_R)
            row_offsets = rows[:, None] * n_cols
            if ONE_BLOCK:
                x_j = x_i
            else:
                x_j = tl.load(features_ptr + row_offsets + cols_j[None, :],
                              mask=row_mask[:, None] & mask_j[None, :], other=0.0).to(tl.float32)
            w = tl.load(weights_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)
            acc += tl.dot(tl.trans(x_i * w[:, None]), x_j, input_precision=PRECISION)
            first += BLOCK_R
        out_offsets = (segment.to(tl.int64) * n_cols + cols_i[:, None]) * n_cols + cols_j[None, :]
        tl.store(out_ptr + out_offsets, acc.to(out_ptr.dtype.element_ty), mask=mask_i[:, None] & mask_j[None, :])

    @triton.jit
    def _segment_outer_backward_kernel(
        grad_ptr, features_ptr, weights_ptr, order_ptr, starts_ptr, dfeatures_ptr, dweights_ptr, n_rows, n_cols,
        HAS_ORDER: tl.constexpr, ONE_BLOCK: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        # Program (segment s, output column block i), over the segment's rows in the sorted layout:
        # H = G_s + G_s^T from one coalesced read of G_s (a transposed second read made this kernel 2x
        # slower), and for each row
        #   (d x)_i = w (x H)_i,   d w = x^T G_s x = 1/2 x^T H x  (this column block's share).
        segment = tl.program_id(0)
        block_i = tl.program_id(1)
        cols_i = block_i * BLOCK_D + tl.arange(0, BLOCK_D)
        mask_i = cols_i < n_cols
        grad_base = grad_ptr + segment.to(tl.int64) * n_cols * n_cols
        if ONE_BLOCK:  # d fits one tile: H once per segment, in registers
            g = tl.load(grad_base + cols_i[:, None] * n_cols + cols_i[None, :],
                        mask=mask_i[:, None] & mask_i[None, :], other=0.0).to(tl.float32)
            h_tile = g + tl.trans(g)
        first, end = _segment_bounds(starts_ptr, segment)
        while first < end:  # while: see _segment_sum_kernel
            rows, row_mask, x_i = _load_chunk(features_ptr, order_ptr, first, end, cols_i, mask_i, n_cols, HAS_ORDER,
                                              BLOCK_R)
            row_offsets = rows[:, None] * n_cols
            if ONE_BLOCK:
                xh = tl.dot(x_i, h_tile, input_precision=PRECISION)
            else:
                xh = tl.zeros((BLOCK_R, BLOCK_D), dtype=tl.float32)
                first_j = 0
                while first_j < n_cols:
                    cols_j = first_j + tl.arange(0, BLOCK_D)
                    mask_j = cols_j < n_cols
                    x_j = tl.load(features_ptr + row_offsets + cols_j[None, :],
                                  mask=row_mask[:, None] & mask_j[None, :], other=0.0).to(tl.float32)
                    # H[j, i] = G[j, i] + G[i, j]^T, both tiles read row-major (coalesced).
                    g_ji = tl.load(grad_base + cols_j[:, None] * n_cols + cols_i[None, :],
                                   mask=mask_j[:, None] & mask_i[None, :], other=0.0).to(tl.float32)
                    g_ij = tl.load(grad_base + cols_i[:, None] * n_cols + cols_j[None, :],
                                   mask=mask_i[:, None] & mask_j[None, :], other=0.0).to(tl.float32)
                    xh += tl.dot(x_j, g_ji + tl.trans(g_ij), input_precision=PRECISION)
                    first_j += BLOCK_D
            w = tl.load(weights_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)
            tl.store(dfeatures_ptr + row_offsets + cols_i[None, :], (w[:, None] * xh).to(dfeatures_ptr.dtype.element_ty),
                     mask=row_mask[:, None] & mask_i[None, :])
            # One column block: d w itself. Several: their shares, summed in a fixed order afterwards.
            tl.store(dweights_ptr + block_i.to(tl.int64) * n_rows + rows,
                     (0.5 * tl.sum(x_i * xh, axis=1)).to(dweights_ptr.dtype.element_ty), mask=row_mask)
            first += BLOCK_R

    @triton.jit
    def _rows_through_descriptor(features_desc, first, end, BLOCK_R: tl.constexpr):
        """The rows at sorted positions first .. first + BLOCK_R - 1 through a tensor descriptor (rows past N
        read as 0): positions, mask (before end), and the float32 tile with the rows from end on zeroed."""
        positions = first + tl.arange(0, BLOCK_R)
        row_mask = positions < end
        tile = features_desc.load([first.to(tl.int32), 0]).to(tl.float32)
        return positions, row_mask, tl.where(row_mask[:, None], tile, 0.0)

    @triton.jit
    def _outer_backward_rows(features_desc, weights_ptr, dfeatures_ptr, dweights_ptr, h_tile, first, end,
                             BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
        # d x = w (x H) and d w = 1/2 x^T H x for the (up to BLOCK_R) rows first .. end - 1.
        rows, row_mask, x = _rows_through_descriptor(features_desc, first, end, BLOCK_R)
        w = tl.load(weights_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)
        xh = tl.dot(x, h_tile, input_precision=PRECISION)
        cols = tl.arange(0, BLOCK_D)
        tl.store(dfeatures_ptr + rows.to(tl.int64)[:, None] * BLOCK_D + cols[None, :],
                 (w[:, None] * xh).to(dfeatures_ptr.dtype.element_ty), mask=row_mask[:, None])
        tl.store(dweights_ptr + rows, (0.5 * tl.sum(x * xh, axis=1)).to(dweights_ptr.dtype.element_ty), mask=row_mask)

    @triton.jit
    def _outer_backward_first_rows(grad_desc, features_desc, weights_ptr, starts_ptr, dfeatures_ptr, dweights_ptr,
                                   segment, num_segments, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
                                   PRECISION: tl.constexpr):
        # A segment past S (the last program's run may pass it) reads starts[S] twice: no rows, no stores.
        first = tl.load(starts_ptr + tl.minimum(segment, num_segments))
        end = tl.load(starts_ptr + tl.minimum(segment + 1, num_segments))
        g = grad_desc.load([segment * BLOCK_D, 0]).to(tl.float32)
        _outer_backward_rows(features_desc, weights_ptr, dfeatures_ptr, dweights_ptr, g + tl.trans(g), first, end,
                             BLOCK_R, BLOCK_D, PRECISION)

    @triton.jit
    def _segment_outer_backward_pipelined_kernel(
        grad_desc, features_desc, weights_ptr, starts_ptr, dfeatures_ptr, dweights_ptr, num_segments, run_length,
        BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr, STAGES: tl.constexpr,
        PIPELINED: tl.constexpr, SCAN: tl.constexpr,
    ):
        # The backward above, for sorted rows and d = BLOCK_D, over segments first_segment .. + run_length - 1:
        # first each segment's first BLOCK_R rows in a pipelined loop (G_s and the rows through TMA into shared
        # memory, STAGES - 1 segments ahead), then the rows past BLOCK_R of longer segments.
        first_segment = tl.program_id(0) * run_length
        if PIPELINED:
            for i in tl.range(0, run_length, num_stages=STAGES):
                _outer_backward_first_rows(grad_desc, features_desc, weights_ptr, starts_ptr, dfeatures_ptr,
                                           dweights_ptr, first_segment + i, num_segments, BLOCK_R, BLOCK_D, PRECISION)
        else:  # Triton's interpreter cannot take a run-time scalar as a range bound
            i = 0
            while i < run_length:
                _outer_backward_first_rows(grad_desc, features_desc, weights_ptr, starts_ptr, dfeatures_ptr,
                                           dweights_ptr, first_segment + i, num_segments, BLOCK_R, BLOCK_D, PRECISION)
                i += 1
        # Longer segments: their lengths read SCAN at a time, and only a block holding one walks its segments.
        last_segment = tl.minimum(first_segment + run_length, num_segments)
        block = first_segment
        while block < last_segment:
            segments = block + tl.arange(0, SCAN)
            in_run = segments < last_segment
            lengths = (tl.load(starts_ptr + segments + 1, mask=in_run, other=0)
                       - tl.load(starts_ptr + segments, mask=in_run, other=0))
            segment = block
            block += SCAN
            while (segment < tl.minimum(block, last_segment)) & (tl.max(lengths, axis=0) > BLOCK_R):
                first = tl.load(starts_ptr + segment) + BLOCK_R
                end = tl.load(starts_ptr + segment + 1)
                if first < end:
                    g = grad_desc.load([segment * BLOCK_D, 0]).to(tl.float32)
                    h_tile = g + tl.trans(g)
                    while first < end:
                        _outer_backward_rows(features_desc, weights_ptr, dfeatures_ptr, dweights_ptr, h_tile, first,
                                             end, BLOCK_R, BLOCK_D, PRECISION)
                        first += BLOCK_R
                segment += 1

    from triton.tools.tensor_descriptor import TensorDescriptor


_STARTS_BLOCK = 1024
# The pipelined float32 backward (H200 sweep, N = 1M, d = 32, S = 100k, 2026-11-30): 16-row first chunks,
# 3 stages, one warp; 168 registers and 16.5 KB of shared memory per program leave room for 12 programs on
# a multiprocessor, and one wave of exactly that many ran best (203 us; 8 per SM 220, 13 per SM 275: a
# second wave; the one-segment-per-program kernel 254).
_PIPELINED_ROWS, _PIPELINED_STAGES, _PIPELINED_PROGRAMS_PER_SM = 16, 3, 12


def _outer_block_rows(n_rows: int, num_segments: int) -> int:
    # Rows per step: 16 for segments of ~10 rows (32-row steps were 1.6x slower there), 32 for longer ones.
    return 32 if n_rows >= 32 * max(1, num_segments) else 16


def _block_d(n_cols: int, cap: int) -> int:
    return min(cap, max(16, next_power_of_2(n_cols)))


def _outer_launch(n_rows: int, n_cols: int, num_segments: int, float32: bool, backward: bool):
    """(column blocks, block_d, block_rows, precision, warps) of the outer-sum kernels.

    One program per segment: segments are short (tens of rows), so many small programs must be resident
    to keep enough independent loads in flight. An H200 sweep at the benchmark's shapes (d = 32 float32,
    d = 16 bfloat16; 1 / 2 / 4 warps, 16 / 32 / 64-row steps, IEEE / tf32x3 products) chose one warp (the
    float32 forward with a register cap, below); tf32x3 in the float32 backward (255 us
    at one warp, where IEEE took 302 at its best, two warps; 2e-7 relative from IEEE), IEEE in the float32
    forward (tf32x3: 225 us). Tiles wider than 32 were not swept and keep two warps and IEEE. 16-bit
    inputs: one tf32 product on tensor cores (their values are exact in tf32, only w x rounds, to 2^-11);
    tf32 alone would cost ~1e-3 on a float32 Hessian. Also tried on the H200 and not kept: programs that
    own 2-8 segments as one batched 3-D product (slower), and persistent programs that load the next
    segment while summing this one (Triton 3.6 failed to compile them for float32 d = 32; no faster for
    bfloat16 d = 16). The pipelined TMA programs of the float32 backward (_use_pipelined_backward) were
    slower for bfloat16 d = 16 (segments of ~100 rows: 39 us against 33) and as a forward (177 us at best).
    """
    block_d = _block_d(n_cols, 64)
    narrow = block_d <= 32
    if not float32:
        precision = "tf32"
    else:
        precision = "tf32x3" if backward and narrow else "ieee"
    warps = 1 if narrow else 2
    # The float32 forward on one warp needs 160 registers (12 programs a multiprocessor); capped at 80 (25
    # programs, some values spilled to L1) it took 159 us where two warps took 166 (72: 182, 88-104: 161).
    registers = {"maxnreg": 80} if narrow and float32 and not backward else {}
    return triton.cdiv(n_cols, block_d), block_d, _outer_block_rows(n_rows, num_segments), precision, warps, registers


def _use_pipelined_backward(features: torch.Tensor, grad: torch.Tensor, has_order: bool) -> bool:
    """The pipelined backward: sorted float32 rows, d of 16 or 32, segments of about BLOCK_R rows or fewer
    on average (the shape it was measured at), and what tensor descriptors need (16-byte aligned bases,
    int32 coordinates). On a CUDA device, only Hopper or newer (sm_90+: the TMA copies it was built for)."""
    (n_rows, n_cols), num_segments = features.shape, grad.shape[0]
    return (not has_order and features.dtype == grad.dtype == torch.float32 and n_cols in (16, 32) and n_rows < 2**31
            and n_rows <= _PIPELINED_ROWS * num_segments and num_segments * n_cols < 2**31
            and features.data_ptr() % 16 == 0 and grad.data_ptr() % 16 == 0
            and (not features.is_cuda or torch.cuda.get_device_capability(features.device) >= (9, 0)))


class _SegmentSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, segment_ids, order, starts):
        values_c = values.contiguous()
        num_segments, n_cols = starts.numel() - 1, values_c.shape[1]
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
    def forward(ctx, features, weights, order, starts):
        features_c, weights_c = features.contiguous(), weights.contiguous()
        (n_rows, n_cols), num_segments = features_c.shape, starts.numel() - 1
        out = torch.empty((num_segments, n_cols, n_cols), dtype=features.dtype, device=features.device)
        float32 = torch.float32 in (features.dtype, weights.dtype)
        n_blocks, block_d, block_rows, precision, warps, registers = _outer_launch(n_rows, n_cols, num_segments,
                                                                                   float32, backward=False)
        order_arg = order if order is not None else starts  # never read when HAS_ORDER is False
        _segment_outer_kernel[(num_segments, n_blocks, n_blocks)](
            features_c, weights_c, order_arg, starts, out, n_cols, HAS_ORDER=order is not None,
            ONE_BLOCK=n_blocks == 1, BLOCK_R=block_rows, BLOCK_D=block_d, PRECISION=precision, num_warps=warps,
            **registers,
        )
        # The backward reuses the sorted layout: no second sort.
        ctx.save_for_backward(features_c, weights_c, order_arg, starts)
        ctx.has_order = order is not None
        ctx.weights_dtype = weights.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        features, weights, order, starts = ctx.saved_tensors
        (n_rows, n_cols), num_segments = features.shape, starts.numel() - 1
        grad = grad_out.contiguous()
        float32 = torch.float32 in (features.dtype, weights.dtype, grad.dtype)
        n_blocks, block_d, block_rows, precision, warps, registers = _outer_launch(n_rows, n_cols, num_segments,
                                                                                   float32, backward=True)
        dfeatures = torch.empty_like(features)
        # One column block writes d w directly; several write float32 shares, summed below in a fixed order.
        dweights = torch.empty((n_blocks, n_rows), device=features.device,
                               dtype=ctx.weights_dtype if n_blocks == 1 else torch.float32)
        if n_rows and _use_pipelined_backward(features, grad, ctx.has_order):
            programs = min(num_segments, _PIPELINED_PROGRAMS_PER_SM * multiprocessor_count(features.device))
            run_length = triton.cdiv(num_segments, programs)
            _segment_outer_backward_pipelined_kernel[(triton.cdiv(num_segments, run_length),)](
                TensorDescriptor.from_tensor(grad.view(num_segments * n_cols, n_cols), [n_cols, n_cols]),
                TensorDescriptor.from_tensor(features, [_PIPELINED_ROWS, n_cols]), weights, starts, dfeatures,
                dweights, num_segments, run_length, BLOCK_R=_PIPELINED_ROWS, BLOCK_D=n_cols, PRECISION=precision,
                STAGES=_PIPELINED_STAGES, PIPELINED=features.is_cuda, SCAN=64, num_warps=1,
            )
        elif n_rows:
            _segment_outer_backward_kernel[(num_segments, n_blocks)](
                grad, features, weights, order, starts, dfeatures, dweights, n_rows, n_cols,
                HAS_ORDER=ctx.has_order, ONE_BLOCK=n_blocks == 1, BLOCK_R=block_rows, BLOCK_D=block_d,
                PRECISION=precision, num_warps=warps, **registers,
            )
        dweights = dweights[0] if n_blocks == 1 else dweights.sum(dim=0).to(ctx.weights_dtype)
        return dfeatures, dweights, None, None
