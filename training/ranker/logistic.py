"""Logistic regression over exactly the ranker's inputs: the baseline the ranker must beat.

    s = b + sum_f w_f[row_f] + sum_bags mean_{v in B} w_B[row(v)] + beta^T standardise(dense)
          + beta_pos - beta_1                     (the same position term as the ranker's, position.py)

It is the ranker's wide part (wide.py) with the ranker's dense standardisation, position term and
calibration, and nothing else, so it trains, evaluates and checkpoints through the same code.
"""

from __future__ import annotations

import torch
from torch import nn

from training.ranker.calibration import IsotonicCalibration
from training.ranker.model import RankerConfig
from training.ranker.normalization import DenseNormalizer
from training.ranker.position import PositionBias
from training.ranker.wide import WideLinear


class LogisticRegression(WideLinear):
    """A linear logit over hashed one-hot ids, bags and standardised dense features."""

    def __init__(self, config: RankerConfig, sparse_gradients: bool = True):
        super().__init__(list(config.sparse_buckets), list(config.bag_buckets), config.dense_dim, sparse_gradients)
        self.config = config
        self.normalizer = DenseNormalizer(config.dense_dim)
        self.position = PositionBias(config.max_position) if config.position_feature else None
        self.calibration = IsotonicCalibration(config.calibration_knots)

    def embedding_parameters(self) -> list[nn.Parameter]:
        return self.table_parameters()

    def dense_parameters(self) -> list[nn.Parameter]:
        return list(self.dense.parameters()) + (list(self.position.parameters()) if self.position is not None else [])

    def forward(self, sparse, dense, bag_values=(), bag_offsets=(), position=None) -> torch.Tensor:
        logit = super().forward(sparse, self.normalizer(dense), bag_values, bag_offsets)
        if self.position is not None:
            logit = logit + self.position(position)
        return logit

    @torch.no_grad()
    def probability(self, *inputs) -> torch.Tensor:
        return self.calibration(self.forward(*inputs))
