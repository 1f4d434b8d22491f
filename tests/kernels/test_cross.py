"""kernels.cross: fused low-rank cross tail vs the PyTorch reference, forward and every gradient."""

import pytest
import torch
from kernel_testing import TOLERANCE, relative_error, sizes

from kernels.cross import cross_reference, cross_tail

# Widths: odd; narrow (many rows per flat block, modulo path); 520 and 1677 (a block crosses a few row ends;
# 520 = 8 * 65 gives 65 backward programs, each looping over several blocks under the interpreter).
SHAPES = sizes(cpu=[(37, 53), (3, 5, 129), (300, 520)], gpu=[(8191, 1677), (1000, 3, 257), (4099, 4099)])


def _inputs(shape, dtype, device, projected_dtype=None):
    d = shape[-1]
    make = lambda s, dt: torch.randn(s, dtype=dt, device=device, requires_grad=True)  # noqa: E731
    return make(shape, dtype), make(shape, projected_dtype or dtype), make((d,), dtype), make(shape, dtype)


def _run(fn, inputs, grad):
    out = fn(*inputs)
    out.backward(grad)
    return out, [t.grad for t in inputs]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_forward_and_gradients_match_reference(shape, dtype, device, triton_backend):
    ours = _inputs(shape, dtype, device)
    ref = [t.detach().clone().requires_grad_() for t in ours]
    grad = torch.randn(shape, dtype=dtype, device=device)
    out, grads = _run(cross_tail, ours, grad)
    out_ref, grads_ref = _run(cross_reference, ref, grad)
    assert out.dtype == dtype
    assert relative_error(out, out_ref) < TOLERANCE[dtype]
    for name, g, g_ref in zip(("x0", "projected", "bias", "residual"), grads, grads_ref):
        assert relative_error(g, g_ref) < TOLERANCE[dtype], name


def test_mixed_precision_under_autocast_promotes_and_keeps_each_grad_dtype(device, triton_backend):
    x0, projected, bias, residual = _inputs((29, 71), torch.float32, device, projected_dtype=torch.bfloat16)
    out = cross_tail(x0, projected, bias, residual)
    assert out.dtype == torch.float32
    out.sum().backward()
    assert projected.grad.dtype == torch.bfloat16 and x0.grad.dtype == torch.float32
    refs = [t.detach().clone().requires_grad_() for t in (x0, projected, bias, residual)]
    expected = cross_reference(*refs)
    assert relative_error(out, expected) < 1e-5
    expected.sum().backward()
    # float32 bias under a bf16 projection: its gradient is summed in float32, not from rounded d projected.
    assert bias.grad.dtype == torch.float32 and relative_error(bias.grad, refs[2].grad) < 1e-5


def test_bias_gradient_is_bitwise_deterministic(device, triton_backend):
    inputs = _inputs(sizes(cpu=(301, 19), gpu=(65537, 1677)), torch.float32, device)
    grad = torch.randn_like(inputs[0])
    first = torch.autograd.grad(cross_tail(*inputs), inputs[2], grad)[0]
    second = torch.autograd.grad(cross_tail(*inputs), inputs[2], grad)[0]
    assert torch.equal(first, second)


def test_shape_mismatch_is_refused(device):
    x = torch.randn(4, 8, device=device)
    with pytest.raises(ValueError, match="bias must have shape"):
        cross_tail(x, x, torch.randn(7, device=device), x)
