"""Weighted binary cross-entropy with logits, forward and gradient fused in one pass.

    loss   = sum_i w_i * l_i / sum_i w_i,   l_i = max(z_i, 0) - z_i y_i + log(1 + exp(-|z_i|))
    d z_i  = (sigmoid(z_i) - y_i) * w_i / sum_i w_i

The gradient needs nothing the forward has not already loaded, so the forward kernel writes it
(Liger-Kernel's fused-linear-cross-entropy trick): one read of logits, labels and weights, one
write of the gradient, and per-program loss partials that are summed in a fixed order
(deterministic, no atomics). sum(w) is reduced first on the device (one read of w; no host sync).
Backward only multiplies the stored gradient by the incoming scalar, in place, and the kernel
skips all memory traffic when that scalar is 1 (the usual `loss.backward()`), deciding on the
device. Labels and weights are constants (no gradient); the loss is float32; the gradient
takes the logits' dtype. weights=None means every weight is 1 (a plain mean).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels._launch import check_float
from kernels.dispatch import use_triton


def bce_reference(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Plain PyTorch weighted-mean BCE with logits, float32 arithmetic."""
    z = logits.reshape(-1).float()
    y = labels.reshape(-1).float()
    if weights is None:
        return F.binary_cross_entropy_with_logits(z, y, reduction="mean")
    w = weights.reshape(-1).float()
    return F.binary_cross_entropy_with_logits(z, y, weight=w, reduction="sum") / w.sum()


def _check(logits, labels, weights) -> None:
    check_float("logits", logits)
    if labels.numel() != logits.numel():
        raise ValueError(f"bce_with_logits: labels has {labels.numel()} values, logits {logits.numel()}")
    if labels.requires_grad or (weights is not None and weights.requires_grad):
        raise ValueError("bce_with_logits: labels and weights are constants; detach them (no gradient is computed)")
    if weights is not None:
        check_float("weights", weights)
        if weights.numel() != logits.numel():
            raise ValueError(f"bce_with_logits: weights has {weights.numel()} values, logits {logits.numel()}")


def bce_with_logits(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Weighted-mean BCE with logits (float32 scalar); Triton on CUDA, the reference on CPU."""
    _check(logits, labels, weights)
    if not use_triton(logits, labels, weights):
        return bce_reference(logits, labels, weights)
    return _FusedBCE.apply(logits, labels, weights)


try:
    import triton
    import triton.language as tl
except ImportError:  # kernels.dispatch refuses the Triton path without triton
    triton = None

if triton is not None:

    @triton.jit
    def _bce_forward_kernel(
        logits_ptr, labels_ptr, weights_ptr, weight_sum_ptr, grad_ptr, loss_partial_ptr, n_elements,
        HAS_WEIGHTS: tl.constexpr, STORE_GRAD: tl.constexpr, BLOCK: tl.constexpr,
    ):
        pid = tl.program_id(0)
        offsets = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < n_elements
        z = tl.load(logits_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        y = tl.load(labels_ptr + offsets, mask=mask, other=0).to(tl.float32)
        if HAS_WEIGHTS:
            w = tl.load(weights_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            inv_weight_sum = 1.0 / tl.load(weight_sum_ptr)
        else:
            w = tl.where(mask, 1.0, 0.0)
            inv_weight_sum = 1.0 / n_elements  # n_elements may be the constexpr 1
        # log1p(e^-|z|) keeps exp from overflowing for either sign of z; Kahan's log1p form
        # log(u) * t / (u - 1) stays exact to float32 rounding when t = e^-|z| is tiny.
        t = tl.exp(-tl.abs(z))
        u = 1.0 + t
        log1p_t = tl.where(u == 1.0, t, tl.log(u) * t / (u - 1.0))
        loss = tl.maximum(z, 0.0) - z * y + log1p_t
        tl.store(loss_partial_ptr + pid, tl.sum(w * loss, axis=0) * inv_weight_sum)
        if STORE_GRAD:
            grad = (tl.sigmoid(z) - y) * w * inv_weight_sum
            tl.store(grad_ptr + offsets, grad.to(grad_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _scale_in_place_kernel(grad_ptr, scale_ptr, n_elements, BLOCK: tl.constexpr):
        scale = tl.load(scale_ptr).to(tl.float32)
        if scale != 1.0:  # decided on the device: no host sync, no traffic for loss.backward()
            offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
            mask = offsets < n_elements
            grad = tl.load(grad_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            tl.store(grad_ptr + offsets, (grad * scale).to(grad_ptr.dtype.element_ty), mask=mask)


_BLOCK = 4096


class _FusedBCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, weights):
        z = logits.contiguous().view(-1)
        y = labels.contiguous().view(-1)
        if y.dtype == torch.bool:
            y = y.view(torch.uint8)
        n_elements = z.numel()
        store_grad = ctx.needs_input_grad[0]
        grad = torch.empty_like(z) if store_grad else z  # z is never written when store_grad is False
        n_programs = triton.cdiv(n_elements, _BLOCK)
        loss_partial = torch.empty(n_programs, dtype=torch.float32, device=z.device)
        if weights is not None:
            w = weights.contiguous().view(-1)
            weight_sum = w.sum(dtype=torch.float32).reshape(1)
        else:
            w, weight_sum = z, loss_partial  # unused: HAS_WEIGHTS is False
        _bce_forward_kernel[(n_programs,)](
            z, y, w, weight_sum, grad, loss_partial, n_elements,
            HAS_WEIGHTS=weights is not None, STORE_GRAD=store_grad, BLOCK=_BLOCK, num_warps=8,
        )
        if store_grad:
            ctx.save_for_backward(grad)
        ctx.logits_shape = logits.shape
        ctx.backward_done = False
        return loss_partial.sum()

    @staticmethod
    def backward(ctx, grad_loss):
        if ctx.backward_done:
            raise RuntimeError("bce_with_logits: backward ran twice through one graph (retain_graph); the fused "
                               "gradient is scaled in place, so call the loss again instead")
        ctx.backward_done = True
        (grad,) = ctx.saved_tensors
        n_elements = grad.numel()
        scale = grad_loss.reshape(1).to(torch.float32)
        _scale_in_place_kernel[(triton.cdiv(n_elements, _BLOCK),)](grad, scale, n_elements, BLOCK=_BLOCK, num_warps=8)
        return grad.view(ctx.logits_shape), None, None
