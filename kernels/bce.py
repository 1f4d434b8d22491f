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

A caller that already knows sum(w) (the data loader that built the batch) passes it as `weight_sum`:
then there is no weight pass and w is read once. The main pass also sums the w it has loaded (no
extra traffic), and the last kernel, one program that adds the loss partials, compares: if the given
sum is off by more than the weights' own rounding allows (`_weight_sum_rtol`), the loss and the
gradient come out NaN. That is loud without a host read (so it also holds inside a CUDA graph) and
leaves the CUDA context usable, which a device-side assert would not.
Backward only multiplies the stored gradient by the incoming scalar, in place, and the kernel
skips all memory traffic when that scalar is 1 (the usual `loss.backward()`), deciding on the
device. Labels and weights are constants (no gradient); the loss is float32; the gradient
takes the logits' dtype. weights=None means every weight is 1 (a plain mean).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels._launch import check_float, multiprocessor_count, next_power_of_2
from kernels.dispatch import use_triton


def bce_reference(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None,
    weight_sum: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Plain PyTorch weighted-mean BCE with logits, float32 arithmetic (float64 for float64 logits);
    divided by `weight_sum` when given (the caller's sum(w)), else by sum(w)."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    z = logits.reshape(-1).to(dtype)
    y = labels.reshape(-1).to(dtype)
    if weights is None:
        return F.binary_cross_entropy_with_logits(z, y, reduction="mean")
    w = weights.reshape(-1).to(dtype)
    total = w.sum() if weight_sum is None else torch.as_tensor(weight_sum, dtype=dtype, device=z.device).reshape(())
    return F.binary_cross_entropy_with_logits(z, y, weight=w, reduction="sum") / total


def _weight_sum_rtol(weights: torch.Tensor) -> float:
    """How far a caller's sum(w) may be from the sum of the stored weights: 16-bit weights round each value
    by up to 2^-9 (a bias when the weights repeat one value), float32 ones only the sum's order."""
    return 1e-4 if weights.dtype == torch.float32 else 1e-2


def _check(logits, labels, weights, weight_sum) -> None:
    check_float("logits", logits)
    if labels.numel() != logits.numel():
        raise ValueError(f"bce_with_logits: labels has {labels.numel()} values, logits {logits.numel()}")
    if labels.requires_grad or (weights is not None and weights.requires_grad):
        raise ValueError("bce_with_logits: labels and weights are constants; detach them (no gradient is computed)")
    if weights is not None:
        check_float("weights", weights)
        if weights.numel() != logits.numel():
            raise ValueError(f"bce_with_logits: weights has {weights.numel()} values, logits {logits.numel()}")
    if weight_sum is not None:
        if weights is None:
            raise ValueError("bce_with_logits: weight_sum given without weights")
        if isinstance(weight_sum, torch.Tensor) and (weight_sum.numel() != 1 or weight_sum.device != logits.device):
            raise ValueError(f"bce_with_logits: weight_sum must be one value on {logits.device}, got "
                             f"{tuple(weight_sum.shape)} on {weight_sum.device}")


def bce_with_logits(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None, *,
    weight_sum: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Weighted-mean BCE with logits (float32 scalar); Triton on CUDA, the reference on CPU.

    weight_sum: sum(weights) when the caller already has it (a tensor of one value on the logits' device,
    or a float); the kernel then reads the weights once instead of twice, and returns NaN if it is wrong.
    """
    _check(logits, labels, weights, weight_sum)
    if not use_triton(logits, labels, weights):
        return bce_reference(logits, labels, weights, weight_sum)
    if weight_sum is not None:
        weight_sum = torch.as_tensor(weight_sum, dtype=torch.float32, device=logits.device).reshape(1)
    return _FusedBCE.apply(logits, labels, weights, weight_sum)


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
        logits_ptr, labels_ptr, weights_ptr, weight_sum_ptr, grad_ptr, partial_ptr, n_elements, n_blocks,
        n_steps, HAS_WEIGHTS: tl.constexpr, SUM_WEIGHTS: tl.constexpr, STORE_GRAD: tl.constexpr, BLOCK: tl.constexpr,
    ):
        # partial_ptr: [P] loss partials, then (SUM_WEIGHTS) [P] partial sums of the weights read.
        pid, n_programs = tl.program_id(0), tl.num_programs(0)
        if HAS_WEIGHTS:
            inv_weight_sum = 1.0 / tl.load(weight_sum_ptr)
        else:
            inv_weight_sum = 1.0 / n_elements  # n_elements may be the constexpr 1
        loss_acc = tl.zeros((BLOCK,), dtype=tl.float32)
        weight_acc = tl.zeros((BLOCK,), dtype=tl.float32)
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
            if SUM_WEIGHTS:
                weight_acc += w
            if STORE_GRAD:
                sigmoid = tl.where(z >= 0, 1.0, t) / u  # sigmoid(z) from the same e^-|z|
                grad = (sigmoid - y) * w * inv_weight_sum
                tl.store(grad_ptr + offsets, grad.to(grad_ptr.dtype.element_ty), mask=mask)
            step += 1
        tl.store(partial_ptr + pid, tl.sum(loss_acc, axis=0) * inv_weight_sum)
        if SUM_WEIGHTS:
            tl.store(partial_ptr + n_programs + pid, tl.sum(weight_acc, axis=0))

    @triton.jit
    def _finish_kernel(partial_ptr, weight_sum_ptr, loss_ptr, check_ptr, n_programs, rtol,
                       CHECK: tl.constexpr, BLOCK: tl.constexpr):
        # One program: the loss as the sum of the partials in a fixed order; with CHECK, the weights' sum
        # against the caller's weight_sum -> check = 1 (agree) or NaN (loss and gradient poisoned).
        loss_acc = tl.zeros((BLOCK,), dtype=tl.float32)
        weight_acc = tl.zeros((BLOCK,), dtype=tl.float32)
        first = 0
        while first < n_programs:  # while: see _partial_sum_kernel
            offsets = first + tl.arange(0, BLOCK)
            mask = offsets < n_programs
            loss_acc += tl.load(partial_ptr + offsets, mask=mask, other=0.0)
            if CHECK:
                weight_acc += tl.load(partial_ptr + n_programs + offsets, mask=mask, other=0.0)
            first += BLOCK
        check = 1.0
        if CHECK:
            weight_sum = tl.load(weight_sum_ptr)
            check = tl.where(tl.abs(tl.sum(weight_acc, axis=0) - weight_sum) > rtol * tl.abs(weight_sum),
                             float("nan"), 1.0)
            tl.store(check_ptr, check)
        tl.store(loss_ptr, tl.sum(loss_acc, axis=0) * check)

    @triton.jit
    def _scale_in_place_kernel(grad_ptr, scale_ptr, check_ptr, n_elements, n_steps, HAS_CHECK: tl.constexpr,
                               BLOCK: tl.constexpr):
        scale = tl.load(scale_ptr).to(tl.float32)
        if HAS_CHECK:
            scale *= tl.load(check_ptr)  # NaN when the caller's weight_sum was wrong
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
# The pass that also sums w (weight_sum given): 2048 values and 4 warps a program ran 180 us on an H200 for 64M
# bfloat16 logits with float32 weights, where 4096 x 16 ran 202 us (and 179 us without the sum).
_CHECK_BLOCK = 2048
_CHECK_WARPS = 4
# Programs per multiprocessor of the persistent grids; 0: one program per block.
_PROGRAMS_PER_SM = 0
_SUM_PROGRAMS_PER_SM = 4


def _grid(n_elements: int, device: torch.device, per_sm: int, block: int = _BLOCK) -> tuple[int, int, int]:
    """(blocks, programs, steps per program) of a grid of `per_sm` programs per multiprocessor, each looping
    over blocks program, program + programs, ...; never more programs than blocks (per_sm 0: one each)."""
    n_blocks = max(1, triton.cdiv(n_elements, block))
    n_programs = n_blocks if per_sm == 0 else min(n_blocks, per_sm * multiprocessor_count(device))
    return n_blocks, n_programs, triton.cdiv(n_blocks, n_programs)


class _FusedBCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, weights, weight_sum):
        z = logits.contiguous().view(-1)
        y = labels.contiguous().view(-1)
        if y.dtype == torch.bool:
            y = y.view(torch.uint8)
        n_elements = z.numel()
        store_grad = ctx.needs_input_grad[0]
        grad = torch.empty_like(z) if store_grad else z  # z is never written when store_grad is False
        check_sum = weight_sum is not None
        block, num_warps = (_CHECK_BLOCK, _CHECK_WARPS) if check_sum else (_BLOCK, _NUM_WARPS)
        n_blocks, n_programs, n_steps = _grid(n_elements, z.device, _PROGRAMS_PER_SM, block)
        partial = torch.empty((2 if check_sum else 1) * n_programs, dtype=torch.float32, device=z.device)
        loss = torch.empty((), dtype=torch.float32, device=z.device)
        check = torch.empty(1, dtype=torch.float32, device=z.device) if check_sum else partial  # unused
        if weights is not None:
            w = weights.contiguous().view(-1)
            if weight_sum is None:
                _, sum_programs, sum_steps = _grid(n_elements, z.device, _SUM_PROGRAMS_PER_SM)
                weight_partial = torch.empty(sum_programs, dtype=torch.float32, device=z.device)
                _partial_sum_kernel[(sum_programs,)](w, weight_partial, n_elements, sum_steps, BLOCK=_BLOCK,
                                                     num_warps=_NUM_WARPS)
                weight_sum = weight_partial.sum()  # fixed order: deterministic
        else:
            w, weight_sum = z, partial  # unused: HAS_WEIGHTS is False
        _bce_forward_kernel[(n_programs,)](
            z, y, w, weight_sum, grad, partial, n_elements, n_blocks, n_steps,
            HAS_WEIGHTS=weights is not None, SUM_WEIGHTS=check_sum, STORE_GRAD=store_grad, BLOCK=block,
            num_warps=num_warps,
        )
        # One step over all partials (32768 at 64M values): a loop of dependent steps would cost microseconds.
        finish_block = min(32768, next_power_of_2(n_programs))
        _finish_kernel[(1,)](partial, weight_sum, loss, check, n_programs,
                             _weight_sum_rtol(w) if check_sum else 0.0, CHECK=check_sum, BLOCK=finish_block,
                             num_warps=32 if finish_block >= 16384 else 4)
        if store_grad:
            ctx.save_for_backward(grad, check)
        ctx.has_check = check_sum
        ctx.logits_shape = logits.shape
        ctx.backward_done = False
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        if ctx.backward_done:
            raise RuntimeError("bce_with_logits: backward ran twice through one graph (retain_graph); the fused "
                               "gradient is scaled in place, so call the loss again instead")
        ctx.backward_done = True
        grad, check = ctx.saved_tensors
        n_elements = grad.numel()
        scale = grad_loss.reshape(1).to(torch.float32)
        _, n_programs, n_steps = _grid(n_elements, grad.device, max(1, _PROGRAMS_PER_SM))
        _scale_in_place_kernel[(n_programs,)](grad, scale, check, n_elements, n_steps, HAS_CHECK=ctx.has_check,
                                              BLOCK=_BLOCK, num_warps=_NUM_WARPS)
        return grad.view(ctx.logits_shape), None, None, None
