"""The wide part (Wide & Deep, Cheng et al. 2016, arXiv 1606.07792): a linear logit over the ranker's inputs.

    s_wide = sum_f w_f[row_f] + sum_bags mean_{v in B} w_B[row(v)] + beta^T x_dense + c

with one free scalar per hashed id (member, job, company, ...), per bag value and per standardised dense
column. On its own it is the logistic-regression baseline (logistic.py); added to the deep tower's logit
(model.py, `RankerConfig.wide`) it lets the ranker learn at least what that baseline learns: a
per-member or per-job bias fits directly here instead of having to pass through the embeddings, the
cross layers and the gated MLP, which the deep part alone fitted more slowly than the baseline on the
demo marketplace (benchmarks/results/ranker-quality-*.md).

The scalars start at zero (the deep part decides the first steps) and are trained by the same sparse
optimiser as the embedding tables (row-wise Adagrad).
"""

from __future__ import annotations

import torch
from torch import nn

from training.ranker.embeddings import EmbeddingBags, HashedEmbeddings


class WideLinear(nn.Module):
    """s_wide = sum_f w_f[row_f] + sum_B mean_{v in B} w_B[row(v)] + beta^T x_dense + c."""

    def __init__(self, sparse_buckets: list[int], bag_buckets: list[int], dense_dim: int, sparse_gradients: bool = True):
        super().__init__()
        self.embeddings = HashedEmbeddings(list(sparse_buckets), 1, sparse=sparse_gradients, init_std=0.0)
        self.bags = EmbeddingBags(list(bag_buckets), 1, sparse=sparse_gradients, init_std=0.0)
        self.dense = nn.Linear(dense_dim, 1)
        nn.init.zeros_(self.dense.weight)

    def table_parameters(self) -> list[nn.Parameter]:
        """The per-id scalars (sparse row gradients)."""
        return [self.embeddings.weight, *(t.weight for t in self.bags.tables)]

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor, bag_values=(), bag_offsets=()) -> torch.Tensor:
        """sparse [B, F] hashed ids, dense [B, D] already standardised, bags as (values, offsets) -> [B]."""
        logit = self.embeddings(sparse).sum((1, 2)) + self.dense(dense).squeeze(-1)
        if self.bags.tables:
            logit = logit + self.bags(list(bag_values), list(bag_offsets)).sum((1, 2))
        return logit
