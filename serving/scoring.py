"""The one scoring function of rankflow's serving path, used by the service and offline alike.

For a member m and candidate jobs j (LiRank ranker + GLMix random effects, arXiv 2402.06859 and
Lambda Learner, arXiv 2010.05154):

    p_rank(m, j) = IsotonicCalibration(Ranker(assemble_rows(features(m), features(j))))
    score(m, j)  = sigmoid( logit(p_rank(m, j)) + beta_m . phi(j) + gamma_j . phi(m) )

beta_m and gamma_j are the posterior means the personalisation stage writes to the glmix_member /
glmix_job views (the population prior mean for ids it has never seen); phi(.) = [1, onehot(industry),
onehot(seniority)] (training.glmix.design). With exploration on (a request's `explore`), beta_m and gamma_j
are Thompson draws instead: each coordinate from N(mean_i, variance_i), the posterior's marginals that the
views hold beside the means (`*_re_variance`, the diagonal of the covariance; the population prior's for
ids never seen), one draw for the member and one per job, shared by every row it scores in the request.
A full-covariance state is sampled by its marginals here (its correlations stay in the model store, where
training.glmix.thompson draws exactly). The calibrated ranker is the GLMix global part, so the random
effects add to its logit. With no random-effect state the score is p_rank itself. A member without a
meta embedding online reads the meta-initialisation (LiMAML's cold-start embedding) when the ranker
takes that input.

The service splits the work between its two processes (features and random-effect offsets in the HTTP
front, `ranker_probabilities` + `combine` in the batching scorer); `score_candidates` runs the same
functions in one call and is what offline scoring, the tests and the skew check use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import pandas as pd

MEMBER_RE, JOB_RE = "member_re_mean", "job_re_mean"
MEMBER_RE_VARIANCE, JOB_RE_VARIANCE = "member_re_variance", "job_re_variance"
META_EMBEDDING = "meta_embedding"
_PROBABILITY_CLIP = 1e-7


@dataclass(frozen=True)
class RandomEffects:
    """GLMix random-effect bases and population prior means (the posterior means come with the features)."""

    member_basis: Any                    # training.glmix.design.CategoricalBasis over job attributes
    job_basis: Any                       # ... over member attributes
    member_prior_mean: np.ndarray
    job_prior_mean: np.ndarray
    tag: str | None = None
    member_prior_variance: np.ndarray | None = None   # for Thompson draws of ids never seen (None: 1 each)
    job_prior_variance: np.ndarray | None = None

    def prior_variance(self, of: str) -> np.ndarray:
        """The population prior's variances of the member ("member") or job ("job") coefficients."""
        mean, variance = ((self.member_prior_mean, self.member_prior_variance) if of == "member"
                          else (self.job_prior_mean, self.job_prior_variance))
        return np.ones(len(mean)) if variance is None else np.asarray(variance, dtype=np.float64)


@dataclass(frozen=True)
class MetaInit:
    """The MAML meta-initialisation flattened into a meta embedding (what a member with no history gets)."""

    embedding: np.ndarray
    tag: str | None = None


@dataclass
class ServingModels:
    """Everything that scores: the ranker with its input spec, and the optional personalisation parts."""

    ranker: Any
    spec: dict
    ranker_tag: str
    random_effects: RandomEffects | None = None
    meta_init: MetaInit | None = None
    extra: dict = field(default_factory=dict)

    def versions(self) -> dict[str, str | None]:
        return {"rankflow-ranker": self.ranker_tag,
                "rankflow-glmix": self.random_effects.tag if self.random_effects else None,
                "rankflow-meta": self.meta_init.tag if self.meta_init else None}


def candidate_frame(member_id: int, member: Mapping[str, Any] | None, jobs: pd.DataFrame) -> pd.DataFrame:
    """One row per candidate: the job's feature columns and the member's, as Feast returns them.

    `member` maps member-view feature names to values (None: the store has no row for the member);
    `jobs` holds `item_id` and the job-view columns, one row per candidate, in request order.
    """
    n = len(jobs)
    columns: dict[str, Any] = {"member_id": np.full(n, member_id, dtype=np.int64)}
    for name, value in (member or {}).items():
        if name not in ("member_id", "item_id"):
            columns[name] = [value] * n if isinstance(value, (list, tuple, np.ndarray)) else np.full(n, value, dtype=object if value is None or isinstance(value, str) else None)
    return pd.concat([pd.DataFrame(columns), jobs.reset_index(drop=True)], axis=1)


def _has_vector(value: Any) -> bool:
    return isinstance(value, (list, tuple, np.ndarray)) and len(value) > 0


def model_inputs(frame: pd.DataFrame, models: ServingModels) -> pd.DataFrame:
    """features.assemble.assemble_rows laid out as the ranker's training set (spec.json), meta embedding filled."""
    from features.assemble import assemble_rows

    inputs = assemble_rows(frame, models.spec)
    for name, width in (models.spec.get("embeddings") or {}).items():
        values = list(inputs[name]) if name in inputs.columns else [None] * len(inputs)
        if name == META_EMBEDDING and models.meta_init is not None:
            init = models.meta_init.embedding.astype(np.float32)
            values = [v if _has_vector(v) else init for v in values]
        # no vector: an empty one, read as zeros by encode_table (a column of nulls alone has no list type)
        inputs[name] = [np.asarray(v, dtype=np.float32) if _has_vector(v) else np.zeros(0, np.float32) for v in values]
    return inputs


