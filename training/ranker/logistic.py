"""Logistic regression over exactly the ranker's inputs: the baseline the ranker must beat.

    s = b + sum_f w_f[row_f] + sum_bags mean_{v in B} w_B[row(v)] + beta^T standardise(dense)
          + beta_pos - beta_1                     (the same position term as the ranker's, position.py)

It is `Ranker` with embedding width 1 and nothing between the inputs and the head, so it trains,
evaluates and checkpoints through the same code.
"""

from __future__ import annotations

import torch
from torch import nn

from training.ranker.calibration import IsotonicCalibration
from training.ranker.embeddings import EmbeddingBags, HashedEmbeddings
from training.ranker.model import RankerConfig
from training.ranker.normalization import DenseNormalizer
from training.ranker.position import PositionBias


class LogisticRegression(nn.Module):
    """A linear logit over hashed one-hot ids, bags and standardised dense features."""

    def __init__(self, config: RankerConfig, sparse_gradients: bool = True):
        super().__init__()
        self.config = config
        self.embeddings = HashedEmbeddings(list(config.sparse_buckets), 1, sparse=sparse_gradients, init_std=0.0)
        self.bags = EmbeddingBags(list(config.bag_buckets), 1, sparse=sparse_gradients, init_std=0.0)
        self.normalizer = DenseNormalizer(config.dense_dim)
        self.dense = nn.Linear(config.dense_dim, 1)
        nn.init.zeros_(self.dense.weight)
        self.position = PositionBias(config.max_position) if config.position_feature else None
        self.calibration = IsotonicCalibration(config.calibration_knots)

    def embedding_parameters(self) -> list[nn.Parameter]:
        return [self.embeddings.weight, *(t.weight for t in self.bags.tables)]

    def dense_parameters(self) -> list[nn.Parameter]:
        return list(self.dense.parameters()) + (list(self.position.parameters()) if self.position is not None else [])

    def forward(self, sparse, dense, bag_values=(), bag_offsets=(), position=None) -> torch.Tensor:
        logit = self.embeddings(sparse).sum((1, 2)) + self.dense(self.normalizer(dense)).squeeze(-1)
        if self.config.bag_features:
            logit = logit + self.bags(list(bag_values), list(bag_offsets)).sum((1, 2))
        if self.position is not None:
            logit = logit + self.position(position)
        return logit

    @torch.no_grad()
    def probability(self, *inputs) -> torch.Tensor:
        return self.calibration(self.forward(*inputs))
