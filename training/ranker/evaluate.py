"""Offline metrics of a click model on one evaluation set (numpy only).

    AUC        P(s_pos > s_neg) (+ 1/2 P(tie)), weighted by row weights
    log loss   L = -sum_i w_i [y_i log p_i + (1 - y_i) log(1 - p_i)] / sum_i w_i
    NE         L / H(ybar)  with H the entropy of the weighted base rate ybar (He et al., 2014): < 1 beats
               predicting the base rate; lower is better
    ECE        sum_b (W_b / W) |mean_b(p) - mean_b(y)| over `bins` equal-width probability bins
    oracle AUC the AUC of the generator's true probabilities (synthetic data): the best any model can do

AUC by member bucket: "cold" members had no training rows (their member-id embedding is untrained),
"warm" members had some. A model with a position term (position.py) is scored at the logged positions;
its AUC without them (every row at position 1, as the service scores) is reported beside it: the part
of the AUC that ranks candidates, not positions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

_EPS = 1e-7


def auc(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Weighted ROC AUC with ties counted as one half; NaN when one class is absent."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    weights = np.ones_like(scores) if weights is None else np.asarray(weights, dtype=np.float64)
    positive, negative = weights * labels, weights * (1 - labels)
    total_pos, total_neg = positive.sum(), negative.sum()
    if total_pos <= 0 or total_neg <= 0:
        return float("nan")
    unique, group = np.unique(scores, return_inverse=True)
    pos_at = np.bincount(group, weights=positive, minlength=unique.size)
    neg_at = np.bincount(group, weights=negative, minlength=unique.size)
    negatives_below = np.cumsum(neg_at) - neg_at
    return float((pos_at * (negatives_below + 0.5 * neg_at)).sum() / (total_pos * total_neg))


def log_loss(probabilities: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> float:
    p = np.clip(np.asarray(probabilities, dtype=np.float64), _EPS, 1 - _EPS)
    y = np.asarray(labels, dtype=np.float64)
    w = np.ones_like(p) if weights is None else np.asarray(weights, dtype=np.float64)
    return float(-(w * (y * np.log(p) + (1 - y) * np.log(1 - p))).sum() / w.sum())


def normalized_entropy(probabilities: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> float:
    w = np.ones(len(labels)) if weights is None else np.asarray(weights, dtype=np.float64)
    base = float(np.clip((w * labels).sum() / w.sum(), _EPS, 1 - _EPS))
    entropy = -(base * np.log(base) + (1 - base) * np.log(1 - base))
    return log_loss(probabilities, labels, weights) / entropy


@dataclass
class ReliabilityCurve:
    """Per probability bin: mean prediction, observed rate and weight (empty bins dropped)."""

    predicted: list[float] = field(default_factory=list)
    observed: list[float] = field(default_factory=list)
    weight: list[float] = field(default_factory=list)


def reliability(probabilities: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None, bins: int = 15) -> ReliabilityCurve:
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    w = np.ones_like(p) if weights is None else np.asarray(weights, dtype=np.float64)
    index = np.minimum((p * bins).astype(np.int64), bins - 1)
    weight = np.bincount(index, weights=w, minlength=bins)
    predicted = np.bincount(index, weights=w * p, minlength=bins)
    observed = np.bincount(index, weights=w * y, minlength=bins)
    keep = weight > 0
    return ReliabilityCurve(
        (predicted[keep] / weight[keep]).tolist(), (observed[keep] / weight[keep]).tolist(), weight[keep].tolist()
    )


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None, bins: int = 15) -> float:
    curve = reliability(probabilities, labels, weights, bins)
    gaps = np.abs(np.asarray(curve.predicted) - np.asarray(curve.observed))
    bin_weight = np.asarray(curve.weight)
    return float((gaps * bin_weight).sum() / bin_weight.sum())


@dataclass
class Evaluation:
    """Everything `rankflow evaluate` reports for one model on one evaluation set."""

    rows: int
    positive_rate: float
    auc: float
    log_loss: float
    normalized_entropy: float
    ece: float
    ece_uncalibrated: float
    auc_cold: float
    auc_warm: float
    cold_rows: int
    auc_without_position: float | None = None
    oracle_auc: float | None = None
    oracle_log_loss: float | None = None
    reliability: ReliabilityCurve = field(default_factory=ReliabilityCurve)

    @property
    def auc_gap_to_oracle(self) -> float | None:
        return None if self.oracle_auc is None else self.oracle_auc - self.auc

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["auc_gap_to_oracle"] = self.auc_gap_to_oracle
        return values

    def summary(self) -> dict[str, float]:
        """The headline numbers (for model-store metadata and the CLI)."""
        keys = ("rows", "auc", "log_loss", "normalized_entropy", "ece", "auc_cold", "auc_warm", "auc_without_position",
                "oracle_auc")
        values = {k: getattr(self, k) for k in keys}
        values["auc_gap_to_oracle"] = self.auc_gap_to_oracle
        return {k: (None if v is None or (isinstance(v, float) and np.isnan(v)) else v) for k, v in values.items()}


def evaluate_predictions(
    logits: np.ndarray,
    probabilities: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray,
    member_ids: np.ndarray,
    warm_members: np.ndarray,
    true_probabilities: np.ndarray | None = None,
    bins: int = 15,
    logits_without_position: np.ndarray | None = None,
) -> Evaluation:
    """All metrics of one evaluation set. AUC is computed on the logits (calibration is monotone
    but piecewise flat, so it can only tie rows), the probability metrics on the calibrated p.
    `logits_without_position`: the same rows scored at position 1, for a model with a position term."""
    logits, probabilities = np.asarray(logits, np.float64), np.asarray(probabilities, np.float64)
    labels, weights = np.asarray(labels, np.float64), np.asarray(weights, np.float64)
    cold = ~np.isin(member_ids, warm_members)
    raw_probabilities = 0.5 * (1.0 + np.tanh(0.5 * logits))  # the sigmoid, without exp's overflow warning
    result = Evaluation(
        rows=int(labels.size),
        positive_rate=float((weights * labels).sum() / weights.sum()),
        auc=auc(logits, labels, weights),
        log_loss=log_loss(probabilities, labels, weights),
        normalized_entropy=normalized_entropy(probabilities, labels, weights),
        ece=expected_calibration_error(probabilities, labels, weights, bins),
        ece_uncalibrated=expected_calibration_error(raw_probabilities, labels, weights, bins),
        auc_cold=auc(logits[cold], labels[cold], weights[cold]) if cold.any() else float("nan"),
        auc_warm=auc(logits[~cold], labels[~cold], weights[~cold]) if (~cold).any() else float("nan"),
        cold_rows=int(cold.sum()),
        reliability=reliability(probabilities, labels, weights, bins),
    )
    if logits_without_position is not None:
        result.auc_without_position = auc(np.asarray(logits_without_position, np.float64), labels, weights)
    if true_probabilities is not None:
        true_probabilities = np.asarray(true_probabilities, np.float64)
        result.oracle_auc = auc(true_probabilities, labels, weights)
        result.oracle_log_loss = log_loss(true_probabilities, labels, weights)
    return result
