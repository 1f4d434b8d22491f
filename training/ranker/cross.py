"""Residual DCN (LiRank, arXiv 2402.06859, "Residual DCN"): DCNv2 low-rank cross layers with
attention-style mixing inside the low-rank space and a residual connection around each layer.

One layer l, with x_0 the input row (embeddings ++ dense features), x_l the layer input, rank r:

    v = V_l x_l,  q = Q_l x_l,  k = K_l x_l                      (V_l, Q_l, K_l in R^{r x d})
    z = v + softmax(q k^T / tau) v                               (attention over the r low-rank
                                                                  coordinates, with its own skip)
    x_{l+1} = x_0 * (U_l z + b_l) + x_l                          (U_l in R^{d x r}; DCNv2 eq. 1)

DCNv2 is the special case z = v (`attention=False`): the paper duplicates the low-rank map into
value, query and key and inserts the attention score matrix between the two low-rank maps. The
r x r score matrix per row is never materialised: it is scaled-dot-product attention over a
"sequence" of r positions with a 1-wide head, which `F.scaled_dot_product_attention` computes in
O(r) memory (the head is zero-padded to 8 so the fused GPU kernels accept it; zeros add nothing to
q.k and the padded value columns are dropped).

The elementwise tail x_0 * (p + b) + x_l is `kernels.cross.cross_tail` (fused in Triton on GPU).
x_0 and x_l may carry trailing zero columns (the Tower aligns the width to a multiple of 8 for the
tensor cores, kernels.alignment): U, V, Q, K and b are zero-padded to match, so the real columns
follow the equation above and the padding columns stay exactly zero (x_0 is zero there).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from kernels.alignment import pad_columns, padded_linear
from kernels.cross import cross_tail


_HEAD_PAD = 8


def low_rank_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale) v for each row, q, k, v in R^{B x r} -> R^{B x r}, in O(B r) memory."""
    batch, rank = value.shape

    def as_sequence(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t.unsqueeze(-1), (0, _HEAD_PAD - 1)).view(batch, 1, rank, _HEAD_PAD)

    mixed = F.scaled_dot_product_attention(as_sequence(query), as_sequence(key), as_sequence(value), scale=scale)
    return mixed[..., 0].reshape(batch, rank)


class ResidualCrossLayer(nn.Module):
    """x_{l+1} = x_0 * (U z + b) + x_l with z = v (+ softmax(q k^T / tau) v when attention is on)."""

    def __init__(self, dim: int, rank: int, attention: bool = True, temperature: float = 1.0):
        super().__init__()
        self.rank = rank
        self.attention = attention
        self.scale = 1.0 / temperature
        # V, Q, K stacked in one matrix: one GEMM produces all three low-rank maps.
        self.down = nn.Linear(dim, rank * (3 if attention else 1), bias=False)
        self.up = nn.Linear(rank, dim, bias=False)
        self.bias = nn.Parameter(torch.zeros(dim))
        nn.init.normal_(self.down.weight, std=1.0 / math.sqrt(dim))
        nn.init.normal_(self.up.weight, std=1.0 / math.sqrt(rank))

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        width = x.shape[-1]  # >= dim: trailing zero columns are alignment padding
        low = padded_linear(x, self.down.weight)
        if self.attention:
            value, query, key = low.split(self.rank, dim=-1)
            z = value + low_rank_attention(query, key, value, self.scale)
        else:
            z = low
        return cross_tail(x0, padded_linear(z, self.up.weight, out_width=width), pad_columns(self.bias, width), x)


class ResidualCross(nn.Module):
    """A stack of `layers` Residual DCN layers over the same x_0."""

    def __init__(self, dim: int, layers: int, rank: int, attention: bool = True, temperature: float = 1.0):
        super().__init__()
        self.layers = nn.ModuleList(ResidualCrossLayer(dim, rank, attention, temperature) for _ in range(layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in self.layers:
            x = layer(x0, x)
        return x