def thompson_draw(mean: np.ndarray, variance: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """mean + sqrt(variance) * z, z ~ N(0, I), one draw per row of `mean` (shape [..., d])."""
    return mean + np.sqrt(np.maximum(variance, 0.0)) * rng.standard_normal(np.shape(mean))


def random_effect_offset(frame: pd.DataFrame, effects: RandomEffects | None,
                         rng: np.random.Generator | None = None) -> np.ndarray | None:
    """beta_m . phi(j) + gamma_j . phi(m) per row (prior means where the store has no posterior).

    With `rng`, Thompson draws of beta_m and gamma_j (module docstring): the member's first (one for the
    frame's member, whose rows all carry the same values), then one per row's job, in row order.
    """
    if effects is None:
        return None

    def stacked(column: str, prior: np.ndarray) -> np.ndarray:
        values = frame[column] if column in frame.columns else [None] * len(frame)
        rows = [np.asarray(v, dtype=np.float64) if _has_vector(v) and len(v) == len(prior) else prior for v in values]
        return np.stack(rows) if rows else np.zeros((0, len(prior)))

    def design(basis, prefix: str) -> np.ndarray:
        return basis.design({attribute: (frame[f"{prefix}{attribute}"].to_numpy(dtype=object)
                                         if f"{prefix}{attribute}" in frame.columns else np.full(len(frame), None))
                             for attribute, _ in basis.columns}, rows=len(frame)).astype(np.float64)

    beta = stacked(MEMBER_RE, effects.member_prior_mean)
    gamma = stacked(JOB_RE, effects.job_prior_mean)
    if rng is not None:
        beta_variance = stacked(MEMBER_RE_VARIANCE, effects.prior_variance("member"))
        beta = np.broadcast_to(thompson_draw(beta[:1], beta_variance[:1], rng), beta.shape)
        gamma = thompson_draw(gamma, stacked(JOB_RE_VARIANCE, effects.prior_variance("job")), rng)
    return (beta * design(effects.member_basis, "j_")).sum(1) + (gamma * design(effects.job_basis, "m_")).sum(1)


def forward_probabilities(model: Any, inputs: tuple) -> np.ndarray:
    """Calibrated probabilities of the ranker for (sparse, dense, bag_values, bag_offsets) tensors.

    The forward pass of training.ranker.train.predict_logits without its chunking copies (a request is far
    below its chunk size): the same module call on the same tensors, so the same numbers.
    """
    import torch

    with torch.inference_mode():
        probabilities = model.calibration(model(*inputs).float())
    return probabilities.double().numpy()


def ranker_probabilities(model: Any, spec: dict, inputs: pd.DataFrame) -> np.ndarray:
    """Calibrated ranker probabilities for assembled rows (training.ranker's own encoder and predictor)."""
    import pyarrow as pa

    from training.ranker.data import encode_table

    if len(inputs) == 0:
        return np.zeros(0, dtype=np.float64)
    columns = {spec.get("label", "label"): np.zeros(len(inputs), np.int8),
               spec.get("weight", "weight"): np.ones(len(inputs), np.float32)}
    table = pa.Table.from_pandas(inputs.assign(**{k: v for k, v in columns.items() if k not in inputs.columns}),
                                 preserve_index=False)
    batch = encode_table(table, spec, model.config, source="serving request")
    return forward_probabilities(model, batch.inputs)


def global_logit(probabilities: np.ndarray) -> np.ndarray:
    """logit(p) of the ranker's calibrated probabilities, clipped away from 0 and 1 (GLMix's global part)."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), _PROBABILITY_CLIP, 1 - _PROBABILITY_CLIP)
    return np.log(p) - np.log1p(-p)


def combine(probabilities: np.ndarray, offset: np.ndarray | None) -> np.ndarray:
    """sigmoid(logit(p) + offset); p itself when there is no random-effect offset."""
    if offset is None:
        return np.asarray(probabilities, dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-(global_logit(probabilities) + offset)))


def score_candidates(member_id: int, member: Mapping[str, Any] | None, jobs: pd.DataFrame,
                     models: ServingModels, rng: np.random.Generator | None = None) -> np.ndarray:
    """Calibrated scores of `jobs` for the member: the whole equation of the module docstring in one call
    (`rng`: Thompson draws of the random effects, exploration on)."""
    frame = candidate_frame(member_id, member, jobs)
    probabilities = ranker_probabilities(models.ranker, models.spec, model_inputs(frame, models))
    return combine(probabilities, random_effect_offset(frame, models.random_effects, rng))


def top_k(item_ids: np.ndarray, scores: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The k best (item_id, score), best first; ties broken by the request order (stable)."""
    order = np.argsort(-scores, kind="stable")[:k]
    return [(int(item_ids[i]), float(scores[i])) for i in order]
