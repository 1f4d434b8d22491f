"""Dense gating (LiRank, arXiv 2402.06859, "Dense Gating"): hidden * sigmoid(gate_logits), fused.

    out           = h * s,            s = sigmoid(z)
    d h           = g * s
    d gate_logits = g * h * s * (1 - s)

Forward reads h and z and writes out once; backward recomputes s from z (cheaper than storing it)
and writes both gradients in the same pass. Arithmetic is float32; the output takes the promoted
dtype of the inputs and each gradient its input's dtype. hidden and gate_logits have the same shape.
"""

from __future__ import annotations

import torch

from kernels._launch import check_float, common_dtype
from kernels.dispatch import use_triton


def gate_reference(hidden: torch.Tensor, gate_logits: torch.Tensor) -> torch.Tensor:
    """Plain PyTorch: hidden * sigmoid(gate_logits) in float32 arithmetic."""
    out_dtype = common_dtype(hidden, gate_logits)
    return (hidden.float() * torch.sigmoid(gate_logits.float())).to(out_dtype)


def dense_gate(hidden: torch.Tensor, gate_logits: torch.Tensor) -> torch.Tensor:
    """hidden * sigmoid(gate_logits); Triton on CUDA, the reference on CPU (kernels.dispatch)."""
    check_float("hidden", hidden)
    check_float("gate_logits", gate_logits)
    if hidden.shape != gate_logits.shape:
        raise ValueError(
            f"dense_gate: hidden {tuple(hidden.shape)} and gate_logits {tuple(gate_logits.shape)} must match"
        )
    if not use_triton(hidden, gate_logits):
        return gate_reference(hidden, gate_logits)
    return _DenseGate.apply(hidden, gate_logits)


try:
    import triton
    import triton.language as tl
except ImportError:  # kernels.dispatch refuses the Triton path without triton
    triton = None

if triton is not None:

    @triton.jit
    def _gate_forward_kernel(hidden_ptr, logits_ptr, out_ptr, n_elements, BLOCK: tl.constexpr):
        offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < n_elements
        hidden = tl.load(hidden_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        logits = tl.load(logits_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + offsets, (hidden * tl.sigmoid(logits)).to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _gate_backward_kernel(
        grad_ptr, hidden_ptr, logits_ptr, dhidden_ptr, dlogits_ptr, n_elements, BLOCK: tl.constexpr
    ):
        offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < n_elements
        grad = tl.load(grad_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        hidden = tl.load(hidden_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        logits = tl.load(logits_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        gate = tl.sigmoid(logits)
        tl.store(dhidden_ptr + offsets, (grad * gate).to(dhidden_ptr.dtype.element_ty), mask=mask)
        dlogits = grad * hidden * gate * (1.0 - gate)
        tl.store(dlogits_ptr + offsets, dlogits.to(dlogits_ptr.dtype.element_ty), mask=mask)


_BLOCK = 2048


class _DenseGate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, gate_logits):
        hidden_c, logits_c = hidden.contiguous(), gate_logits.contiguous()
        out = torch.empty(hidden.shape, dtype=common_dtype(hidden, gate_logits), device=hidden.device)
        n_elements = hidden_c.numel()
        _gate_forward_kernel[(triton.cdiv(n_elements, _BLOCK),)](
            hidden_c, logits_c, out, n_elements, BLOCK=_BLOCK, num_warps=8
        )
        ctx.save_for_backward(hidden_c, logits_c)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, logits = ctx.saved_tensors
        grad = grad_out.contiguous()
        dhidden, dlogits = torch.empty_like(hidden), torch.empty_like(logits)
        n_elements = hidden.numel()
        _gate_backward_kernel[(triton.cdiv(n_elements, _BLOCK),)](
            grad, hidden, logits, dhidden, dlogits, n_elements, BLOCK=_BLOCK, num_warps=8
        )
        return dhidden, dlogits
