"""kernels.bce: fused sigmoid + weighted BCE (loss and gradient in one pass) vs the reference."""

import pytest
import torch
from kernel_testing import TOLERANCE, relative_error, sizes

from kernels.bce import bce_reference, bce_with_logits

# 20483: six 4096-blocks; the weight pass's four persistent programs (two loop, two idle at the end).
N = sizes(cpu=[1, 9001, 20483], gpu=[1, 8191, 64 * 1024 * 1024 + 7])


@pytest.mark.parametrize("n", N)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("weighted", ["none", "weights", "weights and their sum"])
def test_loss_and_gradient_match_reference(n, dtype, weighted, device, triton_backend):
    logits = (4 * torch.randn(n, device=device)).to(dtype).requires_grad_()
    labels = torch.randint(0, 2, (n,), device=device).float()
    weights = torch.rand(n, device=device) + 0.1 if weighted != "none" else None
    # As a data loader would have it: summed in float64, before the batch reaches the GPU.
    weight_sum = float(weights.double().sum()) if weighted == "weights and their sum" else None
    # The reference in float64: PyTorch's float32 BCE loses ~1e-4 relative to log(1 + e^-|z|) rounding
    # when one large |z| dominates a small loss (n = 1), more than the kernel's own error.
    logits_ref = logits.detach().double().requires_grad_()
    loss = bce_with_logits(logits, labels, weights, weight_sum=weight_sum)
    loss.backward()
    expected = bce_reference(logits_ref, labels, None if weights is None else weights.double())
    expected.backward()
    assert loss.dtype == torch.float32
    # The loss is accumulated in float32 from the same (rounded) logits as the reference: 1e-5 in both dtypes
    # (a kernel summing its per-element losses in bfloat16 would be off by ~1e-3); bfloat16's 1e-2 is for the gradient.
    assert relative_error(loss, expected) < 1e-5
    assert logits.grad.dtype == dtype
    assert relative_error(logits.grad, logits_ref.grad) < TOLERANCE[dtype]


@pytest.mark.parametrize("weights_dtype", [torch.float32, torch.bfloat16])
def test_a_wrong_weight_sum_makes_loss_and_gradient_nan(weights_dtype, device, triton_backend):
    n = sizes(cpu=9001, gpu=1_000_003)
    logits = torch.randn(n, device=device, requires_grad=True)
    labels = torch.randint(0, 2, (n,), device=device).float()
    weights = (torch.rand(n, device=device) + 0.1).to(weights_dtype)
    true_sum = weights.double().sum()
    # Within the weights' own rounding: accepted, and the result is the reference divided by that sum.
    close = true_sum * (1 + 0.2 * (1e-4 if weights_dtype == torch.float32 else 1e-2))
    loss = bce_with_logits(logits, labels, weights, weight_sum=close.float().to(device))
    assert relative_error(loss, bce_reference(logits.detach(), labels, weights, close)) < 1e-5
    # A count instead of a sum (a plausible mistake): NaN in the loss and in the gradient.
    loss = bce_with_logits(logits, labels, weights, weight_sum=float(n))
    (2.0 * loss).backward()
    assert torch.isnan(loss) and torch.isnan(logits.grad).all()


def test_upstream_scale_and_integer_labels(device, triton_backend):
    logits = torch.randn(1000, 1, device=device, requires_grad=True)
    labels = torch.randint(0, 2, (1000, 1), device=device, dtype=torch.int8)
    logits_ref = logits.detach().clone().requires_grad_()
    (3.0 * bce_with_logits(logits, labels)).backward()
    (3.0 * bce_reference(logits_ref, labels)).backward()
    assert logits.grad.shape == (1000, 1)
    assert relative_error(logits.grad, logits_ref.grad) < 1e-5


def test_extreme_logits_stay_finite(device, triton_backend):
    logits = torch.tensor([-200.0, -30.0, 0.0, 30.0, 200.0], device=device, requires_grad=True)
    labels = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0], device=device)
    loss = bce_with_logits(logits, labels)
    loss.backward()
    assert abs(loss.item() - bce_reference(logits.detach(), labels).item()) < 1e-4
    assert torch.isfinite(logits.grad).all()


def test_second_backward_through_one_graph_is_refused(device, triton_backend):
    logits = torch.randn(10, device=device, requires_grad=True)
    loss = bce_with_logits(logits, torch.ones(10, device=device))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()


def test_labels_requiring_grad_are_refused(device):
    with pytest.raises(ValueError, match="constants"):
        bce_with_logits(torch.randn(4, device=device), torch.rand(4, device=device, requires_grad=True))
