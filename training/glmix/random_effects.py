"""Daily sequential Bayesian update of all random effects at once ("Lambda Learner", arXiv 2010.05154).

For one entity (a member or a job) with coefficients theta in R^d, yesterday's Laplace posterior
N(mu, P^-1) becomes today's prior after forgetting (paper, Sec. 3, incremental loss with factor delta):

    P0 = lambda P + (1 - lambda) P_pop,     m0 = P0^-1 (lambda P mu + (1 - lambda) P_pop mu_pop)

(`revert_to_population=False` gives the plain variance inflation P0 = lambda P, m0 = mu). Today's
events e of that entity with design vector x_e, label y_e, weight w_e and offset o_e (the global
score, plus the other side's random effect) give the log posterior, up to a constant,

    -f(theta) = -1/2 (theta - m0)^T P0 (theta - m0) - sum_e w_e [softplus(o_e + x_e.theta) - y_e (o_e + x_e.theta)]

whose mode is found by damped Newton steps (Armijo backtracking on f, so it never diverges):

    g = P0 (theta - m0) + sum_e w_e (p_e - y_e) x_e,      H = P0 + sum_e w_e p_e (1 - p_e) x_e x_e^T
    theta <- theta - t H^-1 g

and the new posterior is N(theta*, H(theta*)^-1) (Laplace). With `covariance="diagonal"` the prior and
the stored precision are diagonal (the paper's diagonal Hessian variant); the mode is still found with
the full Hessian, so it is the exact mode of that diagonal-prior posterior.

All entities are solved together: events sorted by entity, segment sums for g and H, one batched
Cholesky per Newton step, a per-entity convergence mask. No loop over entities and no padding:
memory is O(events * d + entities * d^2), and entities are processed in chunks whose events and
d x d matrices fit `chunk_elements`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from training.glmix.segments import SortedSegments, segment_sum

Covariance = Literal["full", "diagonal"]


@dataclass(frozen=True)
class RandomEffectConfig:
    """How one family of random effects (members, or jobs) is updated each day."""

    dim: int
    covariance: Covariance = "full"
    # lambda in (0, 1]: how much of yesterday's precision is kept; 1 = no forgetting.
    forgetting: float = 1.0
    # Paper form: precision lost to forgetting is replaced by the population prior's, so an entity's
    # prior is never flatter than a newcomer's. False: plain inflation P0 = lambda * P.
    revert_to_population: bool = True
    # Population prior N(prior_mean, diag(prior_variance)) for entities seen for the first time.
    prior_mean: float | tuple[float, ...] = 0.0
    prior_variance: float | tuple[float, ...] = 1.0
    max_newton_steps: int = 50
    # Stop when the Newton decrement g^T H^-1 g falls below this; None = by dtype (1e-14 / 1e-7).
    tolerance: float | None = None
    armijo: float = 1e-4
    min_step: float = 2.0**-30
    # Work per chunk of entities ((events + 4 entities) * d^2 elements) and per outer-sum block. None: 2^24 on
    # CPU (measured fastest: the chunk's d x d matrices stay near cache), 2^32 on CUDA (few, large launches).
    chunk_elements: int | None = None
    outer_block_elements: int = 1 << 24

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError(f"RandomEffectConfig.dim must be >= 1, got {self.dim}")
        if self.covariance not in ("full", "diagonal"):
            raise ValueError(f"RandomEffectConfig.covariance must be 'full' or 'diagonal', got {self.covariance!r}")
        if not 0.0 < self.forgetting <= 1.0:
            raise ValueError(f"RandomEffectConfig.forgetting must be in (0, 1], got {self.forgetting}")
        for name in ("prior_mean", "prior_variance"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) and len(value) != self.dim:
                raise ValueError(f"RandomEffectConfig.{name} has {len(value)} entries, expected dim={self.dim}")
        variance = self.prior_variance
        if min([variance] if isinstance(variance, (int, float)) else variance) <= 0:
            raise ValueError("RandomEffectConfig.prior_variance must be positive")

    def population_mean(self, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
        return torch.as_tensor(self.prior_mean, dtype=dtype, device=device).expand(self.dim).clone()

    def population_precision(self, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
        """Diagonal of the population prior precision, shape (d,)."""
        return 1.0 / torch.as_tensor(self.prior_variance, dtype=dtype, device=device).expand(self.dim).clone()

    def newton_tolerance(self, dtype: torch.dtype) -> float:
        if self.tolerance is not None:
            return self.tolerance
        return 1e-14 if dtype == torch.float64 else 1e-7


@dataclass
class RandomEffectState:
    """Posterior N(mean, precision^-1) of every entity seen so far, rows sorted by entity id."""

    entity_ids: torch.Tensor  # int64 (n,), strictly increasing
    mean: torch.Tensor  # (n, d)
    precision: torch.Tensor  # (n, d, d) full, or (n, d) diagonal

    @property
    def covariance(self) -> Covariance:
        return "full" if self.precision.dim() == 3 else "diagonal"

    @property
    def dim(self) -> int:
        return self.mean.shape[1]

    def __len__(self) -> int:
        return self.entity_ids.shape[0]

    @classmethod
    def empty(cls, config: RandomEffectConfig, dtype: torch.dtype = torch.float32,
              device: torch.device | str = "cpu") -> "RandomEffectState":
        d = config.dim
        shape = (0, d, d) if config.covariance == "full" else (0, d)
        return cls(torch.zeros(0, dtype=torch.int64, device=device), torch.zeros(0, d, dtype=dtype, device=device),
                   torch.zeros(shape, dtype=dtype, device=device))

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "RandomEffectState":
        return RandomEffectState(self.entity_ids.to(device), self.mean.to(device, dtype), self.precision.to(device, dtype))

    def locate(self, entity_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Row of each id in this state and whether it is there at all."""
        entity_ids = entity_ids.to(self.entity_ids.device)
        rows = torch.searchsorted(self.entity_ids, entity_ids).clamp(max=max(len(self) - 1, 0))
        found = (rows < len(self)) & (self.entity_ids[rows] == entity_ids) if len(self) else torch.zeros_like(
            entity_ids, dtype=torch.bool)
        return rows, found

    def variance_diagonal(self, chunk: int = 1 << 16) -> torch.Tensor:
        """diag(precision^-1) per entity, (n, d): the coefficient variances served as features."""
        if self.covariance == "diagonal":
            return 1.0 / self.precision
        out = torch.empty_like(self.mean)
        for start in range(0, len(self), chunk):
            factor = torch.linalg.cholesky(self.precision[start : start + chunk])
            out[start : start + chunk] = torch.cholesky_inverse(factor).diagonal(dim1=-2, dim2=-1)
        return out


