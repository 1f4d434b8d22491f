"""GLMix: one day's update of member and job random effects by coordinate ascent.

    logit(m, j) = offset(m, j) + beta_m . phi(j) + gamma_j . phi(m)

Member step: every member's posterior from yesterday's member prior, with offset + gamma_j . phi(m)
(job effects at their current means) as the offset. Job step: the same with the roles swapped, using
the member means just found. `passes` alternations; each pass restarts from yesterday's priors, so
passes refine the other side's offset, never count a day's evidence twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from training.glmix.fixed_effect import FixedEffectModel, fit_fixed_effect
from training.glmix.random_effects import (
    EntityEvents,
    RandomEffectConfig,
    RandomEffectState,
    update_random_effects,
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
    job_current = prior.job
    summary = GLMixSummary()
    for _ in range(config.passes):
        job_term = (effect_means(job_current, config.job, item_ids) * job_design).sum(1)
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
               ) -> tuple[GLMixState, FixedEffectModel | None, dict]:
    """One logical day of GAME: the global part, then the random effects.

    With `events.offsets` set (e.g. the serving ranker's logit), that is the global part and no fixed
    effect is fitted. Otherwise the fixed-effect logistic regression is refit on `dense`, warm-started from
    yesterday's `fixed_effect`, with the random effects' scores under yesterday's posteriors as offsets,
    and its logit becomes the offset of the random-effect update.
    """
    if events.offsets is None:
        if dense is None or dense_names is None:
            raise ValueError("update_day: give events.offsets (ranker logit) or dense features for the fixed effect")
        re_scores = random_effect_logit(prior, config, torch.as_tensor(events.member_ids),
                                        torch.as_tensor(events.item_ids), torch.as_tensor(events.member_design),
                                        torch.as_tensor(events.job_design))
        fixed_effect = fit_fixed_effect(dense, torch.as_tensor(events.labels).cpu().numpy(), dense_names,
                                        None if events.weights is None else torch.as_tensor(events.weights).cpu().numpy(),
                                        warm_start=fixed_effect, offsets=re_scores.cpu().numpy())
        events = replace(events, offsets=torch.as_tensor(fixed_effect.logit(dense)))
    state, summary = daily_update(prior, events, config)
    return state, fixed_effect, summary.as_dict()
