"""GLMix: one day's update of member and job random effects by coordinate ascent.

    logit(m, j) = offset(m, j) + beta_m . phi(j) + gamma_j . phi(m)

Member step: every member's posterior from yesterday's member prior, with offset + gamma_j . phi(m)
(job effects at their current means) as the offset. Job step: the same with the roles swapped, using
the member means just found. `passes` alternations; each pass restarts from yesterday's priors, so
passes refine the other side's offset, never count a day's evidence twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import numpy as np
import torch

from training.glmix.fixed_effect import FixedEffectModel, fit_fixed_effect
from training.glmix.random_effects import (
    EntityEvents,
    RandomEffectConfig,
    RandomEffectState,
    UpdateSummary,
    unusable_events,
    update_random_effects,
    usable_mask,
)


@dataclass(frozen=True)
class GLMixConfig:
    member: RandomEffectConfig
    job: RandomEffectConfig
    passes: int = 2

    def __post_init__(self) -> None:
        if self.passes < 1:
            raise ValueError(f"GLMixConfig.passes must be >= 1, got {self.passes}")


@dataclass
class GLMixState:
    member: RandomEffectState
    job: RandomEffectState

    @classmethod
    def empty(cls, config: GLMixConfig, dtype: torch.dtype = torch.float32,
              device: torch.device | str = "cpu") -> "GLMixState":
        return cls(RandomEffectState.empty(config.member, dtype, device), RandomEffectState.empty(config.job, dtype, device))


@dataclass
class GLMixEvents:
    """One day's events with both design vectors: member_design = phi(job), job_design = phi(member)."""

    member_ids: torch.Tensor
    item_ids: torch.Tensor
    member_design: torch.Tensor
    job_design: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor | None = None
    offsets: torch.Tensor | None = None  # the global part


@dataclass
class UsableRows:
    """Which rows of one day the GAME update uses, and why the others were dropped.

    The rule is `random_effects.unusable_events` (NaN / inf feature or offset, label not 0 or 1, weight
    not a finite number > 0), applied to every row's dense features (the fixed effect's inputs), both
    design vectors, label, weight and global offset.
    """

    keep: torch.Tensor  # bool (rows,): the row is used
    dropped_by_reason: dict[str, int]  # unusable_events' reason -> rows failing it (a row may fail several)
    non_finite_by_column: dict[str, int]  # dense column, or member_design / job_design -> rows with NaN / inf there

    @property
    def read(self) -> int:
        return int(self.keep.shape[0])

    @property
    def used(self) -> int:
        return int(self.keep.sum())

    @property
    def dropped(self) -> int:
        return self.read - self.used

    def take(self, events: GLMixEvents, dense: np.ndarray | None) -> tuple[GLMixEvents, np.ndarray | None]:
        """The usable rows of `events` and `dense`, in their order."""
        def rows(value):
            if value is None:
                return None
            value = torch.as_tensor(value)
            return value[self.keep.to(value.device)]

        kept = GLMixEvents(*(rows(getattr(events, f.name)) for f in fields(GLMixEvents)))
        return kept, None if dense is None else np.asarray(dense)[self.keep.cpu().numpy()]

    def as_dict(self) -> dict:
        return {"read": self.read, "used": self.used, "dropped": self.dropped,
                "dropped_by_reason": dict(self.dropped_by_reason),
                "non_finite_by_column": dict(self.non_finite_by_column)}

    def describe(self) -> str:
        """One line for the log, e.g. '3 of 2000 rows dropped: features_not_finite 2 (log_position 2), ...'."""
        reasons = []
        for reason, count in self.dropped_by_reason.items():
            if not count:
                continue
            columns = ", ".join(f"{c} {n}" for c, n in self.non_finite_by_column.items())
            reasons.append(f"{reason} {count}" + (f" ({columns})" if reason == "features_not_finite" else ""))
        return f"{self.dropped} of {self.read} rows dropped" + (": " + "; ".join(reasons) if reasons else "")


def usable_rows(events: GLMixEvents, dense: np.ndarray | None = None,
                dense_names: list[str] | None = None) -> UsableRows:
    """The rows of a day that `update_day` can use (rule: `random_effects.unusable_events`), with the counts."""
    labels = torch.as_tensor(events.labels)
    device, count = labels.device, labels.shape[0]

    def column(value, default: float) -> torch.Tensor:
        if value is None:
            return torch.full((count,), default, dtype=torch.float64, device=device)
        return torch.as_tensor(value).to(device, torch.float64).reshape(-1)

    blocks = {"member_design": torch.as_tensor(events.member_design).to(device, torch.float64).reshape(count, -1),
              "job_design": torch.as_tensor(events.job_design).to(device, torch.float64).reshape(count, -1)}
    if dense is not None:
        dense_block = torch.as_tensor(np.asarray(dense, dtype=np.float64)).to(device).reshape(count, -1)
        width = dense_block.shape[1]
        names = list(dense_names) if dense_names is not None else [f"dense[{i}]" for i in range(width)]
        if width != len(names):
            raise ValueError(f"usable_rows: dense features are {tuple(dense_block.shape)}, "
                             f"expected (rows, {len(names)}) for {names}")
        blocks = {**{name: dense_block[:, i : i + 1] for i, name in enumerate(names)}, **blocks}
    features = torch.cat(list(blocks.values()), 1)
    reasons = unusable_events(features, column(labels, 0.0), column(events.weights, 1.0),
                              column(events.offsets, 0.0))
    by_column = {}
    bad = reasons["features_not_finite"].nonzero().squeeze(1)
    if bad.numel():  # only the flagged rows are looked at column by column
        start = 0
        for name, block in blocks.items():
            width = block.shape[1]
            rows_with_bad = int((~torch.isfinite(features[bad, start : start + width])).any(1).sum())
            if rows_with_bad:
                by_column[name] = rows_with_bad
            start += width
    return UsableRows(usable_mask(reasons), {reason: int(mask.sum()) for reason, mask in reasons.items()}, by_column)


