"""Embedding bags whose sparse optimiser runs inside the backward (FBGEMM TBE's "optimizer fused
into backward", arXiv 2104.05158 sec. 4; the EXACT_ROWWISE_ADAGRAD rule).

Forward, for bag b holding positions offsets[b] .. offsets[b+1]-1 of `indices`:

    out[b] = scale_b * sum_{p in bag b} W[indices[p]],   scale_b = 1 (mode "sum") or 1/|bag b| ("mean", 0 if empty)

Backward never materialises dW. For each row r that occurs in the batch (duplicates, within a
bag or across bags, are accumulated first, in a fixed order, so the update is deterministic):

    g_r  = sum_{p: indices[p] = r} scale_{bag(p)} * grad_out[bag(p)]  [+ lambda W[r]: optional L2, touched rows only]
    m_r += mean_k g_r[k]^2                               (one float32 accumulator per row)
    W[r] -= lr * g_r / (sqrt(m_r) + eps)

Rows absent from the batch are not touched (their m_r and W[r] stay as they are), which is what
makes the step cheap: the cost scales with the batch, not with the table. The weights are a
buffer, not an nn.Parameter, so a dense optimiser built from model.parameters() never sees them;
they are updated in place during loss.backward(). The update happens once per backward through
each forward call; under torch.no_grad() or in eval mode the module is a plain embedding bag.

Offsets are CSR style: offsets has B + 1 entries, offsets[0] = 0 and offsets[B] = len(indices)
(torch.nn.functional.embedding_bag's include_last_offset=True), except for padding: offsets[0] may
be above 0 when the positions before it hold -1. Index -1 is "no row": it adds nothing to a bag
(a mean still counts it), and the update neither reads nor changes a row for it. Positions before
offsets[0] are in no bag at all. offsets=None means every index is a bag of its own (single-valued
features, out[b] = W[indices[b]], a zero row for -1): the forward is then a plain row gather, many
rows per program, instead of one program per bag. Several tables share one module
by adding each table's row offset to its indices (as TBE does); rows of one bag may repeat.

Data-parallel training (`process_group`): the tables are replicated, and every rank must apply the
same update. The backward then gathers every rank's (indices, offsets, grad_out) over the group, in
rank order, and applies the rule above once to the concatenated batch with grad_out / world_size,
the mean over ranks, as the dense gradients are averaged. Every rank must pass the same shapes; the
gather is then fixed-size, with no host synchronisation, and can be captured in a CUDA graph.

Padding to a fixed shape (CUDA graphs, collectives): spare bags go last, empty (or of -1 with
offsets=None), for weight-0 rows (their gradients are 0); spare positions go first, as -1 before
offsets[0]. A padded step is then exactly the unpadded one, the L2 of touched rows included (a
padding row pointing at row 0 would have decayed row 0 at every step). Spare positions at the end
would form one long bag, which its program walks alone, one step after another (0.78 ms a call at
the demo's 8192-row batches on an H200, four a step, of the step's 5.5 ms of GPU time).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from kernels._launch import next_power_of_2
from kernels.dispatch import use_triton

MODES = ("sum", "mean")


def embedding_bag_reference(
    weight: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor, mode: str = "sum"
) -> torch.Tensor:
    """Plain PyTorch embedding bag with CSR offsets ([B + 1]); output in the table's dtype.

    Padding (module doc): positions before offsets[0] are dropped, and index -1 adds nothing.
    """
    start = int(offsets[0])
    indices, offsets = indices[start:].long(), (offsets - start).long()
    live = indices >= 0
    if bool(live.all()):
        return F.embedding_bag(indices, weight, offsets, mode=mode, include_last_offset=True)
    sums = F.embedding_bag(indices.clamp(min=0), weight, offsets, mode="sum", include_last_offset=True,
                           per_sample_weights=live.to(weight.dtype))
    return sums if mode == "sum" else sums / (offsets[1:] - offsets[:-1]).clamp(min=1).to(sums.dtype)[:, None]


def _bag_of_positions(offsets: torch.Tensor, n_positions: int) -> torch.Tensor:
    positions = torch.arange(n_positions, device=offsets.device)
    return torch.searchsorted(offsets.long(), positions, right=True) - 1


def _bag_scale(offsets: torch.Tensor, mode: str) -> torch.Tensor:
    lengths = (offsets[1:] - offsets[:-1]).float()
    if mode == "sum":
        return torch.ones_like(lengths)
    return torch.where(lengths > 0, 1.0 / lengths.clamp(min=1.0), torch.zeros_like(lengths))


def rowwise_adagrad_reference(
    weight: torch.Tensor, momentum: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor,
    grad_output: torch.Tensor, mode: str, lr: float, eps: float, weight_decay: float = 0.0,
) -> None:
    """Plain PyTorch row-wise Adagrad step on the rows in the batch, in place (see module docstring)."""
    bag = _bag_of_positions(offsets, indices.numel())
    live = indices >= 0  # -1: a padding position, no row (module doc)
    indices, bag = indices[live], bag[live]
    contributions = grad_output.float()[bag] * _bag_scale(offsets, mode)[bag, None]
    rows, inverse = torch.unique(indices.long(), return_inverse=True)
    row_grad = torch.zeros((rows.numel(), weight.shape[1]), dtype=torch.float32, device=weight.device)
    row_grad.index_add_(0, inverse, contributions)
    if weight_decay:
        row_grad += weight_decay * weight[rows].float()
    row_momentum = momentum[rows] + row_grad.pow(2).mean(dim=1)
    momentum[rows] = row_momentum
    step = lr * row_grad / (row_momentum.sqrt() + eps)[:, None]
    weight[rows] = (weight[rows].float() - step).to(weight.dtype)


try:
    import triton
    import triton.language as tl
except ImportError:  # kernels.dispatch refuses the Triton path without triton
    triton = None

if triton is not None:

    @triton.jit
    def _bag_forward_kernel(
        weight_ptr, indices_ptr, offsets_ptr, out_ptr, n_bags, dim,
        MEAN: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        # BLOCK_B bags per program, BLOCK_L positions of each per step: a [bags, positions, dim] tile of
        # independent row loads in flight (one program per short bag left the chip waiting on latency).
        bags = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
        bag_mask = bags < n_bags
        cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        col_mask = cols < dim
        starts = tl.load(offsets_ptr + bags, mask=bag_mask, other=0)
        lengths = tl.where(bag_mask, tl.load(offsets_ptr + bags + 1, mask=bag_mask, other=0) - starts, 0)
        longest = tl.max(lengths, axis=0)
        acc = tl.zeros((BLOCK_B, BLOCK_D), dtype=tl.float32)
        first = 0
        # while, not for-range: Triton's interpreter cannot take a loaded scalar as a range bound.
        while first < longest:
            steps = first + tl.arange(0, BLOCK_L)
            in_bag = steps[None, :] < lengths[:, None]
            rows = tl.load(indices_ptr + starts[:, None] + steps[None, :], mask=in_bag, other=-1).to(tl.int64)
            values = tl.load(weight_ptr + rows[:, :, None] * dim + cols[None, None, :],
                             mask=(rows >= 0)[:, :, None] & col_mask[None, None, :], other=0.0)
            acc += tl.sum(values.to(tl.float32), axis=1)
            first += BLOCK_L
        if MEAN:
            acc = acc / tl.maximum(lengths, 1).to(tl.float32)[:, None]
        tl.store(out_ptr + bags.to(tl.int64)[:, None] * dim + cols[None, :], acc.to(out_ptr.dtype.element_ty),
                 mask=bag_mask[:, None] & col_mask[None, :])

    @triton.jit
    def _gather_rows_kernel(weight_ptr, indices_ptr, out_ptr, n_indices, dim,
                            BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
        positions = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        valid = positions < n_indices
        rows = tl.load(indices_ptr + positions, mask=valid, other=-1).to(tl.int64)
        cols = tl.arange(0, BLOCK_D)
        mask = valid[:, None] & (cols < dim)[None, :]
        values = tl.load(weight_ptr + rows[:, None] * dim + cols[None, :], mask=mask & (rows >= 0)[:, None], other=0.0)
        tl.store(out_ptr + positions.to(tl.int64)[:, None] * dim + cols[None, :], values, mask=mask)

    @triton.jit
    def _bag_of_position_kernel(offsets_ptr, out_ptr, n_bags, BLOCK_B: tl.constexpr, BLOCK_L: tl.constexpr):
        # out[p] = b for every position p of bag b: the [bags, positions] tiles of _bag_forward_kernel.
        bags = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
        bag_mask = bags < n_bags
        starts = tl.load(offsets_ptr + bags, mask=bag_mask, other=0)
        lengths = tl.where(bag_mask, tl.load(offsets_ptr + bags + 1, mask=bag_mask, other=0) - starts, 0)
        longest = tl.max(lengths, axis=0)
        first = 0
        while first < longest:  # while: see _bag_forward_kernel
            steps = first + tl.arange(0, BLOCK_L)
            in_bag = steps[None, :] < lengths[:, None]
            tl.store(out_ptr + starts[:, None] + steps[None, :], (bags[:, None] + 0 * steps[None, :]).to(out_ptr.dtype.element_ty),
                     mask=in_bag)
            first += BLOCK_L

    @triton.jit
    def _segmented_add(value_a, start_a, value_b, start_b):
        # Segmented sum: a segment start on the right drops everything to its left.
        return tl.where(start_b != 0, value_b, value_a + value_b), start_a | start_b

    @triton.jit
    def _rowwise_adagrad_chunk_kernel(
        sorted_rows_ptr, sorted_bags_ptr, offsets_ptr, grad_ptr, weight_ptr, momentum_ptr,
        head_partial_ptr, tail_partial_ptr, n_positions, dim, lr, eps, weight_decay,
        MEAN: tl.constexpr, CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, DECAY: tl.constexpr,
    ):
        # CHUNK sorted positions per program: their contributions g[bag(p)] are gathered at once and summed
        # per run of equal rows by a segmented scan (a fixed order: deterministic). A run that starts and
        # ends in the chunk is applied here. Of a run that crosses a chunk edge, this chunk writes its
        # share: the chunk's first segment when the run began earlier (head partial), its last segment
        # when the run began here and goes on (tail partial); _rowwise_adagrad_spill_kernel adds them up.
        # Sorted position p holds row sorted_rows[p] of bag sorted_bags[p].
        chunk = tl.program_id(0)
        local = tl.arange(0, CHUNK)
        positions = chunk.to(tl.int64) * CHUNK + local
        valid = positions < n_positions
        row = tl.load(sorted_rows_ptr + positions, mask=valid, other=-1)
        previous = tl.load(sorted_rows_ptr + positions - 1, mask=valid & (positions > 0), other=-1)
        following = tl.load(sorted_rows_ptr + positions + 1, mask=positions + 1 < n_positions, other=-1)
        run_head = valid & (previous != row)
        run_end = valid & (following != row)
        segment_start = run_head | (local == 0)
        cols = tl.arange(0, BLOCK_D)
        col_mask = cols < dim
        live = valid & (row >= 0)  # row -1: a padding position in no bag (its bag entry is not written)
        bag = tl.load(sorted_bags_ptr + positions, mask=live, other=0).to(tl.int64)
        values = tl.load(grad_ptr + bag[:, None] * dim + cols[None, :], mask=live[:, None] & col_mask[None, :],
                         other=0.0).to(tl.float32)
        if MEAN:
            length = tl.load(offsets_ptr + bag + 1, mask=live, other=1) - tl.load(offsets_ptr + bag, mask=live, other=0)
            values = values / tl.maximum(length, 1).to(tl.float32)[:, None]
        starts_2d = tl.broadcast_to(segment_start.to(tl.int32)[:, None], (CHUNK, BLOCK_D))
        sums, _ = tl.associative_scan((values, starts_2d), 0, _segmented_add)
        # Lanes of the chunk's first segment, and whether that segment began a run here.
        in_first_segment = tl.cumsum(segment_start.to(tl.int32), axis=0) == 1
        chunk_starts_run = tl.sum(tl.where(local == 0, run_head.to(tl.int32), 0), axis=0) > 0
        began_here = ~in_first_segment | chunk_starts_run
        last_lane = valid & ((local == CHUNK - 1) | (positions == n_positions - 1))
        complete = run_end & began_here & (row >= 0)
        weight_offsets = row.to(tl.int64)[:, None] * dim + cols[None, :]
        update = complete[:, None] & col_mask[None, :]
        # With DECAY the weight is loaded before the momentum (g + lambda W feeds both); without it the load
        # stays where it was measured, after the momentum store.
        if DECAY:  # the complete runs' rows (0 elsewhere: the partials stay pure gradient sums)
            weight = tl.load(weight_ptr + weight_offsets, mask=update, other=0.0).to(tl.float32)
            sums += weight_decay * weight
        momentum = tl.load(momentum_ptr + row, mask=complete, other=0.0) + tl.sum(sums * sums, axis=1) / dim
        tl.store(momentum_ptr + row, momentum, mask=complete)
        if not DECAY:
            weight = tl.load(weight_ptr + weight_offsets, mask=update, other=0.0).to(tl.float32)
        weight -= lr * sums / (tl.sqrt(momentum) + eps)[:, None]
        tl.store(weight_ptr + weight_offsets, weight.to(weight_ptr.dtype.element_ty), mask=update)
        partial_offsets = chunk.to(tl.int64) * dim + cols[None, :]
        head_lane = in_first_segment & ~chunk_starts_run & (run_end | last_lane)
        tl.store(head_partial_ptr + partial_offsets + 0 * local[:, None], sums,
                 mask=head_lane[:, None] & col_mask[None, :])
        tail_lane = last_lane & ~run_end & began_here
        tl.store(tail_partial_ptr + partial_offsets + 0 * local[:, None], sums,
                 mask=tail_lane[:, None] & col_mask[None, :])

    @triton.jit
    def _rowwise_adagrad_spill_kernel(
        sorted_rows_ptr, weight_ptr, momentum_ptr, head_partial_ptr, tail_partial_ptr, n_positions, dim, lr, eps,
        weight_decay, CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr, DECAY: tl.constexpr,
    ):
        # Chunk c owns the run that begins in it and goes past its end: its tail partial, plus the head
        # partial of every following chunk the run reaches, BLOCK_C chunks per step: a hot row spans
        # hundreds of chunks, and one dependent load per chunk kept this kernel at 55 us (now 12 us) at
        # 1.7M skewed positions on an H200.
        # Rows are sorted, so the chunks the run reaches are a prefix of each step's BLOCK_C.
        chunk = tl.program_id(0)
        last = (chunk.to(tl.int64) + 1) * CHUNK - 1
        if last + 1 < n_positions:
            row = tl.load(sorted_rows_ptr + last)
            before = tl.load(sorted_rows_ptr + tl.maximum(chunk.to(tl.int64) * CHUNK - 1, 0))
            began_here = (chunk == 0) | (before != row)
            if began_here & (row >= 0) & (tl.load(sorted_rows_ptr + last + 1) == row):
                cols = tl.arange(0, BLOCK_D)
                col_mask = cols < dim
                row_grad = tl.load(tail_partial_ptr + chunk.to(tl.int64) * dim + cols, mask=col_mask, other=0.0)
                following = chunk.to(tl.int64) + 1 + tl.arange(0, BLOCK_C)
                goes_on = True
                while goes_on:
                    first_position = following * CHUNK
                    reached = first_position < n_positions
                    reached = reached & (tl.load(sorted_rows_ptr + first_position, mask=reached, other=-1) == row)
                    heads = tl.load(head_partial_ptr + following[:, None] * dim + cols[None, :],
                                    mask=reached[:, None] & col_mask[None, :], other=0.0)
                    row_grad += tl.sum(heads, axis=0)
                    goes_on = tl.sum(reached.to(tl.int32), axis=0) == BLOCK_C
                    following += BLOCK_C
                weight_offsets = row.to(tl.int64) * dim + cols
                if DECAY:
                    weight = tl.load(weight_ptr + weight_offsets, mask=col_mask, other=0.0).to(tl.float32)
                    row_grad += weight_decay * weight
                momentum = tl.load(momentum_ptr + row) + tl.sum(row_grad * row_grad, axis=0) / dim
                tl.store(momentum_ptr + row, momentum)
                if not DECAY:
                    weight = tl.load(weight_ptr + weight_offsets, mask=col_mask, other=0.0).to(tl.float32)
                weight -= lr * row_grad / (tl.sqrt(momentum) + eps)
                tl.store(weight_ptr + weight_offsets, weight.to(weight_ptr.dtype.element_ty), mask=col_mask)


def _embedding_bag_triton(weight, indices, offsets, mode, single=False):
    n_bags, dim = offsets.numel() - 1, weight.shape[1]
    out = torch.empty((n_bags, dim), dtype=weight.dtype, device=weight.device)
    if n_bags == 0:
        return out
    if single:  # bags of one (sum and mean agree): gather ~2048 values per program
        block_d = max(16, next_power_of_2(dim))
        block_r = max(1, 2048 // block_d)
        _gather_rows_kernel[(triton.cdiv(n_bags, block_r),)](weight, indices, out, n_bags, dim,
                                                            BLOCK_R=block_r, BLOCK_D=block_d, num_warps=4)
        return out
    mean_length = max(1, indices.numel() // n_bags)
    block_l = min(16, next_power_of_2(mean_length))
    block_d = min(256, max(16, next_power_of_2(dim)))
    # Row values in flight per program, two warps: the best of 2048-16384 values x 2-16 warps on an H200
    # (26 one-hot x 65536: 221 us where 4096 x 8 warps took 240; 8192 bags of 20: 18.6 us where it took 31.6).
    # Bags of ~1 on one warp: 215 us where two warps took 221 (4096 values on one warp: 275).
    values, warps = (2048, 1) if block_l == 1 else (4096, 2)
    block_b = max(1, values // (block_l * block_d))
    grid = (triton.cdiv(n_bags, block_b), triton.cdiv(dim, block_d))
    _bag_forward_kernel[grid](weight, indices, offsets, out, n_bags, dim, MEAN=mode == "mean", BLOCK_B=block_b,
                              BLOCK_L=block_l, BLOCK_D=block_d, num_warps=warps)
    return out


# Contribution values gathered per program of the backward (chunk of sorted positions x padded dim), on
# one warp per 2048 values: on an H200, 2048 x 1 warp took 313 us at 26 one-hot x 65536 where 8192 x 4 took 465.
_CHUNK_VALUES = 2048
# The update's one warp needs 209 registers uncapped (9 programs per multiprocessor); capped at 160 (a few values
# spill), 12 fit: 276 -> 257 us at 26 one-hot x 65536 on an H200 (capped at 128, 96, 80: 321, 536, 703 us).
_UPDATE_REGISTERS = 160
# Following chunks' head partials a spill program adds per step (BLOCK_C x padded dim values).
_SPILL_CHUNKS = 32


def _rowwise_adagrad_triton(weight, momentum, indices, offsets, grad_output, mode, lr, eps, single=False,
                            weight_decay=0.0):
    n_positions, dim = indices.numel(), weight.shape[1]
    if n_positions == 0:
        return
    keys = indices.to(torch.int32) if weight.shape[0] < 2**31 else indices  # 32-bit keys: half the radix passes
    sorted_rows, order = torch.sort(keys, stable=True)
    if single:  # bags of one: position p is bag p
        sorted_bags = order
    else:  # a map written once (a search of offsets per position, or repeat_interleave, was far slower)
        n_bags = offsets.numel() - 1
        bag_dtype = torch.int32 if n_bags < 2**31 else torch.int64
        bag_of_position = torch.empty(n_positions, dtype=bag_dtype, device=indices.device)
        block_l = min(16, next_power_of_2(max(1, n_positions // max(1, n_bags))))
        block_b = max(1, 2048 // block_l)
        _bag_of_position_kernel[(triton.cdiv(n_bags, block_b),)](offsets, bag_of_position, n_bags, BLOCK_B=block_b,
                                                                 BLOCK_L=block_l, num_warps=4)
        # Bags in sorted order, gathered once: the update kernel then reads them in order instead of through
        # order (one dependent load less per position: 313 -> 276 us at 26 one-hot x 65536 on an H200).
        sorted_bags = bag_of_position[order]
    block_d = max(16, next_power_of_2(dim))
    chunk = max(16, _CHUNK_VALUES // block_d)
    n_chunks = triton.cdiv(n_positions, chunk)
    head_partial = torch.empty((n_chunks, dim), dtype=torch.float32, device=weight.device)
    tail_partial = torch.empty((n_chunks, dim), dtype=torch.float32, device=weight.device)
    grad = grad_output.contiguous()
    _rowwise_adagrad_chunk_kernel[(n_chunks,)](
        sorted_rows, sorted_bags, offsets, grad, weight, momentum, head_partial, tail_partial,
        n_positions, dim, float(lr), float(eps), float(weight_decay), MEAN=mode == "mean", CHUNK=chunk,
        BLOCK_D=block_d, DECAY=weight_decay != 0, num_warps=max(1, chunk * block_d // 2048),
        maxnreg=_UPDATE_REGISTERS,
    )
    if n_chunks > 1:
        _rowwise_adagrad_spill_kernel[(n_chunks - 1,)](
            sorted_rows, weight, momentum, head_partial, tail_partial, n_positions, dim, float(lr), float(eps),
            float(weight_decay), CHUNK=chunk, BLOCK_D=block_d, BLOCK_C=_SPILL_CHUNKS, DECAY=weight_decay != 0,
            num_warps=1,
        )


def gather_bags(indices: torch.Tensor, offsets: torch.Tensor, grad_output: torch.Tensor,
                group) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every rank's bags, concatenated in rank order: (indices, CSR offsets, grad_output / world_size).

    Ranks must pass equal shapes (module doc). Rank r's offsets are shifted by r * len(indices).
    """
    world = dist.get_world_size(group)

    def gather(tensor: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor.contiguous(), group=group)
        return torch.cat(parts)

    shift = torch.arange(world, device=offsets.device, dtype=offsets.dtype) * indices.numel()
    starts = (gather(offsets[:-1]).view(world, -1) + shift.unsqueeze(1)).reshape(-1)
    all_offsets = torch.cat([starts, offsets.new_full((1,), world * indices.numel())])
    return gather(indices), all_offsets, gather(grad_output) / world


