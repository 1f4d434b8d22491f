"""Dense-feature standardisation, frozen into the model so training and serving agree.

Counts and rates from the feature store are heavy-tailed; each dense column j is compressed and then
standardised with statistics estimated once on training rows (and kept by warm starts):

    u_j = sign(x_j) log(1 + |x_j|),      x'_j = (u_j - mean_j) / std_j
"""

from __future__ import annotations

import torch
from torch import nn


class DenseNormalizer(nn.Module):
    """x' = (sign(x) log1p|x| - mean) / std with buffers set by `fit`."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @staticmethod
    def compress(dense: torch.Tensor) -> torch.Tensor:
        return torch.sign(dense) * torch.log1p(dense.abs())

    @torch.no_grad()
    def fit(self, dense: torch.Tensor) -> None:
        if dense.shape[1] == 0:
            return
        u = self.compress(dense.float())
        self.mean.copy_(u.mean(0))
        # A constant column (std 0) passes through centred rather than exploding.
        self.std.copy_(u.std(0, unbiased=False).clamp_min(1e-3))

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        return (self.compress(dense) - self.mean) / self.std
