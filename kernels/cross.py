"""Low-rank cross layer tail (DCNv2, arXiv 2008.13535 eq. 1; LiRank's Residual DCN, arXiv 2402.06859).

A cross layer computes x_{l+1} = x_0 * (V (U x_l) + b) + x_l. The two matrix products stay in
cuBLAS; this module fuses the elementwise tail

    out = x0 * (projected + bias) + residual,     projected = V (U x_l),  residual = x_l,

into one pass forward and one pass backward:

    d x0        = g * (projected + bias)
    d projected = g * x0
    d bias      = sum over rows of g * x0
    d residual  = g

Both passes are flat (wide loads whatever the row width). The backward's programs each see one
fixed set of columns (see _cross_backward_kernel), so the bias gradient is summed in registers,
in float32, and the partials are summed in a fixed order afterwards (deterministic, no atomics).
Inputs may have any leading shape [..., d] and may mix float32 / bfloat16 (under autocast the
projection is bf16 while x0 may be float32); arithmetic is float32, the output takes the
promoted dtype, and each gradient takes its input's dtype.
"""

from __future__ import annotations

import math

import torch

from kernels._launch import check_float, common_dtype, multiprocessor_count, rows_view
from kernels.dispatch import use_triton


def cross_reference(
    x0: torch.Tensor, projected: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor
) -> torch.Tensor:
    """Plain PyTorch: x0 * (projected + bias) + residual (float32 arithmetic, promoted output)."""
    out_dtype = common_dtype(x0, projected, bias, residual)
    result = x0.float() * (projected.float() + bias.float()) + residual.float()
    return result.to(out_dtype)


def _check(x0, projected, bias, residual) -> None:
    for name, tensor in (("x0", x0), ("projected", projected), ("bias", bias), ("residual", residual)):
        check_float(name, tensor)
    if not (x0.shape == projected.shape == residual.shape):
        raise ValueError(
            f"cross_tail: x0 {tuple(x0.shape)}, projected {tuple(projected.shape)} and residual "
            f"{tuple(residual.shape)} must have the same shape"
        )
    if bias.shape != (x0.shape[-1],):
        raise ValueError(f"cross_tail: bias must have shape ({x0.shape[-1]},), got {tuple(bias.shape)}")


def cross_tail(
    x0: torch.Tensor, projected: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor
) -> torch.Tensor:
    """x0 * (projected + bias) + residual; Triton on CUDA, the reference on CPU (kernels.dispatch)."""
    _check(x0, projected, bias, residual)
    if not use_triton(x0, projected, bias, residual):
        return cross_reference(x0, projected, bias, residual)
    return _CrossTail.apply(x0, projected, bias, residual)


try:
    import triton
    import triton.language as tl
except ImportError:  # kernels.dispatch refuses the Triton path without triton
    triton = None

