"""Isotonic calibration layer (LiRank, arXiv 2402.06859, "Isotonic Calibration Layer").

A monotone, piecewise-linear map from the ranker's logit s to a probability, with knots b_1 < .. < b_K
in logit space and non-negative slopes, so the ranking order is never changed:

    p(s) = c + sum_{k=1}^{K-1} w_k * clamp(s - b_k, 0, b_{k+1} - b_k),     w_k >= 0

(below b_1 p = c, above b_K p = c + sum_k w_k (b_{k+1} - b_k)). LiRank trains the bucket weights
inside the model; here the layer is fitted on held-out rows so predicted probabilities match
observed rates: the held-out logits are grouped into at most `max_knots` weighted quantile bins,
the bin rates are made non-decreasing by pool-adjacent-violators (weighted isotonic regression),
and each pooled block becomes one knot (its mean logit, its observed rate). Between knots the map
interpolates linearly. Buffers have a fixed size (`max_knots`; unused knots repeat the last one and
contribute zero-width intervals) so a checkpoint always loads into the same shapes.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

_PROBABILITY_FLOOR = 1e-6


def pool_adjacent_violators(values: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted isotonic (non-decreasing) regression of `values` in their given order.

    Returns (block_values, block_weights, block_index_of_each_input).
    """
    block_values: list[float] = []
    block_weights: list[float] = []
    block_sizes: list[int] = []
    for value, weight in zip(values.tolist(), weights.tolist()):
        block_values.append(value)
        block_weights.append(weight)
        block_sizes.append(1)
        while len(block_values) > 1 and block_values[-2] > block_values[-1]:
            total = block_weights[-2] + block_weights[-1]
            merged = (block_values[-2] * block_weights[-2] + block_values[-1] * block_weights[-1]) / total
            size = block_sizes[-2] + block_sizes[-1]
            del block_values[-1], block_weights[-1], block_sizes[-1]
            block_values[-1], block_weights[-1], block_sizes[-1] = merged, total, size
    index = np.repeat(np.arange(len(block_sizes)), block_sizes)
    return np.asarray(block_values), np.asarray(block_weights), index


class IsotonicCalibration(nn.Module):
    """p(s) = c + sum_k w_k clamp(s - b_k, 0, b_{k+1} - b_k); identity sigmoid until fitted."""

    def __init__(self, max_knots: int = 64):
        super().__init__()
        if max_knots < 2:
            raise ValueError(f"isotonic calibration needs at least 2 knots, got {max_knots}")
        self.max_knots = max_knots
        self.register_buffer("knots", torch.zeros(max_knots, dtype=torch.float64))
        self.register_buffer("slopes", torch.zeros(max_knots - 1, dtype=torch.float64))
        self.register_buffer("intercept", torch.zeros((), dtype=torch.float64))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated probabilities for raw logits (any shape)."""
        if not bool(self.fitted):
            return torch.sigmoid(logits.float())
        s = logits.double().unsqueeze(-1)
        widths = self.knots[1:] - self.knots[:-1]
        covered = torch.minimum(torch.clamp(s - self.knots[:-1], min=0.0), widths)
        probability = self.intercept + (covered * self.slopes).sum(-1)
        return probability.clamp(_PROBABILITY_FLOOR, 1 - _PROBABILITY_FLOOR).float()

    @torch.no_grad()
    def fit(self, logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> "IsotonicCalibration":
        """Fit the knots on held-out (logit, label, weight) rows; returns self."""
        s = logits.detach().double().cpu().numpy().ravel()
        y = labels.detach().double().cpu().numpy().ravel()
        w = np.ones_like(s) if weights is None else weights.detach().double().cpu().numpy().ravel()
        if s.size < 2 or not np.isfinite(s).all():
            raise ValueError(f"isotonic calibration needs >= 2 finite held-out logits, got {s.size}")
        order = np.argsort(s, kind="stable")
        s, y, w = s[order], y[order], w[order]
        # Weighted quantile bins: each holds ~1/max_knots of the held-out weight.
        cumulative = np.cumsum(w) / w.sum()
        bin_of_row = np.minimum((cumulative * self.max_knots).astype(np.int64), self.max_knots - 1)
        bins, bin_of_row = np.unique(bin_of_row, return_inverse=True)
        bin_weight = np.bincount(bin_of_row, weights=w)
        bin_rate = np.bincount(bin_of_row, weights=w * y) / bin_weight
        bin_logit = np.bincount(bin_of_row, weights=w * s) / bin_weight
        rates, block_weight, block_of_bin = pool_adjacent_violators(bin_rate, bin_weight)
        centres = np.bincount(block_of_bin, weights=bin_logit * bin_weight) / block_weight
        if rates.size == 1:  # constant map: one knot, flat
            centres, rates = np.array([centres[0], centres[0] + 1.0]), np.array([rates[0], rates[0]])
        knots = np.concatenate([centres, np.full(self.max_knots - centres.size, centres[-1])])
        slopes = np.zeros(self.max_knots - 1)
        slopes[: rates.size - 1] = np.diff(rates) / np.maximum(np.diff(centres), 1e-12)
        self.knots.copy_(torch.from_numpy(knots))
        self.slopes.copy_(torch.from_numpy(slopes))
        self.intercept.fill_(float(rates[0]))
        self.fitted.fill_(True)
        return self
