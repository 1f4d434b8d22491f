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

An entity with c < d events is solved in the dual (c x c) form instead (`dual_below`). Its Newton
iterates stay in theta = m0 + Z a with Z = P0^-1 X^T (d x c): with K = X Z and W = diag(w p (1 - p)),

    g = X^T b with b = a + w (p - y),     H^-1 g = Z (b - S B^-1 S K b),   S = W^1/2, B = I + S K S

(Woodbury; B's eigenvalues are >= 1, so its Cholesky is always well conditioned), and the objective is
1/2 a^T K a + loss(o + X m0 + K a). Newton's method is affine invariant, so these are the same iterates,
the same Armijo tests and the same mode as the primal steps, at c^3 per step instead of d^3 plus the
(events x d x d) outer sums; P0 is factored once and H(theta*) = P0 + X^T W X is formed once, at the end.
Entities of one event count c form one batch (no padding).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F

from training.glmix.segments import SortedSegments

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
    # Entities with fewer events than this are solved in the dual c x c form (module docstring). None: d on
    # CPU (measured faster there for every c < d), 0 on CUDA (there the per-step cost is launches, and the
    # primal form runs fewer of them). 0: never.
    dual_below: int | None = None
    # ... and only where at least this many entities share the event count: each count is its own batch of
    # Newton passes, whose fixed cost (tens of small ops) the primal chunk pays once for all counts.
    dual_min_batch: int = 256
    # CPU threads that solve independent batches of entities at once (each op then runs on its thread; set
    # torch's own intra-op threads to 1 when using more than one worker). CUDA: always 1.
    workers: int = 1

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError(f"RandomEffectConfig.dim must be >= 1, got {self.dim}")
        if self.dual_below is not None and self.dual_below < 0:
            raise ValueError(f"RandomEffectConfig.dual_below must be >= 0 or None, got {self.dual_below}")
        if self.workers < 1:
            raise ValueError(f"RandomEffectConfig.workers must be >= 1, got {self.workers}")
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

    def dual_limit(self, device: torch.device) -> int:
        if self.dual_below is not None:
            return self.dual_below
        return 0 if device.type == "cuda" else self.dim

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
    events_dropped: int = 0  # unusable by `unusable_events`' rule (NaN / inf, label not 0/1, weight not > 0)
    newton_iterations_max: int = 0
    newton_iterations_mean: float = 0.0
    not_converged: int = 0
    max_gradient_norm: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def _finite_rows(features: torch.Tensor) -> torch.Tensor:
    """Which rows hold no NaN or infinity, exactly.

    A row with a NaN or an infinity has a non-finite sum, so only the rows whose sum is not finite (those,
    and finite rows whose sum overflows) are checked element by element. On 2 CPU cores this takes 7 ms
    for 1M x 32 float32 features where isfinite(features).all(1) took 198 ms.
    """
    finite = torch.isfinite(features.sum(dim=1))
    suspect = (~finite).nonzero().squeeze(1)
    if suspect.numel():
        finite[suspect] = torch.isfinite(features.index_select(0, suspect)).all(dim=1)
    return finite


def unusable_events(features: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
                    offsets: torch.Tensor) -> dict[str, torch.Tensor]:
    """Which events no update may use, per reason: the one cleaning rule of GLMix events.

    An event is unusable when a feature or its offset is NaN or infinite, its label is not 0 or 1, or its
    weight is not a finite number > 0. `update_random_effects` drops these events, and the daily GAME
    update (training.glmix.model.usable_rows) drops the day's rows by this same rule before the fixed
    effect sees them. Returns one (E,) bool mask per reason, True where the reason applies (an event may
    fail several); their union is what is dropped.
    """
    return {
        "features_not_finite": ~_finite_rows(features),
        "offset_not_finite": ~torch.isfinite(offsets),
        "label_not_0_or_1": (labels != 0) & (labels != 1),  # NaN included
        "weight_not_finite_positive": ~(torch.isfinite(weights) & (weights > 0)),
    }


def usable_mask(reasons: dict[str, torch.Tensor]) -> torch.Tensor:
    """The events that fail none of `unusable_events`' reasons."""
    masks = iter(reasons.values())
    unusable = next(masks).clone()
    for mask in masks:
        unusable |= mask
    return ~unusable


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
    keep = usable_mask(unusable_events(features, labels, weights, offsets))
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
    seen = found.nonzero().squeeze(1)
    if seen.numel() == 0:
        return pop_mean.expand(n, d).clone(), torch.diag_embed(pop_precision.expand(n, d)).clone()
    lam = config.forgetting
    # index_select / index_copy_: several times faster than [] on (n, d, d) CPU tensors (measured).
    seen_rows = rows.index_select(0, seen)
    mean_prev = state.mean.index_select(0, seen_rows)
    precision_prev = state.precision.index_select(0, seen_rows)
    if state.covariance == "diagonal":
        precision_prev = torch.diag_embed(precision_prev)
    if lam == 1.0:
        seen_mean, seen_precision = mean_prev, precision_prev
    elif not config.revert_to_population:
        seen_mean, seen_precision = mean_prev, lam * precision_prev
    else:
        seen_precision = lam * precision_prev + (1.0 - lam) * torch.diag_embed(pop_precision.expand(seen.numel(), d))
        rhs = lam * (precision_prev @ mean_prev.unsqueeze(-1)).squeeze(-1) + (1.0 - lam) * pop_precision * pop_mean
        seen_mean = torch.cholesky_solve(rhs.unsqueeze(-1), torch.linalg.cholesky(seen_precision)).squeeze(-1)
    if seen.numel() == n:
        return seen_mean, seen_precision
    prior_mean = pop_mean.expand(n, d).clone().index_copy_(0, seen, seen_mean)
    prior_precision = torch.diag_embed(pop_precision.expand(n, d)).index_copy_(0, seen, seen_precision)
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


def _solve(factor: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """factor factor^T x = rhs by two triangular solves (cholesky_solve would copy the factor through tril)."""
    half = torch.linalg.solve_triangular(factor, rhs, upper=False)
    return torch.linalg.solve_triangular(factor.mT, half, upper=True)


class _DampedNewton:
    """Per-entity bookkeeping of damped Newton steps with Armijo backtracking, shared by both forms.

    Each pass the caller evaluates the objective at `point` for the working entities, calls `test`, then
    `advance` with the Newton direction and decrement at that point. An entity whose point passes the
    Armijo test (or is at its start) takes it as its new `base`; the others halve their step. `keep`
    compacts the working set.
    """

    def __init__(self, start: torch.Tensor, config: RandomEffectConfig) -> None:
        n, dtype = start.shape[0], start.dtype
        self.config = config
        self.tolerance = config.newton_tolerance(dtype)
        self.slack_scale = 64 * torch.finfo(dtype).eps
        self.point, self.base = start.clone(), start.clone()
        self.direction = torch.zeros_like(start)
        self.step = torch.ones(n, dtype=dtype, device=start.device)
        self.slope = torch.zeros_like(self.step)
        self.f_base = torch.full_like(self.step, math.inf)
        self.steps = torch.zeros(n, dtype=torch.int64, device=start.device)
        self.active = torch.ones(n, dtype=torch.bool, device=start.device)
        self.unconverged = torch.zeros_like(self.active)

    def test(self, objective: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(accepted, rejected) working entities for the objective at their current point."""
        threshold = (self.f_base + self.config.armijo * self.step * self.slope
                     + self.slack_scale * (1 + self.f_base.abs()))
        accepted = self.active & (objective <= threshold)
        self.base = torch.where(accepted[:, None], self.point, self.base)
        self.f_base = torch.where(accepted, objective, self.f_base)
        return accepted, self.active & ~accepted

    def advance(self, accepted, rejected, newton: torch.Tensor, decrement: torch.Tensor) -> int:
        """Take the Newton direction where accepted, backtrack where rejected; returns the live count."""
        config = self.config
        self.steps = self.steps + accepted
        done = accepted & (decrement <= self.tolerance)
        moving = accepted & ~done
        self.direction = torch.where(moving[:, None], newton, self.direction)
        self.slope = torch.where(moving, -decrement, self.slope)
        self.step = torch.where(moving, torch.ones_like(self.step), torch.where(rejected, 0.5 * self.step, self.step))
        # Out of steps: keep the last evaluated point (base), whose H we hold. Stalled: no descent left at
        # this float precision, base is the mode.
        out_of_steps = moving & (self.steps >= config.max_newton_steps)
        stalled = rejected & (self.step < config.min_step)
        self.unconverged = self.unconverged | out_of_steps
        self.active = self.active & ~done & ~out_of_steps & ~stalled
        self.point = torch.where(self.active[:, None], self.base + self.step[:, None] * self.direction, self.base)
        return int(self.active.sum())

    def passes(self) -> range:
        return range(2 * self.config.max_newton_steps + 64)

    def keep(self, rows: torch.Tensor) -> None:
        for name in ("point", "base", "direction", "step", "slope", "f_base", "steps", "active", "unconverged"):
            setattr(self, name, getattr(self, name)[rows])


def _newton_chunk(features, labels, weights, offsets, segments, prior_mean, prior_precision,
                  config: RandomEffectConfig):
    """Posterior modes and Laplace precisions of the entities 0..n-1 of one chunk (events sorted by segment).

    Primal form: each pass evaluates f, g and H (d x d) at the working entities' points (`_DampedNewton`).
    When under half of the working set is still active, finished entities are written out and the working
    set (entities and their events) is compacted. Returns mean (n, d), precision H at the mean (n, d, d),
    Newton steps (n,), gradient norms (n,) and a mask of entities that hit max_newton_steps.
    """
    n, d = prior_mean.shape
    device = prior_mean.device
    out_mean, out_precision = prior_mean.clone(), prior_precision.clone()
    out_steps = torch.zeros(n, dtype=torch.int64, device=device)
    out_grad = torch.zeros(n, dtype=prior_mean.dtype, device=device)
    out_unconverged = torch.zeros(n, dtype=torch.bool, device=device)

    entity = torch.arange(n, device=device)  # chunk row of each working entity
    x, y, w, o, seg, m0, p0 = features, labels, weights, offsets, segments, prior_mean, prior_precision
    layout = SortedSegments(x, seg, n, config.outer_block_elements)
    newton = _DampedNewton(m0, config)
    h_base, grad_norm = p0.clone(), torch.zeros_like(newton.step)

    def write_out(rows: torch.Tensor) -> None:
        out_mean[entity[rows]], out_precision[entity[rows]] = newton.base[rows], h_base[rows]
        out_steps[entity[rows]], out_grad[entity[rows]] = newton.steps[rows], grad_norm[rows]
        out_unconverged[entity[rows]] = newton.unconverged[rows]

    for _ in newton.passes():
        k = entity.numel()
        eta = o + (x * newton.point[seg]).sum(1)
        delta = newton.point - m0
        p0_delta = (p0 @ delta.unsqueeze(-1)).squeeze(-1)
        objective = layout.sum(w * (F.softplus(eta) - y * eta)) + 0.5 * (delta * p0_delta).sum(-1)
        accepted, rejected = newton.test(objective)

        p = torch.sigmoid(eta)
        gradient = layout.sum(x * (w * (p - y)).unsqueeze(1)) + p0_delta
        hessian = layout.outer_sum(w * p * (1 - p)).add_(p0)
        step = -_solve(_factor(hessian), gradient.unsqueeze(-1)).squeeze(-1)
        decrement = -(gradient * step).sum(-1)
        # Usually every working entity is accepted: then H is the new base as is, no (k, d, d) select.
        h_base = hessian if bool(accepted.all()) else torch.where(accepted[:, None, None], hessian, h_base)
        grad_norm = torch.where(accepted, gradient.norm(dim=-1), grad_norm)
        live = newton.advance(accepted, rejected, step, decrement)
        if live == 0:
            break
        if live < k // 2:  # compact: finished entities out, working set down to the live ones
            write_out((~newton.active).nonzero().squeeze(1))
            keep = newton.active.nonzero().squeeze(1)
            remap = torch.full((k,), -1, dtype=torch.int64, device=device)
            remap[keep] = torch.arange(keep.numel(), device=device)
            event_keep = newton.active[seg].nonzero().squeeze(1)
            x, y, w, o, seg = x[event_keep], y[event_keep], w[event_keep], o[event_keep], remap[seg[event_keep]]
            entity, m0, p0, h_base, grad_norm = (t[keep] for t in (entity, m0, p0, h_base, grad_norm))
            newton.keep(keep)
            layout = SortedSegments(x, seg, keep.numel(), config.outer_block_elements)
    write_out(torch.arange(entity.numel(), device=device))
    return out_mean, out_precision, out_steps, out_grad, out_unconverged


def _newton_dual(x, y, w, o, prior_mean, prior_precision, config: RandomEffectConfig):
    """The same update for B entities of exactly c events each, in the dual form (module docstring).

    x (B, c, d), y / w / o (B, c), prior (B, d) and (B, d, d). Returns what `_newton_chunk` returns; the
    prior precision tensor is overwritten with (and returned as) the posterior precision.
    """
    b_count, c, _ = x.shape
    device = x.device
    factor = _factor(prior_precision)  # P0 = L L^T
    y_t = torch.linalg.solve_triangular(factor, x.mT, upper=False)  # (B, d, c) = L^-1 X^T: Z = L^-T Y^T, one solve
    kernel = y_t.mT @ y_t
    kernel = 0.5 * (kernel + kernel.mT)  # (B, c, c) = X P0^-1 X^T, exactly symmetric
    base_offset = o + (x @ prior_mean.unsqueeze(-1)).squeeze(-1)
    eye = torch.eye(c, dtype=x.dtype, device=device)
    out_a = torch.zeros_like(base_offset)
    out_steps = torch.zeros(b_count, dtype=torch.int64, device=device)
    out_unconverged = torch.zeros(b_count, dtype=torch.bool, device=device)

    entity = torch.arange(b_count, device=device)
    k_all, o_all, y_all, w_all = kernel, base_offset, y, w
    newton = _DampedNewton(torch.zeros_like(base_offset), config)

    def write_out(rows: torch.Tensor) -> None:
        out_a[entity[rows]], out_steps[entity[rows]] = newton.base[rows], newton.steps[rows]
        out_unconverged[entity[rows]] = newton.unconverged[rows]

    for _ in newton.passes():
        k = entity.numel()
        k_a = (k_all @ newton.point.unsqueeze(-1)).squeeze(-1)
        eta = o_all + k_a
        objective = (w_all * (F.softplus(eta) - y_all * eta)).sum(1) + 0.5 * (newton.point * k_a).sum(1)
        accepted, rejected = newton.test(objective)

        p = torch.sigmoid(eta)
        b = newton.point + w_all * (p - y_all)  # g = X^T b
        s = (w_all * p * (1 - p)).sqrt()
        k_b = (k_all @ b.unsqueeze(-1)).squeeze(-1)
        v = s * k_b
        u = _solve(_factor(s.unsqueeze(2) * k_all * s.unsqueeze(1) + eye), v.unsqueeze(-1)).squeeze(-1)
        step = s * u - b
        decrement = ((b * k_b).sum(1) - (v * u).sum(1)).clamp_min(0.0)  # g^T H^-1 g
        live = newton.advance(accepted, rejected, step, decrement)
        if live == 0:
            break
        if live < k // 2:
            write_out((~newton.active).nonzero().squeeze(1))
            keep = newton.active.nonzero().squeeze(1)
            entity, k_all, o_all, y_all, w_all = (t[keep] for t in (entity, k_all, o_all, y_all, w_all))
            newton.keep(keep)
    write_out(torch.arange(entity.numel(), device=device))

    # Back to coefficients: theta = m0 + Z a = m0 + L^-T (Y^T a), with g and H at that point.
    mean = prior_mean + torch.linalg.solve_triangular(factor.mT, y_t @ out_a.unsqueeze(-1), upper=True).squeeze(-1)
    p = torch.sigmoid(base_offset + (kernel @ out_a.unsqueeze(-1)).squeeze(-1))
    gradient = (x.mT @ (out_a + w * (p - y)).unsqueeze(-1)).squeeze(-1)
    precision = prior_precision.baddbmm_(x.mT, x * (w * p * (1 - p)).unsqueeze(2))  # the prior is ours: in place
    return mean, precision, out_steps, gradient.norm(dim=-1), out_unconverged


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

    sorted_ids, order = torch.sort(ids, stable=True)  # one sort: events grouped by entity, in arrival order
    entities, counts = torch.unique_consecutive(sorted_ids, return_counts=True)
    segments = torch.repeat_interleave(torch.arange(entities.numel(), device=device), counts)
    features, labels, weights, offsets = (t.index_select(0, order) for t in (features, labels, weights, offsets))
    event_start = torch.zeros(entities.numel() + 1, dtype=torch.int64, device=device)
    event_start[1:] = torch.cumsum(counts, 0)
    rows, found = state.locate(entities)

    new_mean = torch.empty(entities.numel(), d, dtype=dtype, device=device)
    new_precision = torch.empty((entities.numel(), d, d) if config.covariance == "full" else (entities.numel(), d),
                                dtype=dtype, device=device)
    all_steps, all_grad, all_unconverged = [], [], []
    budget = config.chunk_elements or (1 << 32 if device.type == "cuda" else 1 << 24)

    def store(members: torch.Tensor, mean, precision, steps, grad_norm, unconverged) -> None:
        new_mean.index_copy_(0, members, mean)
        new_precision.index_copy_(0, members, precision if config.covariance == "full"
                                  else precision.diagonal(dim1=-2, dim2=-1).contiguous())
        all_steps.append(steps)
        all_grad.append(grad_norm)
        all_unconverged.append(unconverged)

    # Independent pieces of work: a batch of entities each, solved in one form; run by `workers` threads.
    tasks: list[tuple[torch.Tensor, Callable[[], tuple]]] = []
    dual = counts < config.dual_limit(device)
    if bool(dual.any()):  # a handful of entities of one count is cheaper in the primal batch than in its own
        per_count = torch.bincount(counts[dual])
        dual &= per_count.index_select(0, counts.clamp(max=per_count.numel() - 1)) >= config.dual_min_batch
    primal = (~dual).nonzero().squeeze(1)
    if primal.numel() < entities.numel():  # the primal entities' events, still sorted, segments renumbered
        renumber = torch.full_like(counts, -1)
        renumber[primal] = torch.arange(primal.numel(), device=device)
        keep = (~dual)[segments].nonzero().squeeze(1)
        p_features, p_labels, p_weights, p_offsets, p_segments = (
            t.index_select(0, keep) for t in (features, labels, weights, offsets, segments))
        p_segments = renumber[p_segments]
        p_start = torch.zeros(primal.numel() + 1, dtype=torch.int64, device=device)
        p_start[1:] = torch.cumsum(counts[primal], 0)
    else:
        p_features, p_labels, p_weights, p_offsets, p_segments, p_start = (
            features, labels, weights, offsets, segments, event_start)

    def primal_task(first: int, last: int) -> tuple:
        lo, hi = int(p_start[first]), int(p_start[last])
        members = primal[first:last]
        prior_mean, prior_precision = _forgotten_prior(state, rows[members], found[members], config)
        return _newton_chunk(p_features[lo:hi], p_labels[lo:hi], p_weights[lo:hi], p_offsets[lo:hi],
                             p_segments[lo:hi] - first, prior_mean, prior_precision, config)

    def dual_task(members: torch.Tensor, count: int) -> tuple:
        events_of = (event_start[members, None] + torch.arange(count, device=device)).reshape(-1)
        prior_mean, prior_precision = _forgotten_prior(state, rows[members], found[members], config)
        x, y, w, o = (t.index_select(0, events_of).view(members.numel(), count, *t.shape[1:])
                      for t in (features, labels, weights, offsets))
        return _newton_dual(x, y, w, o, prior_mean, prior_precision, config)

    for first, last in _chunks(counts[primal], d, budget):
        tasks.append((primal[first:last], partial(primal_task, first, last)))
    for count in torch.unique(counts[dual]).tolist():  # dual form: one batch per event count, no padding
        group = (counts == count).nonzero().squeeze(1)
        per_slice = max(1, budget // (d * (d + 2 * count)))
        for first in range(0, group.numel(), per_slice):
            members = group[first : first + per_slice]
            tasks.append((members, partial(dual_task, members, count)))

    workers = config.workers if device.type == "cpu" else 1
    if workers > 1 and len(tasks) > 1:
        with ThreadPoolExecutor(workers) as pool:  # torch ops release the GIL
            pending: deque = deque()
            for members, solve in tasks:  # at most 2 x workers results in memory at once
                pending.append((members, pool.submit(solve)))
                if len(pending) > 2 * workers:
                    done_members, future = pending.popleft()
                    store(done_members, *future.result())
            for done_members, future in pending:
                store(done_members, *future.result())
    else:
        for members, solve in tasks:
            store(members, *solve())

    # The day's sorted event copies (and the tasks' closures over them) go before the merge allocates the new
    # state: at 100x the demo they are 0.4 GB of the update's peak.
    del tasks, features, labels, weights, offsets, segments, p_features, p_labels, p_weights, p_offsets, p_segments
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
    """Yesterday's state with today's rows replaced and newcomers inserted in id order.

    Each output tensor is allocated once and filled in place (yesterday's rows, then today's over them, and the
    newcomers at their sorted places): a state is n x d x d, 0.42 GB for 312k members at d = 13 in float64,
    and a clone, a concatenation and a reordering of it made three such copies at once.
    """
    known = found.nonzero().squeeze(1)
    fresh = (~found).nonzero().squeeze(1)
    if known.numel() == len(state) and fresh.numel() == 0:  # every entity updated: rows 0..n-1 in order
        return RandomEffectState(state.entity_ids.clone(), mean, precision)
    size = len(state) + fresh.numel()
    if fresh.numel():
        ids = torch.cat([state.entity_ids, entities.index_select(0, fresh)])
        order = torch.argsort(ids)
        place = torch.empty_like(order)  # the output row of each row of [yesterday's rows, newcomers]
        place[order] = torch.arange(size, device=order.device)
        old_place, fresh_place, ids = place[: len(state)], place[len(state) :], ids.index_select(0, order)
    else:
        old_place, fresh_place, ids = None, None, state.entity_ids.clone()
    known_place = rows.index_select(0, known) if old_place is None else old_place.index_select(
        0, rows.index_select(0, known))

    def merged(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        out = torch.empty((size, *old.shape[1:]), dtype=old.dtype, device=old.device)
        if old_place is None:
            out.copy_(old)
        else:
            out.index_copy_(0, old_place, old)
        out.index_copy_(0, known_place, new if known.numel() == new.shape[0] else new.index_select(0, known))
        if fresh_place is not None:
            out.index_copy_(0, fresh_place, new.index_select(0, fresh))
        return out

    return RandomEffectState(ids, merged(state.mean, mean), merged(state.precision, precision))
