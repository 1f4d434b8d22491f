"""Low-rank cross layer tail (DCNv2, arXiv 2008.13535 eq. 1; LiRank's Residual DCN, arXiv 2402.06859).

A cross layer computes x_{l+1} = x_0 * (V (U x_l) + b) + x_l. The two matrix products stay in
cuBLAS; this module fuses the elementwise tail

    out = x0 * (projected + bias) + residual,     projected = V (U x_l),  residual = x_l,

into one pass forward and one pass backward:

    d x0        = g * (projected + bias)
    d projected = g * x0
    d bias      = sum over rows of g * x0
    d residual  = g

The bias gradient is reduced deterministically: each program sums its rows in registers and
writes one partial row; the partial rows are summed in a fixed order afterwards (no atomics).
Inputs may have any leading shape [..., d] and may mix float32 / bfloat16 (under autocast the
projection is bf16 while x0 may be float32); arithmetic is float32, the output takes the
promoted dtype, and each gradient takes its input's dtype.
"""

from __future__ import annotations

import torch

from kernels._launch import check_float, common_dtype, rows_view
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
    def _cross_forward_kernel(
        x0_ptr, proj_ptr, bias_ptr, resid_ptr, out_ptr, n_elements, n_cols, BLOCK: tl.constexpr,
    ):
        # Flat, not [rows, cols] tiles: rows of an odd width (1677) are not 16-byte aligned, and a flat
        # block keeps every load wide; the bias is re-read through the cache by column index.
        offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < n_elements
        x0 = tl.load(x0_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        proj = tl.load(proj_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        resid = tl.load(resid_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        bias = tl.load(bias_ptr + offsets % n_cols, mask=mask, other=0.0).to(tl.float32)
        out = x0 * (proj + bias) + resid
        tl.store(out_ptr + offsets, out.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _cross_backward_kernel(
        grad_ptr, x0_ptr, proj_ptr, bias_ptr, dx0_ptr, dproj_ptr, dbias_partial_ptr, n_rows, n_cols,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ROW_STEPS: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        col_mask = cols < n_cols
        bias = tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
        dbias = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for step in range(ROW_STEPS):  # rows in a fixed order: the bias partial is deterministic
            rows = (pid_m * ROW_STEPS + step) * BLOCK_M + tl.arange(0, BLOCK_M)
            mask = (rows < n_rows)[:, None] & col_mask[None, :]
            offsets = rows.to(tl.int64)[:, None] * n_cols + cols[None, :]
            grad = tl.load(grad_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            x0 = tl.load(x0_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            proj = tl.load(proj_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            dproj = grad * x0
            tl.store(dx0_ptr + offsets, (grad * (proj + bias[None, :])).to(dx0_ptr.dtype.element_ty), mask=mask)
            tl.store(dproj_ptr + offsets, dproj.to(dproj_ptr.dtype.element_ty), mask=mask)
            dbias += tl.sum(dproj, axis=0)
        tl.store(dbias_partial_ptr + pid_m.to(tl.int64) * n_cols + cols, dbias, mask=col_mask)


_BLOCK_M, _BLOCK_N = 16, 128


def _row_steps(n_rows: int) -> int:
    # Enough programs to fill an H100 (132 SMs) several times over, few enough partial rows to sum.
    blocks = triton.cdiv(n_rows, _BLOCK_M)
    return max(1, min(32, blocks // 64))


class _CrossTail(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x0, projected, bias, residual):
        n_cols = x0.shape[-1]
        x0_2d, proj_2d, resid_2d = (rows_view(t, n_cols) for t in (x0, projected, residual))
        bias_c = bias.contiguous()
        n_rows = x0_2d.shape[0]
        out = torch.empty((n_rows, n_cols), dtype=common_dtype(x0, projected, bias, residual), device=x0.device)
        n_elements = n_rows * n_cols
        _cross_forward_kernel[(triton.cdiv(n_elements, 2048),)](x0_2d, proj_2d, bias_c, resid_2d, out, n_elements,
                                                               n_cols, BLOCK=2048, num_warps=8)
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
        row_steps = _row_steps(n_rows)
        n_programs = triton.cdiv(n_rows, _BLOCK_M * row_steps)
        dbias_partial = torch.empty((n_programs, n_cols), dtype=torch.float32, device=x0_2d.device)
        grid = (n_programs, triton.cdiv(n_cols, _BLOCK_N))
        _cross_backward_kernel[grid](grad_2d, x0_2d, proj_2d, bias, dx0, dproj, dbias_partial, n_rows, n_cols,
                                     BLOCK_M=_BLOCK_M, BLOCK_N=_BLOCK_N, ROW_STEPS=row_steps, num_warps=4)
        dbias = dbias_partial.sum(dim=0).to(bias.dtype)
        dresidual = grad_out.to(ctx.residual_dtype)
        return dx0.view(ctx.shape), dproj.view(ctx.shape), dbias, dresidual.view(ctx.shape)
