"""The global part of GLMix: an L2-regularised logistic regression over the day's dense features.

    logit = b + w . (x - center) / scale,
    minimise  sum_i v_i [softplus(o_i + logit_i) - y_i (o_i + logit_i)] + l2/2 |w|^2

solved by damped Newton steps (features are few, tens). Refit daily, warm-started from yesterday's
coefficients, with the random effects' current scores as offsets o_i (GAME's fixed-effect step); its logit
is then the offset of the random-effect updates. When a serving ranker exists its
logit replaces this model as the offset (see rankflow.stages.personalise).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class FixedEffectConfig:
    l2: float = 1.0
    max_newton_steps: int = 25
    tolerance: float = 1e-10  # on the Newton decrement


@dataclass
class FixedEffectModel:
    """Coefficients on standardised features; `feature_names` fixes the column order."""

    feature_names: list[str]
    center: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float

    def logit(self, features: np.ndarray, chunk_rows: int = 1 << 15) -> np.ndarray:
        """Rows a chunk at a time: the standardised chunk stays in cache (the whole day's two (n, k) float64
        temporaries took 3.0 s for 2M rows x 35 features, chunks 0.11 s). Chunks of a multiple of 8 rows give
        each row the bits one BLAS thread gives it over the whole array (BLAS blocks rows by 4 or 8; other sizes
        move last bits); threads splitting the whole array could move a row's last bit, chunks do not."""
        if chunk_rows < 8 or chunk_rows % 8:
            raise ValueError(f"FixedEffectModel.logit: chunk_rows must be a positive multiple of 8, got {chunk_rows}")
        features = np.asarray(features)
        out = np.empty(len(features), dtype=np.float64)
        for start in range(0, len(features), chunk_rows):
            z = (np.asarray(features[start:start + chunk_rows], dtype=np.float64) - self.center) / self.scale
            out[start:start + chunk_rows] = z @ self.weights + self.bias
        return out

    def to_json(self) -> dict:
        return {"feature_names": self.feature_names, "center": self.center.tolist(), "scale": self.scale.tolist(),
                "weights": self.weights.tolist(), "bias": self.bias}

    @classmethod
    def from_json(cls, data: dict) -> "FixedEffectModel":
        return cls(list(data["feature_names"]), np.asarray(data["center"]), np.asarray(data["scale"]),
                   np.asarray(data["weights"]), float(data["bias"]))


def _require_finite(features: torch.Tensor, columns: dict[str, torch.Tensor], feature_names: list[str]) -> None:
    """Refuse NaN / inf input, naming each feature column or field that holds one and how often."""
    counts = {f"feature {name!r}": int(n) for name, n in zip(feature_names, (~torch.isfinite(features)).sum(0)) if n}
    counts.update({name: int(n) for name, value in columns.items() if (n := (~torch.isfinite(value)).sum())})
    if counts:
        found = ", ".join(f"{name} ({n} rows)" for name, n in counts.items())
        raise ValueError(f"fit_fixed_effect: non-finite values in {found}; drop those rows first "
                         f"(training.glmix.model.usable_rows, as update_day does)")


def fit_fixed_effect(features: np.ndarray, labels: np.ndarray, feature_names: list[str],
                     weights: np.ndarray | None = None, warm_start: FixedEffectModel | None = None,
                     offsets: np.ndarray | None = None,
                     config: FixedEffectConfig = FixedEffectConfig()) -> FixedEffectModel:
    """Fit (or refit from `warm_start` when its feature names match) on one day's rows.

    `offsets`: per-row scores added to the logit while fitting (the random effects), not part of the model.
    """
    x = torch.as_tensor(np.asarray(features, dtype=np.float64))
    if x.dim() != 2 or x.shape[1] != len(feature_names):
        raise ValueError(f"fit_fixed_effect: features are {tuple(x.shape)}, expected (n, {len(feature_names)})")
    y = torch.as_tensor(np.asarray(labels, dtype=np.float64))
    v = torch.ones_like(y) if weights is None else torch.as_tensor(np.asarray(weights, dtype=np.float64))
    o = torch.zeros_like(y) if offsets is None else torch.as_tensor(np.asarray(offsets, dtype=np.float64))
    _require_finite(x, {"labels": y, "weights": v, "offsets": o}, feature_names)
    # Standardise on today's rows; a constant column (e.g. every member cold on the first day) gets scale 1.
    center = x.mean(0) if len(x) else torch.zeros(x.shape[1], dtype=torch.float64)
    spread = x.std(0) if len(x) > 1 else torch.zeros(x.shape[1], dtype=torch.float64)
    scale = torch.where(spread > 1e-8 * (1 + center.abs()), spread, torch.ones_like(spread))
    if warm_start is not None and warm_start.feature_names == list(feature_names):
        # Same function, today's standardisation: w' = w s'/s, b' = b + sum w (c' - c)/s.
        old_w, old_c, old_s = (torch.as_tensor(a, dtype=torch.float64)
                               for a in (warm_start.weights, warm_start.center, warm_start.scale))
        theta = torch.cat([torch.tensor([warm_start.bias + float((old_w * (center - old_c) / old_s).sum())]),
                           old_w * scale / old_s])
    else:
        rate = float((v * y).sum() / v.sum().clamp_min(1e-12)) if len(x) else 0.5
        rate = min(max(rate, 1e-4), 1 - 1e-4)
        theta = torch.zeros(x.shape[1] + 1, dtype=torch.float64)
        theta[0] = float(np.log(rate / (1 - rate)))
    z = torch.cat([torch.ones(len(x), 1, dtype=torch.float64), (x - center) / scale], 1)
    ridge = torch.full((z.shape[1],), config.l2, dtype=torch.float64)
    ridge[0] = 0.0  # the bias is not shrunk

    def objective(t: torch.Tensor) -> torch.Tensor:
        eta = o + z @ t
        return (v * (F.softplus(eta) - y * eta)).sum() + 0.5 * (ridge * t * t).sum()

    value = objective(theta)
    for _ in range(config.max_newton_steps):
        p = torch.sigmoid(o + z @ theta)
        gradient = z.T @ (v * (p - y)) + ridge * theta
        hessian = (z * (v * p * (1 - p))[:, None]).T @ z + torch.diag(ridge + 1e-9)
        newton = -torch.cholesky_solve(gradient[:, None], torch.linalg.cholesky(hessian))[:, 0]
        decrement = float(-(gradient @ newton))
        if decrement <= config.tolerance:
            break
        step = 1.0
        while step > 1e-8:
            candidate = theta + step * newton
            candidate_value = objective(candidate)
            if candidate_value <= value - 1e-4 * step * decrement:
                break
            step *= 0.5
        else:
            break
        theta, value = candidate, candidate_value
    return FixedEffectModel(list(feature_names), center.numpy().copy(), scale.numpy().copy(),
                            theta[1:].numpy().copy(), float(theta[0]))
