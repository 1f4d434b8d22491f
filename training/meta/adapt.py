"""Per-member adaptation (MAML's inner loop), vectorised over members with torch.func.vmap.

MAML (Finn, Abbeel & Levine, ICML 2017, eq. 1) adapts the meta-initialisation phi_0 to task (member) m by
k steps of gradient descent on the member's support set S_m:

    phi_m^(0) = phi_0
    phi_m^(j+1) = phi_m^(j) - alpha * clip(grad_phi L_{S_m}(phi_m^(j)))           j = 0 .. k-1
    L_{S_m}(phi) = sum_{i in S_m} w_i * BCE(f_phi(h_i), y_i) / sum_{i in S_m} w_i

Only the head parameters phi are adapted (LiMAML's meta block; the body h is shared), so one member's inner
loop is k small matrix-vector products over its <= N support rows. `clip` rescales the member's gradient to
norm <= `grad_clip`: with one or two interactions, or only positives, the BCE gradient never vanishes and
would otherwise push phi off to infinity in a few steps. A member with an empty support set keeps phi_0
(the cold-start embedding) because its masked gradient is exactly zero.

Members are batched as padded [M, N, H] tensors with a weight mask (0 on padding): `vmap` maps the
single-member loop over the member axis, so there is no Python loop over members, and the result equals
adapting each member alone (tests/training/test_meta_adapt.py checks this in float64).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.func import grad, vmap

from training.meta.subnetwork import SubNetwork, flatten_params

Params = dict[str, torch.Tensor]


@dataclass(frozen=True)
class InnerLoopConfig:
    """The inner loop: k plain SGD steps of size alpha with a per-member gradient-norm clip."""

    steps: int = 5
    learning_rate: float = 1.0
    grad_clip: float = 5.0


def support_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean BCE over one member's rows; padding rows carry weight 0. Zero when all weights are 0."""
    per_row = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    return (per_row * weights).sum() / weights.sum().clamp_min(1e-12)


def _clip(gradient: Params, max_norm: float) -> Params:
    # clamp_min before sqrt: an all-padding member has a zero gradient, and d sqrt(x)/dx at 0 is infinite,
    # which would turn the second-order meta-gradient into NaN.
    norm = sum((g * g).sum() for g in gradient.values()).clamp_min(1e-24).sqrt()
    scale = torch.clamp(max_norm / (norm + 1e-12), max=1.0)
    return {name: g * scale for name, g in gradient.items()}


def make_adapt_one(net: SubNetwork, config: InnerLoopConfig, first_order: bool) -> Callable[..., Params]:
    """The single-member inner loop (phi_0, H [N, h], y [N], w [N]) -> phi_m, written to be vmapped.

    first_order=True stops gradients through the inner gradient (FOMAML: d phi_m / d phi_0 = I); with False
    the outer loss differentiates through the k steps (second-order MAML).
    """

    def loss(params: Params, hidden: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return support_loss(net.head_logits(params, hidden), labels, weights)

    loss_grad = grad(loss)

    def adapt_one(init: Params, hidden: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> Params:
        params = init
        for _ in range(config.steps):
            step = _clip(loss_grad(params, hidden, labels, weights), config.grad_clip)
            if first_order:
                step = {name: g.detach() for name, g in step.items()}
            params = {name: params[name] - config.learning_rate * step[name] for name in params}
        return params

    return adapt_one


def adapt_members(
    net: SubNetwork,
    hidden: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    config: InnerLoopConfig = InnerLoopConfig(),
    first_order: bool = True,
    init: Params | None = None,
) -> Params:
    """Adapt phi_0 for M members at once: hidden [M, N, h], labels/weights [M, N] -> params with leading M."""
    adapt_one = make_adapt_one(net, config, first_order)
    return vmap(adapt_one, in_dims=(None, 0, 0, 0))(init if init is not None else net.head_params(), hidden,
                                                     labels, weights)


def clean_targets(labels: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels outside [0, 1] or non-finite, and non-finite or negative weights, get weight 0 (never NaN)."""
    usable = torch.isfinite(labels) & (labels >= 0) & (labels <= 1) & torch.isfinite(weights) & (weights > 0)
    return (torch.where(usable, labels, torch.zeros_like(labels)),
            torch.where(usable, weights, torch.zeros_like(weights)))


@torch.no_grad()
def meta_embeddings(
    net: SubNetwork,
    hidden: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    config: InnerLoopConfig = InnerLoopConfig(),
    chunk_members: int = 65_536,
) -> tuple[torch.Tensor, int]:
    """Adapted, flattened head parameters for M members: [M, P], plus how many fell back to phi_0.

    Processes members in chunks so that memory stays bounded at any member count. A member whose adapted
    parameters are non-finite (which the clipping should make impossible) gets the meta-initialisation
    instead, so nothing non-finite ever leaves this function.
    """
    labels, weights = clean_targets(labels, weights)
    init_flat = flatten_params({k: v.detach() for k, v in net.head_params().items()})
    out, fallbacks = [], 0
    for start in range(0, hidden.shape[0], chunk_members):
        stop = start + chunk_members
        adapted = adapt_members(net, hidden[start:stop], labels[start:stop], weights[start:stop], config)
        flat = flatten_params(adapted)
        bad = ~torch.isfinite(flat).all(dim=-1)
        fallbacks += int(bad.sum())
        out.append(torch.where(bad.unsqueeze(-1), init_flat.to(flat.dtype), flat))
    if not out:
        return init_flat.new_zeros((0, init_flat.numel())), 0
    return torch.cat(out), fallbacks
