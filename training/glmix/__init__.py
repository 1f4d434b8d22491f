"""GLMix / GAME personalisation: per-member and per-job random effects updated daily.

The model (GLMix, Zhang et al. 2016; incremental update from "Lambda Learner", arXiv 2010.05154):

    logit P(y=1 | member m, job j) = offset(m, j) + beta_m . phi(j) + gamma_j . phi(m)

`offset` is the global part (a fixed-effect logistic regression, or the ranker's logit),
`beta_m` the member's random effect over job attributes, `gamma_j` the job's random effect over
member attributes. Each day yesterday's Laplace posterior is today's prior.

Imports only torch and numpy; safetensors is imported lazily by `state`.
"""

from training.glmix.random_effects import (
    RandomEffectConfig,
    RandomEffectState,
    UpdateSummary,
    update_random_effects,
)

__all__ = ["RandomEffectConfig", "RandomEffectState", "UpdateSummary", "update_random_effects"]
