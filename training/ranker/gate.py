"""Dense Gating (LiRank, arXiv 2402.06859, "Dense Gating"; Gate-Net's hidden-unit gate): an MLP
whose every hidden layer is multiplied elementwise by a learned sigmoid gate of the same input.

    h_{l+1} = relu(W_l h_l + b_l) * sigmoid(G_l h_l + c_l)

W_l and G_l are stored as one [2 * width, in] matrix so a single GEMM produces both the hidden
pre-activation and the gate logits; the product with the gate is `kernels.gate.dense_gate`.
h may carry trailing zero columns (alignment padding, kernels.alignment): they meet zero weights.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from kernels.alignment import padded_linear
from kernels.gate import dense_gate


class DenseGate(nn.Module):
    """One gated layer: relu(W h + b) * sigmoid(G h + c)."""

    def __init__(self, in_dim: int, width: int):
        super().__init__()
        self.width = width
        self.linear = nn.Linear(in_dim, 2 * width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        hidden, gate_logits = padded_linear(h, self.linear.weight, self.linear.bias).split(self.width, dim=-1)
        return dense_gate(F.relu(hidden), gate_logits)


class GatedMLP(nn.Module):
    """A stack of DenseGate layers of the given widths; `gated=False` is the plain ReLU MLP."""

    def __init__(self, in_dim: int, widths: list[int], gated: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        for width in widths:
            if gated:
                layers.append(DenseGate(in_dim, width))
            else:
                layers += [nn.Linear(in_dim, width), nn.ReLU()]
            in_dim = width
        self.layers = nn.Sequential(*layers)
        self.out_dim = in_dim

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.layers(h)
