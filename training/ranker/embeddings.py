"""Hashed embedding tables for unbounded id spaces, and mean-pooled bags for multi-valued features.

Every single-valued sparse feature f (member, job, company, industry, ...) is hashed into its own
block of rows of ONE table (TorchRec's "fused tables"): for raw value v,

    row_f(v) = offset_f + 1 + (hash(v) mod (buckets_f - 1)),      row offset_f = missing / null,
    e_f      = E[row_f(v)]                                          E in R^{(sum_f buckets_f) x d}

so all of them are gathered by a single lookup. A multi-valued feature (skills) is a bag
B = {v_1..v_n}; its embedding is the mean  e_B = (1/n) sum_i E_B[row(v_i)]  (zero for an empty bag).

Hashing itself happens in `training.ranker.data` (deterministic across processes); this module
only sees row ids. The tables are trained by row-wise Adagrad, separate from the dense optimiser,
in one of two ways (training.ranker.train chooses):
- fused: `enable_fused_optimizer` routes training lookups through
  `kernels.embedding.FusedEmbeddingBag`, which applies the row-wise Adagrad step (with the optional L2 on
  the touched rows) inside the backward on the same storage; no gradient tensor for the table is ever built.
  Under torchrun the backward gathers every rank's rows first, so the replicated tables stay equal;
- row gradients (`sparse=True`, or dense under torchrun, averaged over ranks) consumed by `optim.RowWiseAdagrad`.
Either way the parameter is `weight`, so checkpoints do not depend on how a model was trained.

The optimiser's per-row accumulator a_i (optim.py) lives beside each table as the buffer `accumulator`,
saved in checkpoints: a warm start (LiRank, "Incremental Training") continues the same row-wise Adagrad
instead of restarting it. Restarted, every row's first step is lr * g_i / |g_i|, a full `lr` in each
coordinate whatever the gradient, and one day of such steps undid what the serving model had learned
(next-day AUC below the serving model's on the demo marketplace).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from kernels.embedding import FusedEmbeddingBag


def _fused_table(weight: nn.Parameter, accumulator: torch.Tensor, mode: str, lr: float,
                 weight_decay: float = 0.0, process_group=None) -> FusedEmbeddingBag:
    """A FusedEmbeddingBag whose weight and accumulator ARE the table's (updated in place by backward)."""
    fused = FusedEmbeddingBag(1, weight.shape[1], mode=mode, lr=lr, dtype=weight.dtype, device=weight.device,
                              weight_decay=weight_decay, process_group=process_group)
    fused._buffers["weight"] = weight.data
    fused._buffers["momentum"] = accumulator
    fused.num_embeddings = weight.shape[0]
    return fused


class HashedEmbeddings(nn.Module):
    """One table holding a block of `buckets[f]` rows per single-valued feature f."""

    def __init__(self, buckets: list[int], dim: int, sparse: bool = True, init_std: float = 0.01):
        super().__init__()
        if any(b < 2 for b in buckets):
            raise ValueError(f"every feature needs at least 2 hash buckets (one is 'missing'), got {buckets}")
        self.dim = dim
        self.sparse = sparse
        offsets = torch.tensor([0] + list(buckets[:-1]), dtype=torch.long).cumsum(0)
        self.register_buffer("row_offsets", offsets, persistent=False)
        self.weight = nn.Parameter(torch.randn(int(sum(buckets)), dim) * init_std)
        self.register_buffer("accumulator", torch.zeros(int(sum(buckets))))   # row-wise Adagrad's a_i
        self._fused: list[FusedEmbeddingBag] = []   # a list keeps it out of state_dict and .to()

    def enable_fused_optimizer(self, lr: float, weight_decay: float = 0.0, process_group=None) -> None:
        """Train by kernels.embedding's fused row-wise Adagrad (call after moving to the device); with a
        `process_group`, every rank's rows are gathered and every rank applies the same update."""
        self._fused = [_fused_table(self.weight, self.accumulator, "sum", lr, weight_decay, process_group)]

    @property
    def fused(self) -> bool:
        return bool(self._fused)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [B, F] (already hashed into 0..buckets_f-1) -> embeddings [B, F, d].

        In fused training an id of -1 (a padding row's, train.fixed_shape) is no row: a zero embedding, and
        no row is updated for it.
        """
        if self._fused and self.training and torch.is_grad_enabled():
            rows = torch.where(ids < 0, -1, ids + self.row_offsets)
            # Every (row, feature) is a bag of one (no offsets: the kernel gathers rows).
            return self._fused[0](rows.reshape(-1)).view(*rows.shape, self.dim)
        return F.embedding(ids + self.row_offsets, self.weight, sparse=self.sparse)


class EmbeddingBags(nn.Module):
    """One mean-pooled bag table per multi-valued feature."""

    def __init__(self, buckets: list[int], dim: int, sparse: bool = True, init_std: float = 0.01):
        super().__init__()
        self.tables = nn.ModuleList()
        for count in buckets:
            bag = nn.EmbeddingBag(count, dim, mode="mean", sparse=sparse)
            nn.init.normal_(bag.weight, std=init_std)
            bag.register_buffer("accumulator", torch.zeros(count))
            self.tables.append(bag)
        self._fused: list[FusedEmbeddingBag] = []

    def enable_fused_optimizer(self, lr: float, weight_decay: float = 0.0, process_group=None) -> None:
        self._fused = [_fused_table(table.weight, table.accumulator, "mean", lr, weight_decay, process_group)
                       for table in self.tables]

    def forward(self, values: list[torch.Tensor], offsets: list[torch.Tensor]) -> torch.Tensor:
        """values[i] [N_i] row ids, offsets[i] [B] start of each row's bag -> [B, n_bags, d]."""
        if self._fused and self.training and torch.is_grad_enabled():
            # CSR offsets [B + 1]: the end is appended on the device (no host-to-device copy, so the
            # step can be captured in a CUDA graph).
            pooled = [fused(v, F.pad(o, (0, 1), value=v.numel())) for fused, v, o in zip(self._fused, values, offsets)]
        else:
            pooled = [table(v, o) for table, v, o in zip(self.tables, values, offsets)]
        return torch.stack(pooled, dim=1)


def adagrad_accumulators(model: nn.Module) -> dict[nn.Parameter, torch.Tensor]:
    """Every embedding table's weight -> its row-wise Adagrad accumulator buffer, in `model`."""
    pairs: dict[nn.Parameter, torch.Tensor] = {}
    for module in model.modules():
        if isinstance(module, HashedEmbeddings):
            pairs[module.weight] = module.accumulator
        elif isinstance(module, EmbeddingBags):
            pairs.update({table.weight: table.accumulator for table in module.tables})
    return pairs
