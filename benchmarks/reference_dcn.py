"""The plain PyTorch DCNv2-style ranker of issue 6: the baseline the rankflow ranker must beat.

26 sparse features x 100k rows x dim 64 (one nn.Embedding each, dense gradients), 13 dense features,
3 low-rank cross layers of rank 256 (x_{l+1} = x_0 * (V(U x_l) + b) + x_l), MLP 1024-1024-512 (ReLU),
a logit head; BCE with logits, fused Adam over every parameter, bf16 autocast. Nothing here is
rankflow code on purpose: it is what a team would write first.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class ReferenceShape:
    sparse_features: int = 26
    rows_per_table: int = 100_000
    embedding_dim: int = 64
    dense_features: int = 13
    cross_layers: int = 3
    cross_rank: int = 256
    mlp: tuple[int, ...] = (1024, 1024, 512)


class ReferenceDCN(nn.Module):
    def __init__(self, shape: ReferenceShape = ReferenceShape()):
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(shape.rows_per_table, shape.embedding_dim)
                                    for _ in range(shape.sparse_features))
        dim = shape.sparse_features * shape.embedding_dim + shape.dense_features
        self.down = nn.ModuleList(nn.Linear(dim, shape.cross_rank, bias=False) for _ in range(shape.cross_layers))
        self.up = nn.ModuleList(nn.Linear(shape.cross_rank, dim) for _ in range(shape.cross_layers))
        layers, width = [], dim
        for out in shape.mlp:
            layers += [nn.Linear(width, out), nn.ReLU()]
            width = out
        self.mlp = nn.Sequential(*layers, nn.Linear(width, 1))

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        embedded = [table(sparse[:, i]) for i, table in enumerate(self.tables)]
        x0 = torch.cat([*embedded, dense], dim=1)
        x = x0
        for down, up in zip(self.down, self.up):
            x = x0 * up(down(x)) + x
        return self.mlp(x).squeeze(-1)


def reference_step(model: nn.Module, optimizer: torch.optim.Optimizer, sparse, dense, labels) -> torch.Tensor:
    """One training step: forward (bf16 autocast), BCE, backward, fused Adam."""
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(sparse, dense)
    loss = F.binary_cross_entropy_with_logits(logits.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss
