"""Embedding bags whose sparse optimiser runs inside the backward (FBGEMM TBE's "optimizer fused
into backward", arXiv 2104.05158 sec. 4; the EXACT_ROWWISE_ADAGRAD rule).

Forward, for bag b holding positions offsets[b] .. offsets[b+1]-1 of `indices`:

    out[b] = scale_b * sum_{p in bag b} W[indices[p]],   scale_b = 1 (mode "sum") or 1/|bag b| ("mean", 0 if empty)

Backward never materialises dW. For each row r that occurs in the batch (duplicates, within a
bag or across bags, are accumulated first, in a fixed order, so the update is deterministic):

    g_r  = sum_{p: indices[p] = r} scale_{bag(p)} * grad_out[bag(p)]
    m_r += mean_k g_r[k]^2                               (one float32 accumulator per row)
    W[r] -= lr * g_r / (sqrt(m_r) + eps)

Rows absent from the batch are not touched (their m_r and W[r] stay as they are), which is what
makes the step cheap: the cost scales with the batch, not with the table. The weights are a
buffer, not an nn.Parameter, so a dense optimiser built from model.parameters() never sees them;
they are updated in place during loss.backward(). The update happens once per backward through
each forward call; under torch.no_grad() or in eval mode the module is a plain embedding bag.

Offsets are CSR style: offsets has B + 1 entries, offsets[0] = 0 and offsets[B] = len(indices)
(torch.nn.functional.embedding_bag's include_last_offset=True). offsets=None means every index is
a bag of its own (single-valued features, out[b] = W[indices[b]]): the forward is then a plain
row gather, many rows per program, instead of one program per bag. Several tables share one module
by adding each table's row offset to its indices (as TBE does); rows of one bag may repeat.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kernels._launch import next_power_of_2
from kernels.dispatch import use_triton

MODES = ("sum", "mean")


def embedding_bag_reference(
    weight: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor, mode: str = "sum"
) -> torch.Tensor:
    """Plain PyTorch embedding bag with CSR offsets ([B + 1]); output in the table's dtype."""
    return F.embedding_bag(indices.long(), weight, offsets.long(), mode=mode, include_last_offset=True)


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
    grad_output: torch.Tensor, mode: str, lr: float, eps: float,
) -> None:
    """Plain PyTorch row-wise Adagrad step on the rows in the batch, in place (see module docstring)."""
    bag = _bag_of_positions(offsets, indices.numel())
    contributions = grad_output.float()[bag] * _bag_scale(offsets, mode)[bag, None]
    rows, inverse = torch.unique(indices.long(), return_inverse=True)
    row_grad = torch.zeros((rows.numel(), weight.shape[1]), dtype=torch.float32, device=weight.device)
    row_grad.index_add_(0, inverse, contributions)
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
        weight_ptr, indices_ptr, offsets_ptr, out_ptr, dim,
        MEAN: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        bag = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        col_mask = cols < dim
        start = tl.load(offsets_ptr + bag)
        end = tl.load(offsets_ptr + bag + 1)
        acc = tl.zeros((BLOCK_L, BLOCK_D), dtype=tl.float32)
        first = start
        # while, not for-range: Triton's interpreter cannot take a loaded scalar as a range bound.
        while first < end:
            positions = first + tl.arange(0, BLOCK_L)
            in_bag = positions < end
            rows = tl.load(indices_ptr + positions, mask=in_bag, other=0).to(tl.int64)
            acc += tl.load(weight_ptr + rows[:, None] * dim + cols[None, :], mask=in_bag[:, None] & col_mask[None, :],
                           other=0.0).to(tl.float32)
            first += BLOCK_L
        pooled = tl.sum(acc, axis=0)
        if MEAN:
            pooled = pooled / tl.maximum(end - start, 1).to(tl.float32)
        tl.store(out_ptr + bag.to(tl.int64) * dim + cols, pooled.to(out_ptr.dtype.element_ty), mask=col_mask)

    @triton.jit
    def _gather_rows_kernel(weight_ptr, indices_ptr, out_ptr, n_indices, dim,
                            BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
        positions = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        valid = positions < n_indices
        rows = tl.load(indices_ptr + positions, mask=valid, other=0).to(tl.int64)
        cols = tl.arange(0, BLOCK_D)
        mask = valid[:, None] & (cols < dim)[None, :]
        values = tl.load(weight_ptr + rows[:, None] * dim + cols[None, :], mask=mask, other=0.0)
        tl.store(out_ptr + positions.to(tl.int64)[:, None] * dim + cols[None, :], values, mask=mask)

    @triton.jit
    def _rowwise_adagrad_kernel(
        sorted_rows_ptr, order_ptr, bag_of_ptr, bag_scale_ptr, grad_ptr, weight_ptr, momentum_ptr,
        n_positions, dim, lr, eps,
        BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        # One program per position of the sorted indices; the first position of each run of equal
        # rows owns that row: it sums the run's contributions in order, then applies the update.
        p = tl.program_id(0)
        row = tl.load(sorted_rows_ptr + p)
        previous = tl.load(sorted_rows_ptr + tl.maximum(p - 1, 0))
        if (p == 0) | (previous != row):
            cols = tl.arange(0, BLOCK_D)
            col_mask = cols < dim
            acc = tl.zeros((BLOCK_L, BLOCK_D), dtype=tl.float32)
            first = p
            run_continues = True
            while run_continues:
                positions = first + tl.arange(0, BLOCK_L)
                valid = positions < n_positions
                in_run = valid & (tl.load(sorted_rows_ptr + positions, mask=valid, other=-1) == row)
                source = tl.load(order_ptr + positions, mask=in_run, other=0)
                bag = tl.load(bag_of_ptr + source, mask=in_run, other=0).to(tl.int64)
                scale = tl.load(bag_scale_ptr + bag, mask=in_run, other=0.0)
                grad = tl.load(grad_ptr + bag[:, None] * dim + cols[None, :], mask=in_run[:, None] & col_mask[None, :],
                               other=0.0).to(tl.float32)
                acc += grad * scale[:, None]
                first += BLOCK_L
                # Runs are contiguous in sorted order: a chunk not wholly in the run is the last one.
                run_continues = tl.sum(in_run.to(tl.int32), axis=0) == BLOCK_L
            row_grad = tl.sum(acc, axis=0)
            momentum = tl.load(momentum_ptr + row) + tl.sum(row_grad * row_grad, axis=0) / dim
            tl.store(momentum_ptr + row, momentum)
            weight_offsets = row.to(tl.int64) * dim + cols
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
    block_l = min(16, max(2, next_power_of_2(mean_length)))
    block_d = min(256, max(16, next_power_of_2(dim)))
    grid = (n_bags, triton.cdiv(dim, block_d))
    _bag_forward_kernel[grid](weight, indices, offsets, out, dim, MEAN=mode == "mean", BLOCK_L=block_l,
                              BLOCK_D=block_d, num_warps=1 if block_d * block_l <= 512 else 4)
    return out


def _rowwise_adagrad_triton(weight, momentum, indices, offsets, grad_output, mode, lr, eps):
    n_positions, dim = indices.numel(), weight.shape[1]
    if n_positions == 0:
        return
    sorted_rows, order = torch.sort(indices, stable=True)
    bag_of = _bag_of_positions(offsets, n_positions)
    bag_scale = _bag_scale(offsets, mode)
    block_d = max(16, next_power_of_2(dim))
    _rowwise_adagrad_kernel[(n_positions,)](
        sorted_rows, order, bag_of, bag_scale, grad_output.contiguous(), weight, momentum,
        n_positions, dim, float(lr), float(eps), BLOCK_L=4, BLOCK_D=block_d, num_warps=1 if block_d <= 128 else 4,
    )


class _FusedEmbeddingBagFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, anchor, weight, momentum, indices, offsets, mode, lr, eps, single):
        ctx.triton = use_triton(weight, indices, offsets)
        if ctx.triton:
            out = _embedding_bag_triton(weight, indices, offsets, mode, single)
        else:
            out = embedding_bag_reference(weight, indices, offsets, mode)
        ctx.save_for_backward(weight, momentum, indices, offsets)
        ctx.mode, ctx.lr, ctx.eps = mode, lr, eps
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        weight, momentum, indices, offsets = ctx.saved_tensors
        step = _rowwise_adagrad_triton if ctx.triton else rowwise_adagrad_reference
        with torch.no_grad():
            step(weight, momentum, indices, offsets, grad_output, ctx.mode, ctx.lr, ctx.eps)
        return (None,) * 9


class FusedEmbeddingBag(nn.Module):
    """Embedding bag (sum | mean) trained by row-wise Adagrad inside its own backward (see module doc)."""

    def __init__(self, num_embeddings: int, dim: int, mode: str = "sum", lr: float = 0.01, eps: float = 1e-8,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"FusedEmbeddingBag mode must be one of {MODES}, got {mode!r}")
        if num_embeddings <= 0 or dim <= 0:
            raise ValueError(f"FusedEmbeddingBag needs num_embeddings > 0 and dim > 0, got {num_embeddings}, {dim}")
        self.num_embeddings, self.dim, self.mode, self.lr, self.eps = num_embeddings, dim, mode, lr, eps
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
                                                self.mode, self.lr, self.eps, single)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.dim}, mode={self.mode!r}, lr={self.lr}, eps={self.eps}"
