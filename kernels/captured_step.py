"""A whole training step (forward, backward, optimiser steps) captured once as a CUDA graph and
replayed for every later batch of the same shape.

At the ranker's baseline shape the eager step launches a few hundred small kernels; Python and
the launch path take longer than the GPU needs to run them (benchmarks/README.md, "Profile").
A replayed graph launches them all at once, so wall time falls to the GPU's own time.

Every call is exactly one training step on the given batch:
- the first `warmup_steps` calls run eagerly on a side stream (Triton JIT, cuBLAS handles,
  optimiser state and torch.compile's first runs must happen outside capture);
- the next call zeroes the optimisers' gradients to None, captures `step(*static_inputs)` into a
  graph (capture runs nothing), then replays it on this call's batch;
- every later call copies its batch into the static input buffers and replays.

`step` must not synchronise with the host (no `.item()`, no data-dependent shapes, no printing of
tensors) and every input must keep its shape and dtype: a batch of another shape is refused,
with a message (pad the last partial batch with weight-0 rows: the weighted loss, the dense
gradients and the row-wise Adagrad update are then exactly those of the unpadded batch).
Optimisers must be built with `capturable=True` (fused Adam is). The returned loss is a fresh
tensor (a copy of the graph's static output), safe to keep across steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


class CapturedStep:
    """Run `step(*inputs) -> loss` eagerly `warmup_steps` times, then as a replayed CUDA graph."""

    def __init__(
        self,
        step: Callable[..., torch.Tensor],
        optimizers: Sequence[torch.optim.Optimizer] = (),
        warmup_steps: int = 3,
    ) -> None:
        if warmup_steps < 1:
            raise ValueError(f"CapturedStep needs at least one eager warm-up step, got warmup_steps={warmup_steps}")
        for optimizer in optimizers:
            if not all(group.get("capturable", False) for group in optimizer.param_groups):
                raise ValueError(
                    f"CapturedStep: {type(optimizer).__name__} must be built with capturable=True "
                    "(its step counter has to live on the GPU inside a CUDA graph)"
                )
        self.step = step
        self.optimizers = list(optimizers)
        self.warmup_steps = warmup_steps
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self._static_inputs: list[torch.Tensor] = []
        self._static_loss: torch.Tensor | None = None
        self._side_stream: torch.cuda.Stream | None = None

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        if not inputs or not all(isinstance(t, torch.Tensor) and t.is_cuda for t in inputs):
            raise ValueError("CapturedStep takes CUDA tensors only (a CUDA graph cannot read host memory)")
        self.calls += 1
        if self.graph is None:
            if self.calls <= self.warmup_steps:
                return self._eager(inputs)
            self._capture(inputs)
        else:
            self._check_static(inputs)
        for static, batch in zip(self._static_inputs, inputs):
            static.copy_(batch, non_blocking=True)
        self.graph.replay()
        return self._static_loss.detach().clone()

    def _eager(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        if self._side_stream is None:
            self._side_stream = torch.cuda.Stream()
        self._side_stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self._side_stream):
            loss = self.step(*inputs).detach()
        torch.cuda.current_stream().wait_stream(self._side_stream)
        return loss

    def _capture(self, inputs: Sequence[torch.Tensor]) -> None:
        self._static_inputs = [torch.empty_like(t) for t in inputs]
        # Gradients left from the warm-up would be accumulated into (and re-accumulated on every
        # replay); as None, the captured backward allocates them in the graph's pool and overwrites.
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._static_loss = self.step(*self._static_inputs)

    def _check_static(self, inputs: Sequence[torch.Tensor]) -> None:
        if len(inputs) != len(self._static_inputs):
            raise ValueError(f"CapturedStep was captured with {len(self._static_inputs)} inputs, got {len(inputs)}")
        for position, (static, batch) in enumerate(zip(self._static_inputs, inputs)):
            if static.shape != batch.shape or static.dtype != batch.dtype:
                raise ValueError(
                    f"CapturedStep input {position}: captured as {tuple(static.shape)} {static.dtype}, got "
                    f"{tuple(batch.shape)} {batch.dtype}; a CUDA graph replays fixed shapes (pad the batch "
                    "with weight-0 rows, or run this batch through the eager step)"
                )
