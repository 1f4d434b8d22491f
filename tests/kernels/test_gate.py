"""kernels.gate: fused dense gate vs the PyTorch reference, forward and both gradients."""

import pytest
import torch
from kernel_testing import TOLERANCE, relative_error, sizes

from kernels.gate import dense_gate, gate_reference

SHAPES = sizes(cpu=[(37, 53), (5001,)], gpu=[(8191, 1023), (3, 1000, 513)])


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_forward_and_gradients_match_reference(shape, dtype, device, triton_backend):
    hidden = torch.randn(shape, dtype=dtype, device=device, requires_grad=True)
    logits = (3 * torch.randn(shape, dtype=dtype, device=device)).requires_grad_()
    hidden_ref, logits_ref = (t.detach().clone().requires_grad_() for t in (hidden, logits))
    grad = torch.randn(shape, dtype=dtype, device=device)
    out = dense_gate(hidden, logits)
    out.backward(grad)
    expected = gate_reference(hidden_ref, logits_ref)
    expected.backward(grad)
    assert out.dtype == dtype
    assert relative_error(out, expected) < TOLERANCE[dtype]
    assert relative_error(hidden.grad, hidden_ref.grad) < TOLERANCE[dtype]
    assert relative_error(logits.grad, logits_ref.grad) < TOLERANCE[dtype]


def test_gate_saturates_to_hidden_and_zero(device, triton_backend):
    hidden = torch.randn(2, 300, device=device)
    logits = torch.cat([torch.full((1, 300), 40.0), torch.full((1, 300), -40.0)]).to(device)
    out = dense_gate(hidden, logits)
    assert torch.allclose(out[0], hidden[0]) and out[1].abs().max() < 1e-15


def test_mismatched_shapes_are_refused(device):
    with pytest.raises(ValueError, match="must match"):
        dense_gate(torch.randn(3, 4, device=device), torch.randn(4, device=device))