class _FusedEmbeddingBagFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, anchor, weight, momentum, indices, offsets, mode, lr, eps, single, weight_decay, group):
        ctx.triton = use_triton(weight, indices, offsets)
        if ctx.triton:
            out = _embedding_bag_triton(weight, indices, offsets, mode, single)
        else:
            out = embedding_bag_reference(weight, indices, offsets, mode)
        ctx.save_for_backward(weight, momentum, indices, offsets)
        ctx.mode, ctx.lr, ctx.eps, ctx.single, ctx.weight_decay = mode, lr, eps, single, weight_decay
        ctx.group = group
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        weight, momentum, indices, offsets = ctx.saved_tensors
        if ctx.group is not None:
            indices, offsets, grad_output = gather_bags(indices, offsets, grad_output, ctx.group)
        with torch.no_grad():
            if ctx.triton:
                _rowwise_adagrad_triton(weight, momentum, indices, offsets, grad_output, ctx.mode, ctx.lr, ctx.eps,
                                        ctx.single, ctx.weight_decay)
            else:
                rowwise_adagrad_reference(weight, momentum, indices, offsets, grad_output, ctx.mode, ctx.lr, ctx.eps,
                                          ctx.weight_decay)
        return (None,) * 11


class FusedEmbeddingBag(nn.Module):
    """Embedding bag (sum | mean) trained by row-wise Adagrad inside its own backward (see module doc)."""

    def __init__(self, num_embeddings: int, dim: int, mode: str = "sum", lr: float = 0.01, eps: float = 1e-8,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
                 weight_decay: float = 0.0, process_group=None) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"FusedEmbeddingBag mode must be one of {MODES}, got {mode!r}")
        if num_embeddings <= 0 or dim <= 0:
            raise ValueError(f"FusedEmbeddingBag needs num_embeddings > 0 and dim > 0, got {num_embeddings}, {dim}")
        if weight_decay < 0:
            raise ValueError(f"FusedEmbeddingBag weight_decay must be >= 0, got {weight_decay}")
        self.num_embeddings, self.dim, self.mode, self.lr, self.eps = num_embeddings, dim, mode, lr, eps
        self.weight_decay = weight_decay
        self.process_group = process_group  # None: one process; else the group whose updates are gathered
        # Buffers, not Parameters: the dense optimiser must never see (or zero, or step) these rows.
        self.register_buffer("weight", torch.empty((num_embeddings, dim), dtype=dtype, device=device))
        self.register_buffer("momentum", torch.zeros(num_embeddings, dtype=torch.float32, device=device))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = math.sqrt(1.0 / self.num_embeddings)  # DLRM's initialisation
        with torch.no_grad():
            self.weight.uniform_(-bound, bound)
            self.momentum.zero_()

    def forward(self, indices: torch.Tensor, offsets: torch.Tensor | None = None) -> torch.Tensor:
        """indices [N], CSR offsets [B + 1] -> pooled [B, dim]; offsets None: bags of one, [N, dim]."""
        single = offsets is None
        if single:  # the backward's bag bookkeeping still reads CSR offsets: 0, 1, .., N
            offsets = torch.arange(indices.numel() + 1, device=indices.device)
        if indices.dim() != 1 or offsets.dim() != 1 or offsets.numel() < 1:
            raise ValueError(f"FusedEmbeddingBag takes 1-d indices and CSR offsets [B + 1], got "
                             f"{tuple(indices.shape)} and {tuple(offsets.shape)}")
        if indices.dtype not in (torch.int32, torch.int64) or offsets.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"indices and offsets must be int32/int64, got {indices.dtype}, {offsets.dtype}")
        indices, offsets = indices.contiguous(), offsets.contiguous()
        if not (self.training and torch.is_grad_enabled()):
            if use_triton(self.weight, indices, offsets):
                return _embedding_bag_triton(self.weight, indices, offsets, self.mode, single)
            return embedding_bag_reference(self.weight, indices, offsets, self.mode)
        # A zero-size tensor that requires grad makes autograd call our backward (TBE's placeholder).
        anchor = torch.empty(0, device=self.weight.device, requires_grad=True)
        return _FusedEmbeddingBagFunction.apply(anchor, self.weight, self.momentum, indices, offsets,
                                                self.mode, self.lr, self.eps, single, self.weight_decay,
                                                self.process_group)

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings}, {self.dim}, mode={self.mode!r}, lr={self.lr}, eps={self.eps}, "
                f"weight_decay={self.weight_decay}")