@dataclass
class EntityEvents:
    """One day's events from one side: the entity each event belongs to and its design vector."""

    entity_ids: torch.Tensor  # int64 (E,)
    features: torch.Tensor  # (E, d): phi(other side)
    labels: torch.Tensor  # (E,) in {0, 1}
    weights: torch.Tensor | None = None  # (E,) > 0, default 1
    offsets: torch.Tensor | None = None  # (E,) global score (+ other side's random effect), default 0


@dataclass
class UpdateSummary:
    """What one daily update saw and did (goes to logs, the CLI and XCom)."""

    entities_updated: int = 0
    new_entities: int = 0
    events_used: int = 0
    events_dropped: int = 0  # non-finite feature/offset/label/weight, label outside {0,1}, weight <= 0
    newton_iterations_max: int = 0
    newton_iterations_mean: float = 0.0
    not_converged: int = 0
    max_gradient_norm: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def _clean_events(events: EntityEvents, dim: int, dtype: torch.dtype, device: torch.device):
    """Cast, validate shapes, and drop (and count) events a Newton step must never see."""
    ids = torch.as_tensor(events.entity_ids, device=device).long().reshape(-1)
    features = torch.as_tensor(events.features, device=device).to(dtype)
    if features.dim() != 2 or features.shape[1] != dim:
        raise ValueError(f"EntityEvents.features must be (events, {dim}), got {tuple(features.shape)}")
    count = ids.shape[0]
    if features.shape[0] != count:
        raise ValueError(f"EntityEvents: {count} entity ids but {features.shape[0]} feature rows")

    def column(value, default: float, name: str) -> torch.Tensor:
        if value is None:
            return torch.full((count,), default, dtype=dtype, device=device)
        value = torch.as_tensor(value, device=device).to(dtype).reshape(-1)
        if value.shape[0] != count:
            raise ValueError(f"EntityEvents.{name} has {value.shape[0]} rows, expected {count}")
        return value

    labels = column(events.labels, 0.0, "labels")
    weights = column(events.weights, 1.0, "weights")
    offsets = column(events.offsets, 0.0, "offsets")
    keep = (torch.isfinite(features).all(dim=1) & torch.isfinite(offsets) & torch.isfinite(weights)
            & (weights > 0) & ((labels == 0) | (labels == 1)))
    dropped = int(count - keep.sum())
    if dropped:
        ids, features, labels, weights, offsets = ids[keep], features[keep], labels[keep], weights[keep], offsets[keep]
    return ids, features, labels, weights, offsets, dropped


