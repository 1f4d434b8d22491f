"""Position debiasing: a "shallow tower" for the display position (Zhao et al., "Recommending What Video to
Watch Next", RecSys 2019, section 4.2; LiRank's jobs model adds position the same way).

A logged impression's label depends on where the job was shown (members apply less far down the list),
but the ranker decides the order, so at serving time the position is unknown. The position therefore
enters only as an additive logit term learned beside the main tower:

    s(x, p) = s_tower(x) + beta_{min(p, P)}          p = 1, 2, ..  (1-based display position)

Scoring without a position (serving: `position=None`; a null position reads as 0) is scoring at
position 1, s(x) = s_tower(x) + beta_1 -- a shift every candidate shares, which cannot change the order. Offline, the logged position explains its part of the label, so the tower's features are not
made to absorb it (the debiasing), and the evaluation on a logged day uses the logged positions.
Positions beyond P share beta_P.
"""

from __future__ import annotations

import torch
from torch import nn


class PositionBias(nn.Module):
    """beta_{min(p, P)} for 1-based positions p; beta_1 for an unknown position (None, or p < 1).

    Every position has its own bias, beta_1 included, though the tower's bias could absorb one of them:
    each position's rows then have a fast parameter of their own. With beta_1 pinned to 0, the rows at
    position 1 follow the slow tower bias only, and a few hundred steps left them under-predicted while
    beta_2..beta_P had already absorbed the shared intercept (measured: beta_p - beta_1 ~0.8 too high).
    """

    def __init__(self, max_position: int):
        super().__init__()
        if max_position < 1:
            raise ValueError(f"PositionBias: max_position must be >= 1, got {max_position}")
        self.max_position = max_position
        self.logits = nn.Parameter(torch.zeros(max_position))

    def curve(self) -> torch.Tensor:
        """beta_p - beta_1 at positions p = 1..P: how much less likely an apply is further down."""
        return self.logits - self.logits[0]

    def forward(self, position: torch.Tensor | None) -> torch.Tensor:
        """beta per row for a [B] integer tensor of positions; the scalar beta_1 for None."""
        if position is None:
            return self.logits[0]
        return self.logits[position.long().clamp(1, self.max_position) - 1]
