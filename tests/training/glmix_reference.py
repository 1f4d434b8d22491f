"""Per-entity reference for the GLMix random-effect update: numpy/scipy, one entity at a time.

Deliberately plain: the same log posterior as training/glmix/random_effects.py
(prior N(m0, P0^-1) after forgetting, Bernoulli likelihood with offsets), maximised by Newton's
method with halving line search to a tight tolerance, Laplace precision at the mode. Tests compare
the batched torch solver with it; the benchmark times it per entity.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.linalg import cho_factor, cho_solve
from scipy.special import expit


def forgotten_prior(mean, precision, forgetting, pop_mean, pop_precision, revert_to_population=True):
    """Today's prior from yesterday's posterior (full precision matrices)."""
    if forgetting == 1.0:
        return mean, precision
    if not revert_to_population:
        return mean, forgetting * precision
    pop = np.diag(pop_precision)
    blended = forgetting * precision + (1 - forgetting) * pop
    rhs = forgetting * precision @ mean + (1 - forgetting) * pop @ pop_mean
    return np.linalg.solve(blended, rhs), blended


def _objective(theta, x, y, w, offset, prior_mean, prior_precision):
    eta = offset + x @ theta
    delta = theta - prior_mean
    return 0.5 * delta @ prior_precision @ delta + np.sum(w * (np.logaddexp(0.0, eta) - y * eta))


def laplace_update(x, y, w, offset, prior_mean, prior_precision, tolerance=1e-14, max_steps=200):
    """Posterior mode and Laplace precision of one entity; returns (mean, precision, steps)."""
    theta = prior_mean.astype(np.float64).copy()
    value = _objective(theta, x, y, w, offset, prior_mean, prior_precision)
    for step_count in range(1, max_steps + 1):
        p = expit(offset + x @ theta)
        gradient = prior_precision @ (theta - prior_mean) + x.T @ (w * (p - y))
        hessian = prior_precision + (x * (w * p * (1 - p))[:, None]).T @ x
        newton = -cho_solve(cho_factor(hessian), gradient)
        decrement = -gradient @ newton
        if decrement <= tolerance:
            return theta, hessian, step_count
        step = 1.0
        while step > 2.0**-30:
            candidate = theta + step * newton
            candidate_value = _objective(candidate, x, y, w, offset, prior_mean, prior_precision)
            if candidate_value <= value - 1e-4 * step * decrement + 1e-13 * (1 + abs(value)):
                break
            step *= 0.5
        else:
            return theta, hessian, step_count
        theta, value = candidate, candidate_value
    p = expit(offset + x @ theta)
    return theta, prior_precision + (x * (w * p * (1 - p))[:, None]).T @ x, max_steps


def reference_update(entity_ids, x, y, w, offset, priors):
    """Loop over entities in id order. `priors[id] = (mean, full precision)`; returns {id: (mean, precision)}."""
    result = {}
    for entity in np.unique(entity_ids):
        rows = entity_ids == entity
        prior_mean, prior_precision = priors[entity]
        mean, precision, _ = laplace_update(x[rows], y[rows], w[rows], offset[rows], prior_mean, prior_precision)
        result[entity] = (mean, precision)
    return result


@pytest.fixture(autouse=True)
def one_torch_thread():
    """GLMix tests run torch on one thread: on a shared, loaded 2-core box, OpenMP's two threads wait on each
    other at every small op (measured 100 s vs 6 s for the recovery test); results do not depend on it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
