"""Thompson sampling from the random-effect posteriors, for exploration scores.

For each entity draw theta ~ N(mu, P^-1): with P = L L^T (Cholesky), theta = mu + L^-T z, z ~ N(0, I)
(diagonal precision: theta = mu + z / sqrt(p)). Entities never seen draw from the population prior.
One draw per entity per call, shared by all of its rows, as Thompson sampling requires.
"""

from __future__ import annotations

import torch

from training.glmix.random_effects import RandomEffectConfig, RandomEffectState


def sample_coefficients(state: RandomEffectState, config: RandomEffectConfig, entity_ids: torch.Tensor,
                        num_samples: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
    """Posterior draws for each id, shape (len(entity_ids), num_samples, d)."""
    dtype, device, d = state.mean.dtype, state.mean.device, config.dim
    entity_ids = torch.as_tensor(entity_ids, device=device).long()
    rows, found = state.locate(entity_ids)
    noise = torch.randn(entity_ids.shape[0], num_samples, d, dtype=dtype, device=device, generator=generator)
    samples = config.population_mean(dtype, device) + noise * config.population_precision(dtype, device).rsqrt()
    seen = found.nonzero().squeeze(1)
    if seen.numel():
        mean = state.mean[rows[seen]]
        if state.covariance == "diagonal":
            draw = noise[seen] * state.precision[rows[seen]].rsqrt().unsqueeze(1)
        else:
            factor = torch.linalg.cholesky(state.precision[rows[seen]])  # P = L L^T
            # Solve L^T v = z for each sample: v ~ N(0, (L L^T)^-1).
            draw = torch.linalg.solve_triangular(factor.mT, noise[seen].mT, upper=True).mT
        samples[seen] = mean.unsqueeze(1) + draw
    return samples


def thompson_scores(state: RandomEffectState, config: RandomEffectConfig, entity_ids: torch.Tensor,
                    features: torch.Tensor, offsets: torch.Tensor | None = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """offset + theta_e . x per row, with one posterior draw theta_e per distinct entity."""
    entity_ids = torch.as_tensor(entity_ids, device=state.mean.device).long()
    distinct, inverse = torch.unique(entity_ids, return_inverse=True)
    draws = sample_coefficients(state, config, distinct, 1, generator)[:, 0]
    features = torch.as_tensor(features).to(state.mean.device, state.mean.dtype)
    scores = (draws[inverse] * features).sum(1)
    return scores if offsets is None else scores + torch.as_tensor(offsets).to(scores)
