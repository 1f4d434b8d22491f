"""Row-wise Adagrad: the sparse optimiser of the embedding tables (DLRM / TorchRec's default).

For each table row i touched by the batch, with g_i its gradient row (width d):

    g_i <- g_i + lambda E_i                (optional L2, on touched rows only: frequent rows decay more)
    a_i <- a_i + mean_j g_ij^2            (one accumulator per row, not per coordinate: d x less state)
    E_i <- E_i - lr * g_i / (sqrt(a_i) + eps)

Rows the batch did not touch are neither read nor written, so a step costs O(rows in batch), not
O(table). Sparse (COO) gradients are used as they are; dense gradients (under torchrun without the fused
tables, where gradients are averaged as dense tensors) are reduced to their non-zero rows first - for an
untouched row g_i = 0 and the update is the identity either way, so both paths give the same result.
"""

from __future__ import annotations

import torch


class RowWiseAdagrad(torch.optim.Optimizer):
    """Row-wise Adagrad for 2-D embedding weights with sparse or dense gradients."""

    def __init__(self, params, lr: float = 0.05, eps: float = 1e-8, initial_accumulator: float = 0.0,
                 weight_decay: float = 0.0, accumulators: dict | None = None):
        """`accumulators`: parameter -> float32 [rows] tensor to keep a_i in (updated in place; e.g. the
        tables' `accumulator` buffers, so the state travels with the model); others start at
        `initial_accumulator`."""
        if lr <= 0:
            raise ValueError(f"RowWiseAdagrad: lr must be positive, got {lr}")
        if weight_decay < 0:
            raise ValueError(f"RowWiseAdagrad: weight_decay must be >= 0, got {weight_decay}")
        super().__init__(params, {"lr": lr, "eps": eps, "initial_accumulator": initial_accumulator,
                                  "weight_decay": weight_decay})
        for weight, accumulator in (accumulators or {}).items():
            self.state[weight]["accumulator"] = accumulator

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - torch.optim.Optimizer API
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for weight in group["params"]:
                if weight.grad is None:
                    continue
                if weight.dim() != 2:
                    raise ValueError(f"RowWiseAdagrad expects 2-D embedding tables, got shape {tuple(weight.shape)}")
                state = self.state[weight]
                if "accumulator" not in state:
                    state["accumulator"] = torch.full(
                        (weight.shape[0],), group["initial_accumulator"], dtype=torch.float32, device=weight.device
                    )
                grad = weight.grad
                if grad.is_sparse:
                    grad = grad.coalesce()
                    rows, values = grad.indices()[0], grad.values()
                else:
                    rows = grad.ne(0).any(dim=1).nonzero().squeeze(1)
                    values = grad.index_select(0, rows)
                if rows.numel() == 0:
                    continue
                values = values.float()
                if group["weight_decay"]:
                    values = values + group["weight_decay"] * weight.index_select(0, rows).float()
                accumulator = state["accumulator"]
                updated = accumulator.index_select(0, rows) + values.pow(2).mean(dim=1)
                accumulator.index_copy_(0, rows, updated)
                step = values * (group["lr"] / (updated.sqrt() + group["eps"])).unsqueeze(1)
                weight.index_add_(0, rows, -step.to(weight.dtype))
        return loss