def _forgotten_prior(state: RandomEffectState, rows: torch.Tensor, found: torch.Tensor,
                     config: RandomEffectConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Today's prior (m0, full P0) for the given entities: yesterday's posterior after forgetting."""
    dtype, device, d = state.mean.dtype, state.mean.device, config.dim
    n = rows.shape[0]
    pop_mean = config.population_mean(dtype, device)
    pop_precision = config.population_precision(dtype, device)
    prior_mean = pop_mean.expand(n, d).clone()
    prior_precision = torch.diag_embed(pop_precision.expand(n, d)).clone()
    seen = found.nonzero().squeeze(1)
    if seen.numel() == 0:
        return prior_mean, prior_precision
    lam = config.forgetting
    mean_prev = state.mean[rows[seen]]
    precision_prev = state.precision[rows[seen]]
    if state.covariance == "diagonal":
        precision_prev = torch.diag_embed(precision_prev)
    if lam == 1.0:
        prior_mean[seen], prior_precision[seen] = mean_prev, precision_prev
    elif not config.revert_to_population:
        prior_mean[seen], prior_precision[seen] = mean_prev, lam * precision_prev
    else:
        blended = lam * precision_prev + (1.0 - lam) * torch.diag_embed(pop_precision.expand(seen.numel(), d))
        rhs = lam * (precision_prev @ mean_prev.unsqueeze(-1)).squeeze(-1) + (1.0 - lam) * pop_precision * pop_mean
        prior_mean[seen] = torch.cholesky_solve(rhs.unsqueeze(-1), torch.linalg.cholesky(blended)).squeeze(-1)
        prior_precision[seen] = blended
    return prior_mean, prior_precision


def _factor(hessian: torch.Tensor) -> torch.Tensor:
    """Cholesky factor; a matrix that lost definiteness to rounding gets a small ridge and a retry."""
    factor, info = torch.linalg.cholesky_ex(hessian)
    bad = (info != 0).nonzero().squeeze(1)
    if bad.numel():
        scale = hessian[bad].diagonal(dim1=-2, dim2=-1).abs().mean(-1).clamp_min(1.0)
        eye = torch.eye(hessian.shape[-1], dtype=hessian.dtype, device=hessian.device)
        ridge = 1e3 * torch.finfo(hessian.dtype).eps * scale[:, None, None] * eye
        factor[bad] = torch.linalg.cholesky(hessian[bad] + ridge)
    return factor


def _newton_chunk(features, labels, weights, offsets, segments, prior_mean, prior_precision,
                  config: RandomEffectConfig):
    """Posterior modes and Laplace precisions of the entities 0..n-1 of one chunk (events sorted by segment).

    Each pass evaluates f at the current points of the working entities; an entity whose point passes
    the Armijo test (or is at its start) keeps it as its new base, with g, H and a new Newton direction
    there; the others halve their step. All of this runs on the whole working set with masks; when under
    half of it is still active, finished entities are written out and the working set (entities and their
    events) is compacted. Returns mean (n, d), precision H at the mean (n, d, d), Newton steps (n,),
    gradient norms (n,) and a mask of entities that hit max_newton_steps.
    """
    n, d = prior_mean.shape
    dtype, device = prior_mean.dtype, prior_mean.device
    tolerance = config.newton_tolerance(dtype)
    slack_scale = 64 * torch.finfo(dtype).eps
    out_mean, out_precision = prior_mean.clone(), prior_precision.clone()
    out_steps = torch.zeros(n, dtype=torch.int64, device=device)
    out_grad = torch.zeros(n, dtype=dtype, device=device)
    out_unconverged = torch.zeros(n, dtype=torch.bool, device=device)

    entity = torch.arange(n, device=device)  # chunk row of each working entity
    x, y, w, o, seg, m0, p0 = features, labels, weights, offsets, segments, prior_mean, prior_precision
    layout = SortedSegments(x, seg, n, config.outer_block_elements)
    theta, base = m0.clone(), m0.clone()
    direction = torch.zeros_like(theta)
    step = torch.ones(n, dtype=dtype, device=device)
    slope = torch.zeros_like(step)
    f_base = torch.full_like(step, math.inf)
    h_base, grad_norm = p0.clone(), torch.zeros_like(step)
    steps = torch.zeros(n, dtype=torch.int64, device=device)
    active = torch.ones(n, dtype=torch.bool, device=device)
    unconverged = torch.zeros_like(active)

    def write_out(rows: torch.Tensor) -> None:
        out_mean[entity[rows]], out_precision[entity[rows]] = base[rows], h_base[rows]
        out_steps[entity[rows]], out_grad[entity[rows]] = steps[rows], grad_norm[rows]
        out_unconverged[entity[rows]] = unconverged[rows]

    for _ in range(2 * config.max_newton_steps + 64):
        k = entity.numel()
        eta = o + (x * theta[seg]).sum(1)
        delta = theta - m0
        p0_delta = (p0 @ delta.unsqueeze(-1)).squeeze(-1)
        objective = segment_sum(w * (F.softplus(eta) - y * eta), seg, k) + 0.5 * (delta * p0_delta).sum(-1)
        threshold = f_base + config.armijo * step * slope + slack_scale * (1 + f_base.abs())
        accepted = active & (objective <= threshold)
        rejected = active & ~accepted

        p = torch.sigmoid(eta)
        gradient = segment_sum(x * (w * (p - y)).unsqueeze(1), seg, k) + p0_delta
        hessian = layout.outer_sum(w * p * (1 - p)).add_(p0)
        factor = _factor(hessian)
        # Two triangular solves (L y = g, L^T v = y): cholesky_solve would copy L through tril first.
        half = torch.linalg.solve_triangular(factor, gradient.unsqueeze(-1), upper=False)
        newton = -torch.linalg.solve_triangular(factor.mT, half, upper=True).squeeze(-1)
        decrement = -(gradient * newton).sum(-1)

        base = torch.where(accepted[:, None], theta, base)
        f_base = torch.where(accepted, objective, f_base)
        # Usually every working entity is accepted: then H is the new base as is, no (k, d, d) select.
        h_base = hessian if bool(accepted.all()) else torch.where(accepted[:, None, None], hessian, h_base)
        grad_norm = torch.where(accepted, gradient.norm(dim=-1), grad_norm)
        steps = steps + accepted
        done = accepted & (decrement <= tolerance)
        moving = accepted & ~done
        direction = torch.where(moving[:, None], newton, direction)
        slope = torch.where(moving, -decrement, slope)
        step = torch.where(moving, torch.ones_like(step), torch.where(rejected, 0.5 * step, step))
        # Out of steps: keep the last evaluated point (base), whose H we hold. Stalled: no descent left at
        # this float precision, base is the mode.
        out_of_steps = moving & (steps >= config.max_newton_steps)
        stalled = rejected & (step < config.min_step)
        unconverged = unconverged | out_of_steps
        active = active & ~done & ~out_of_steps & ~stalled
        theta = torch.where(active[:, None], base + step[:, None] * direction, base)

        live = int(active.sum())
        if live == 0:
            break
        if live < k // 2:  # compact: finished entities out, working set down to the live ones
            write_out((~active).nonzero().squeeze(1))
            keep = active.nonzero().squeeze(1)
            remap = torch.full((k,), -1, dtype=torch.int64, device=device)
            remap[keep] = torch.arange(keep.numel(), device=device)
            event_keep = active[seg].nonzero().squeeze(1)
            x, y, w, o, seg = x[event_keep], y[event_keep], w[event_keep], o[event_keep], remap[seg[event_keep]]
            entity, m0, p0, theta, base, direction = (t[keep] for t in (entity, m0, p0, theta, base, direction))
            step, slope, f_base, h_base, grad_norm, steps, active, unconverged = (
                t[keep] for t in (step, slope, f_base, h_base, grad_norm, steps, active, unconverged))
            layout = SortedSegments(x, seg, keep.numel(), config.outer_block_elements)
    write_out(torch.arange(entity.numel(), device=device))
    return out_mean, out_precision, out_steps, out_grad, out_unconverged


def _chunks(event_counts: torch.Tensor, dim: int, budget: int) -> list[tuple[int, int]]:
    """Contiguous entity ranges whose (events + entities) * d^2 work fits the budget (at least one entity)."""
    cost = (event_counts.double() + 4.0) * dim * dim
    cumulative = torch.cumsum(cost, 0).cpu()
    bounds, start, used = [], 0, 0.0
    n = event_counts.shape[0]
    while start < n:
        limit = used + budget
        stop = int(torch.searchsorted(cumulative, torch.tensor(limit, dtype=cumulative.dtype), right=True))
        stop = max(stop, start + 1)
        bounds.append((start, stop))
        used = float(cumulative[stop - 1])
        start = stop
    return bounds


def update_random_effects(state: RandomEffectState, events: EntityEvents, config: RandomEffectConfig
                          ) -> tuple[RandomEffectState, UpdateSummary]:
    """One day's Laplace update of every entity with events; the others keep their posterior.

    Returns a new state (rows sorted by id, new entities added) and the summary. The input state is not
    modified. Everything runs on the state's device and dtype.
    """
    if state.dim != config.dim or state.covariance != config.covariance:
        raise ValueError(f"state is {state.covariance} with d={state.dim}, config wants "
                         f"{config.covariance} with d={config.dim}")
    dtype, device, d = state.mean.dtype, state.mean.device, config.dim
    ids, features, labels, weights, offsets, dropped = _clean_events(events, d, dtype, device)
    summary = UpdateSummary(events_used=int(ids.shape[0]), events_dropped=dropped)
    if ids.numel() == 0:
        return state, summary

    entities, segments = torch.unique(ids, return_inverse=True)
    order = torch.argsort(segments, stable=True)
    features, labels, weights, offsets, segments = (
        features[order], labels[order], weights[order], offsets[order], segments[order])
    counts = torch.bincount(segments, minlength=entities.numel())
    event_start = torch.zeros(entities.numel() + 1, dtype=torch.int64, device=device)
    event_start[1:] = torch.cumsum(counts, 0)
    rows, found = state.locate(entities)

    new_mean = torch.empty(entities.numel(), d, dtype=dtype, device=device)
    new_precision = torch.empty((entities.numel(), d, d) if config.covariance == "full" else (entities.numel(), d),
                                dtype=dtype, device=device)
    all_steps, all_grad, all_unconverged = [], [], []
    budget = config.chunk_elements or (1 << 32 if device.type == "cuda" else 1 << 24)
    for first, last in _chunks(counts, d, budget):
        lo, hi = int(event_start[first]), int(event_start[last])
        prior_mean, prior_precision = _forgotten_prior(state, rows[first:last], found[first:last], config)
        mean, precision, steps, grad_norm, unconverged = _newton_chunk(
            features[lo:hi], labels[lo:hi], weights[lo:hi], offsets[lo:hi], segments[lo:hi] - first,
            prior_mean, prior_precision, config)
        new_mean[first:last] = mean
        new_precision[first:last] = precision if config.covariance == "full" else precision.diagonal(dim1=-2, dim2=-1)
        all_steps.append(steps)
        all_grad.append(grad_norm)
        all_unconverged.append(unconverged)

    steps, grad_norm = torch.cat(all_steps), torch.cat(all_grad)
    summary.entities_updated = int(entities.numel())
    summary.new_entities = int((~found).sum())
    summary.newton_iterations_max = int(steps.max())
    summary.newton_iterations_mean = float(steps.double().mean())
    summary.not_converged = int(torch.cat(all_unconverged).sum())
    summary.max_gradient_norm = float(grad_norm.max())
    return _merge(state, entities, found, rows, new_mean, new_precision), summary


def _merge(state: RandomEffectState, entities: torch.Tensor, found: torch.Tensor, rows: torch.Tensor,
           mean: torch.Tensor, precision: torch.Tensor) -> RandomEffectState:
    """Yesterday's state with today's rows replaced and newcomers inserted in id order."""
    merged_mean, merged_precision = state.mean.clone(), state.precision.clone()
    merged_mean[rows[found]] = mean[found]
    merged_precision[rows[found]] = precision[found]
    fresh = (~found).nonzero().squeeze(1)
    if fresh.numel() == 0:
        return RandomEffectState(state.entity_ids.clone(), merged_mean, merged_precision)
    ids = torch.cat([state.entity_ids, entities[fresh]])
    order = torch.argsort(ids)
    return RandomEffectState(ids[order], torch.cat([merged_mean, mean[fresh]])[order],
                             torch.cat([merged_precision, precision[fresh]])[order])