def effect_means(state: RandomEffectState, config: RandomEffectConfig, entity_ids: torch.Tensor) -> torch.Tensor:
    """Posterior mean per id; the population prior mean for ids the state has never seen."""
    rows, found = state.locate(entity_ids)
    means = config.population_mean(state.mean.dtype, state.mean.device).expand(entity_ids.shape[0], -1).clone()
    means[found] = state.mean[rows[found]]
    return means


def random_effect_logit(state: GLMixState, config: GLMixConfig, member_ids: torch.Tensor, item_ids: torch.Tensor,
                        member_design: torch.Tensor, job_design: torch.Tensor) -> torch.Tensor:
    """beta_m . phi(j) + gamma_j . phi(m) per row (add the global offset for the full logit)."""
    dtype, device = state.member.mean.dtype, state.member.mean.device
    member_design, job_design = member_design.to(device, dtype), job_design.to(device, dtype)
    member_term = (effect_means(state.member, config.member, member_ids.to(device)) * member_design).sum(1)
    job_term = (effect_means(state.job, config.job, item_ids.to(device)) * job_design).sum(1)
    return member_term + job_term


@dataclass
class GLMixSummary:
    member: dict = field(default_factory=dict)
    job: dict = field(default_factory=dict)
    passes: int = 0

    def as_dict(self) -> dict:
        return {"member": self.member, "job": self.job, "passes": self.passes}


def daily_update(prior: GLMixState, events: GLMixEvents, config: GLMixConfig) -> tuple[GLMixState, GLMixSummary]:
    """Yesterday's posteriors + today's events -> today's posteriors (member and job)."""
    dtype, device = prior.member.mean.dtype, prior.member.mean.device
    count = events.labels.shape[0]
    offsets = (torch.zeros(count, dtype=dtype, device=device) if events.offsets is None
               else torch.as_tensor(events.offsets).to(device, dtype))
    member_design = torch.as_tensor(events.member_design).to(device, dtype)
    job_design = torch.as_tensor(events.job_design).to(device, dtype)
    member_ids, item_ids = torch.as_tensor(events.member_ids).to(device), torch.as_tensor(events.item_ids).to(device)
    job_current, member_state = prior.job, None
    summary = GLMixSummary()
    for _ in range(config.passes):
        job_term = (effect_means(job_current, config.job, item_ids) * job_design).sum(1)
        # The last pass's states are dropped before the new ones are made: each pass starts from `prior` and
        # needs only the other side's means (job_term, member_term), so two states of a side never coexist.
        job_current = member_state = None
        member_state, member_summary = update_random_effects(
            prior.member, EntityEvents(member_ids, member_design, events.labels, events.weights, offsets + job_term),
            config.member)
        member_term = (effect_means(member_state, config.member, member_ids) * member_design).sum(1)
        job_current, job_summary = update_random_effects(
            prior.job, EntityEvents(item_ids, job_design, events.labels, events.weights, offsets + member_term),
            config.job)
        summary.passes += 1
    summary.member, summary.job = member_summary.as_dict(), job_summary.as_dict()
    return GLMixState(member_state, job_current), summary


def update_day(prior: GLMixState, events: GLMixEvents, config: GLMixConfig, dense: np.ndarray | None = None,
               dense_names: list[str] | None = None, fixed_effect: FixedEffectModel | None = None,
               rows: UsableRows | None = None) -> tuple[GLMixState, FixedEffectModel | None, dict]:
    """One logical day of GAME: the global part, then the random effects.

    With `events.offsets` set (e.g. the serving ranker's logit), that is the global part and no fixed
    effect is fitted. Otherwise the fixed-effect logistic regression is refit on `dense`, warm-started from
    yesterday's `fixed_effect`, with the random effects' scores under yesterday's posteriors as offsets,
    and its logit becomes the offset of the random-effect update.

    Rows that cannot be used (`usable_rows`, or `rows` when the caller has them already) are dropped first,
    for both parts; `summary["rows"]` counts them by reason and column, and each side's `events_dropped`
    includes them. A day without a usable row
    changes nothing: `prior` and `fixed_effect` come back as they are, with zero events in the summary.
    """
    if events.offsets is None and (dense is None or dense_names is None):
        raise ValueError("update_day: give events.offsets (ranker logit) or dense features for the fixed effect")
    rows = usable_rows(events, dense, dense_names) if rows is None else rows
    if rows.dropped:
        events, dense = rows.take(events, dense)
    if rows.used == 0:
        nothing = UpdateSummary(events_dropped=rows.dropped).as_dict()
        return prior, fixed_effect, {"member": nothing, "job": dict(nothing), "passes": 0, "rows": rows.as_dict()}
    if events.offsets is None:
        re_scores = random_effect_logit(prior, config, torch.as_tensor(events.member_ids),
                                        torch.as_tensor(events.item_ids), torch.as_tensor(events.member_design),
                                        torch.as_tensor(events.job_design))
        fixed_effect = fit_fixed_effect(dense, torch.as_tensor(events.labels).cpu().numpy(), dense_names,
                                        None if events.weights is None else torch.as_tensor(events.weights).cpu().numpy(),
                                        warm_start=fixed_effect, offsets=re_scores.cpu().numpy())
        events = replace(events, offsets=torch.as_tensor(fixed_effect.logit(dense)))
    state, summary = daily_update(prior, events, config)
    result = summary.as_dict()
    for side in ("member", "job"):
        result[side]["events_dropped"] += rows.dropped
    result["rows"] = rows.as_dict()
    return state, fixed_effect, result