if triton is not None:

    @triton.jit
    def _columns(start, n_cols, BLOCK: tl.constexpr, WRAPS: tl.constexpr):
        # Column of each element of the flat block [start, start + BLOCK), in int32 arithmetic: one
        # int64 modulo per program, not one per element (that modulo made the old forward ALU-bound).
        # A block crosses at most WRAPS row ends (0: many, use a modulo).
        cols = (start % n_cols).to(tl.int32) + tl.arange(0, BLOCK)
        if WRAPS == 0:
            return cols % n_cols
        for _ in tl.static_range(WRAPS):
            cols = tl.where(cols >= n_cols, cols - n_cols, cols)
        return cols

    @triton.jit
    def _cross_forward_kernel(
        x0_ptr, proj_ptr, bias_ptr, resid_ptr, out_ptr, n_elements, n_cols,
        BLOCK: tl.constexpr, WRAPS: tl.constexpr,
    ):
        # Flat, not [rows, cols] tiles: rows of an odd width (1677) are not 16-byte aligned, and a flat
        # block keeps every load wide; the bias is re-read through the cache by column index.
        start = tl.program_id(0).to(tl.int64) * BLOCK
        offsets = start + tl.arange(0, BLOCK)
        mask = offsets < n_elements
        x0 = tl.load(x0_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        proj = tl.load(proj_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        resid = tl.load(resid_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        bias = tl.load(bias_ptr + _columns(start, n_cols, BLOCK, WRAPS), mask=mask, other=0.0).to(tl.float32)
        out = x0 * (proj + bias) + resid
        tl.store(out_ptr + offsets, out.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _cross_backward_kernel(
        grad_ptr, x0_ptr, proj_ptr, bias_ptr, dx0_ptr, dproj_ptr, dbias_partial_ptr, n_elements, n_cols, n_steps,
        BLOCK: tl.constexpr, WRAPS: tl.constexpr,
    ):
        # Flat like the forward (wide loads at any width), and persistent: program p takes blocks p, p + P,
        # p + 2P, ... where P * BLOCK is a multiple of n_cols, so lane i of every block of p is the same
        # column: d bias accumulates in registers, and the partials [P * BLOCK] read as [-1, n_cols]
        # rows that sum (in a fixed order) to d bias. No atomics, no second pass over d projected.
        pid = tl.program_id(0)
        n_programs = tl.num_programs(0)
        bias = tl.load(bias_ptr + _columns(pid.to(tl.int64) * BLOCK, n_cols, BLOCK, WRAPS)).to(tl.float32)
        dbias = tl.zeros((BLOCK,), dtype=tl.float32)
        step = 0
        # while, not for-range: Triton's interpreter cannot take a run-time scalar as a range bound.
        while step < n_steps:
            offsets = (pid + step * n_programs).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
            mask = offsets < n_elements
            grad = tl.load(grad_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            x0 = tl.load(x0_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            proj = tl.load(proj_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            dproj = grad * x0
            tl.store(dx0_ptr + offsets, (grad * (proj + bias)).to(dx0_ptr.dtype.element_ty), mask=mask)
            tl.store(dproj_ptr + offsets, dproj.to(dproj_ptr.dtype.element_ty), mask=mask)
            dbias += dproj  # float32, before d projected is rounded to its dtype
            step += 1
        tl.store(dbias_partial_ptr + pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK), dbias)


_BLOCK = 2048
_BACKWARD_BLOCK = 1024
# Backward programs per multiprocessor when the column period allows (2 warps each): all resident at once,
# so no program waits for a second wave.
_BACKWARD_PROGRAMS_PER_SM = 24


def _flat_launch(n_cols: int, block: int = _BLOCK) -> dict:
    wraps = (n_cols - 1 + block) // n_cols  # row ends one flat block can cross
    return {"BLOCK": block, "WRAPS": wraps if wraps <= 4 else 0}


def _backward_programs(n_elements: int, n_cols: int, device: torch.device) -> tuple[int, int]:
    """(programs, steps each): programs a multiple of n_cols / gcd(n_cols, BLOCK), so P * BLOCK % n_cols == 0."""
    period = n_cols // math.gcd(n_cols, _BACKWARD_BLOCK)
    n_blocks = triton.cdiv(n_elements, _BACKWARD_BLOCK)
    copies = max(1, _BACKWARD_PROGRAMS_PER_SM * multiprocessor_count(device) // period)
    n_programs = period * max(1, min(copies, triton.cdiv(n_blocks, period)))
    return n_programs, triton.cdiv(n_blocks, n_programs)


class _CrossTail(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x0, projected, bias, residual):
        n_cols = x0.shape[-1]
        x0_2d, proj_2d, resid_2d = (rows_view(t, n_cols) for t in (x0, projected, residual))
        bias_c = bias.contiguous()
        n_rows = x0_2d.shape[0]
        out = torch.empty((n_rows, n_cols), dtype=common_dtype(x0, projected, bias, residual), device=x0.device)
        n_elements = n_rows * n_cols
        _cross_forward_kernel[(triton.cdiv(n_elements, _BLOCK),)](
            x0_2d, proj_2d, bias_c, resid_2d, out, n_elements, n_cols, **_flat_launch(n_cols), num_warps=8)
        ctx.save_for_backward(x0_2d, proj_2d, bias_c)
        ctx.shape = x0.shape
        ctx.residual_dtype = residual.dtype
        return out.view(x0.shape)

    @staticmethod
    def backward(ctx, grad_out):
        x0_2d, proj_2d, bias = ctx.saved_tensors
        n_rows, n_cols = x0_2d.shape
        grad_2d = rows_view(grad_out, n_cols)
        dx0 = torch.empty_like(x0_2d)
        dproj = torch.empty_like(proj_2d)
        n_elements = n_rows * n_cols
        n_programs, n_steps = _backward_programs(n_elements, n_cols, x0_2d.device)
        dbias_partial = torch.empty(n_programs * _BACKWARD_BLOCK, dtype=torch.float32, device=x0_2d.device)
        _cross_backward_kernel[(n_programs,)](
            grad_2d, x0_2d, proj_2d, bias, dx0, dproj, dbias_partial, n_elements, n_cols, n_steps,
            **_flat_launch(n_cols, _BACKWARD_BLOCK), num_warps=2)
        dbias = dbias_partial.view(-1, n_cols).sum(dim=0).to(bias.dtype)
        dresidual = grad_out.to(ctx.residual_dtype)
        return dx0.view(ctx.shape), dproj.view(ctx.shape), dbias, dresidual.view(ctx.shape)
