"""An optional transformer layer over the feature embeddings (LiRank, arXiv 2402.06859,
"Transformers"): the F sparse-feature embeddings of a row are a sequence of F tokens, and a
pre-norm encoder layer lets every feature attend to every other before they are flattened into x_0.

    h   = e + MultiHeadAttention(LN(e))          e in R^{F x d}
    out = h + W_2 relu(W_1 LN(h))
"""

from __future__ import annotations

import torch
from torch import nn


class FeatureTransformer(nn.Module):
    """`layers` pre-norm encoder layers over [B, F, d] feature embeddings (no dropout: determinism)."""

    def __init__(self, dim: int, heads: int = 2, layers: int = 1, ffn_multiplier: int = 2):
        super().__init__()
        if dim % heads:
            raise ValueError(f"transformer: embedding dim {dim} is not divisible by heads {heads}")
        layer = nn.TransformerEncoderLayer(
            d_model=dim, nhead=heads, dim_feedforward=ffn_multiplier * dim, dropout=0.0,
            activation="relu", batch_first=True, norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.encoder(embeddings)
