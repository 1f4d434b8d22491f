"""Weighted binary cross-entropy with logits, forward and gradient fused in one pass.

    loss   = sum_i w_i * l_i / sum_i w_i,   l_i = max(z_i, 0) - z_i y_i + log(1 + exp(-|z_i|))
    d z_i  = (sigmoid(z_i) - y_i) * w_i / sum_i w_i

The gradient needs nothing the forward has not already loaded, so the forward kernel writes it
(Liger-Kernel's fused-linear-cross-entropy trick): one read of logits, labels and weights, one
write of the gradient, and per-program loss partials that are summed in a fixed order
(deterministic, no atomics). sum(w) is reduced first on the device, by a pass over w alone (no
host sync): the normalised gradient needs all of sum(w) before its first element, and a tensor of
this size does not fit on chip, so w is read twice (the second time partly from L2: that pass
runs back to front). The weight pass uses a persistent grid (a few programs per multiprocessor); the
main pass one program per block of 4096, 16 warps (on an H200 that ran at 93% of the copy bandwidth
unweighted, where a persistent grid of 8 warps ran at 81%).
Backward only multiplies the stored gradient by the incoming scalar, in place, and the kernel
skips all memory traffic when that scalar is 1 (the usual `loss.backward()`), deciding on the
device. Labels and weights are constants (no gradient); the loss is float32; the gradient
takes the logits' dtype. weights=None means every weight is 1 (a plain mean).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels._launch import check_float, multiprocessor_count
from kernels.dispatch import use_triton


def bce_reference(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Plain PyTorch weighted-mean BCE with logits, float32 arithmetic (float64 for float64 logits)."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    z = logits.reshape(-1).to(dtype)
    y = labels.reshape(-1).to(dtype)
    if weights is None:
        return F.binary_cross_entropy_with_logits(z, y, reduction="mean")
    w = weights.reshape(-1).to(dtype)
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
    def _partial_sum_kernel(values_ptr, partial_ptr, n_elements, n_steps, BLOCK: tl.constexpr):
        # Persistent: program p sums blocks p, p + P, p + 2P, ... in order (deterministic). Together the
        # programs sweep the tensor front to back, so its last blocks are the ones left in L2.
        pid, n_programs = tl.program_id(0), tl.num_programs(0)
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        step = 0
        # while, not for-range: Triton's interpreter cannot take a run-time scalar as a range bound.
        while step < n_steps:
            offsets = (pid + step * n_programs).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
            acc += tl.load(values_ptr + offsets, mask=offsets < n_elements, other=0.0).to(tl.float32)
            step += 1
        tl.store(partial_ptr + pid, tl.sum(acc, axis=0))

    @triton.jit
    def _bce_forward_kernel(
        logits_ptr, labels_ptr, weights_ptr, weight_sum_ptr, grad_ptr, loss_partial_ptr, n_elements, n_blocks,
        n_steps, HAS_WEIGHTS: tl.constexpr, STORE_GRAD: tl.constexpr, BLOCK: tl.constexpr,
    ):
        pid, n_programs = tl.program_id(0), tl.num_programs(0)
        if HAS_WEIGHTS:
            inv_weight_sum = 1.0 / tl.load(weight_sum_ptr)
        else:
            inv_weight_sum = 1.0 / n_elements  # n_elements may be the constexpr 1
        loss_acc = tl.zeros((BLOCK,), dtype=tl.float32)
        step = 0
        while step < n_steps:  # while: see _partial_sum_kernel
            # Back to front: the weight pass left the last blocks of w in L2.
            block = n_blocks - 1 - (pid + step * n_programs)
            offsets = block.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
            mask = (offsets < n_elements) & (block >= 0)
            z = tl.load(logits_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            y = tl.load(labels_ptr + offsets, mask=mask, other=0).to(tl.float32)
            if HAS_WEIGHTS:
                w = tl.load(weights_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            else:
                w = tl.where(mask, 1.0, 0.0)
            # log1p(e^-|z|) keeps exp from overflowing for either sign of z; Kahan's log1p form
            # log(u) * t / (u - 1) stays exact to float32 rounding when t = e^-|z| is tiny.
            t = tl.exp(-tl.abs(z))
            u = 1.0 + t
            log1p_t = tl.where(u == 1.0, t, tl.log(u) * t / (u - 1.0))
            loss_acc += w * (tl.maximum(z, 0.0) - z * y + log1p_t)
            if STORE_GRAD:
                sigmoid = tl.where(z >= 0, 1.0, t) / u  # sigmoid(z) from the same e^-|z|
                grad = (sigmoid - y) * w * inv_weight_sum
                tl.store(grad_ptr + offsets, grad.to(grad_ptr.dtype.element_ty), mask=mask)
            step += 1
        tl.store(loss_partial_ptr + pid, tl.sum(loss_acc, axis=0) * inv_weight_sum)

    @triton.jit
    def _scale_in_place_kernel(grad_ptr, scale_ptr, n_elements, n_steps, BLOCK: tl.constexpr):
        scale = tl.load(scale_ptr).to(tl.float32)
        if scale != 1.0:  # decided on the device: no host sync, no traffic for loss.backward()
            step = 0
            while step < n_steps:  # while: see _partial_sum_kernel
                block = tl.program_id(0) + step * tl.num_programs(0)
                offsets = block.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
                mask = offsets < n_elements
                grad = tl.load(grad_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
                tl.store(grad_ptr + offsets, (grad * scale).to(grad_ptr.dtype.element_ty), mask=mask)
                step += 1


_BLOCK = 4096
_NUM_WARPS = 16
# Programs per multiprocessor of the persistent grids; 0: one program per block.
_PROGRAMS_PER_SM = 0
_SUM_PROGRAMS_PER_SM = 4


def _grid(n_elements: int, device: torch.device, per_sm: int) -> tuple[int, int, int]:
    """(blocks, programs, steps per program) of a grid of `per_sm` programs per multiprocessor, each looping
    over blocks program, program + programs, ...; never more programs than blocks (per_sm 0: one each)."""
    n_blocks = max(1, triton.cdiv(n_elements, _BLOCK))
    n_programs = n_blocks if per_sm == 0 else min(n_blocks, per_sm * multiprocessor_count(device))
    return n_blocks, n_programs, triton.cdiv(n_blocks, n_programs)


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
        n_blocks, n_programs, n_steps = _grid(n_elements, z.device, _PROGRAMS_PER_SM)
        loss_partial = torch.empty(n_programs, dtype=torch.float32, device=z.device)
        if weights is not None:
            w = weights.contiguous().view(-1)
            _, sum_programs, sum_steps = _grid(n_elements, z.device, _SUM_PROGRAMS_PER_SM)
            weight_partial = torch.empty(sum_programs, dtype=torch.float32, device=z.device)
            _partial_sum_kernel[(sum_programs,)](w, weight_partial, n_elements, sum_steps, BLOCK=_BLOCK,
                                                 num_warps=_NUM_WARPS)
            weight_sum = weight_partial.sum()  # fixed order: deterministic
        else:
            w, weight_sum = z, loss_partial  # unused: HAS_WEIGHTS is False
        _bce_forward_kernel[(n_programs,)](
            z, y, w, weight_sum, grad, loss_partial, n_elements, n_blocks, n_steps,
            HAS_WEIGHTS=weights is not None, STORE_GRAD=store_grad, BLOCK=_BLOCK, num_warps=_NUM_WARPS,
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
        _, n_programs, n_steps = _grid(n_elements, grad.device, max(1, _PROGRAMS_PER_SM))
        _scale_in_place_kernel[(n_programs,)](grad, scale, n_elements, n_steps, BLOCK=_BLOCK, num_warps=_NUM_WARPS)
        return grad.view(ctx.logits_shape), None, None
