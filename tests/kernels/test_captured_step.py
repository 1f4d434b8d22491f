"""kernels.captured_step: a replayed CUDA graph trains exactly like the eager step (GPU), and
refuses what a graph cannot replay."""

import pytest
import torch
from kernel_testing import HAS_CUDA

from kernels.captured_step import CapturedStep


def test_an_optimiser_that_cannot_be_captured_is_refused():
    weight = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="capturable=True"):
        CapturedStep(lambda x: x.sum(), [torch.optim.Adam([weight], capturable=False)])


def test_host_tensors_are_refused():
    with pytest.raises(ValueError, match="CUDA tensors only"):
        CapturedStep(lambda x: x.sum())(torch.zeros(3))


def _training(captured: bool, batches):
    from kernels.bce import bce_with_logits
    from kernels.cross import cross_tail

    torch.manual_seed(0)
    layer = torch.nn.Linear(24, 24).cuda()
    head = torch.nn.Linear(24, 1).cuda()
    bias = torch.nn.Parameter(torch.zeros(24, device="cuda"))
    params = [*layer.parameters(), *head.parameters(), bias]
    optimizer = torch.optim.Adam(params, lr=1e-2, fused=True, capturable=captured)

    def step(x, y):
        with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
            hidden = cross_tail(x, layer(x), bias, x)
            logits = head(hidden).squeeze(-1)
        loss = bce_with_logits(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    run = CapturedStep(step, [optimizer], warmup_steps=2) if captured else step
    losses = torch.stack([run(x, y) for x, y in batches]).cpu()
    return losses, [p.detach().clone() for p in params], run


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_replayed_steps_follow_the_eager_steps():
    generator = torch.Generator(device="cuda").manual_seed(1)
    batches = [(torch.randn(1000, 24, device="cuda", generator=generator),
                (torch.rand(1000, device="cuda", generator=generator) < 0.3).float()) for _ in range(12)]
    eager_losses, eager_params, _ = _training(False, batches)
    graph_losses, graph_params, captured = _training(True, batches)
    assert captured.captured and captured.calls == 12
    assert eager_losses[-1] < eager_losses[0]  # it trains
    torch.testing.assert_close(graph_losses, eager_losses, rtol=1e-4, atol=1e-5)
    for p, q in zip(graph_params, eager_params):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="captured as \\(1000, 24\\)"):
        captured(torch.randn(999, 24, device="cuda"), torch.zeros(999, device="cuda"))
