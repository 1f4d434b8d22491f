"""Thompson sampling draws from the stored posterior N(mu, P^-1) (and the population prior for newcomers)."""

import torch
from glmix_reference import one_torch_thread  # noqa: F401 (autouse fixture)

from training.glmix.random_effects import RandomEffectConfig, RandomEffectState
from training.glmix.thompson import sample_coefficients, thompson_scores


def test_draws_have_the_posterior_mean_and_covariance():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(3, 3, dtype=torch.float64, generator=generator)
    precision = a @ a.T + 0.5 * torch.eye(3, dtype=torch.float64)
    mean = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    config = RandomEffectConfig(dim=3, prior_mean=0.3, prior_variance=4.0)
    state = RandomEffectState(torch.tensor([5]), mean[None], precision[None])
    draws = sample_coefficients(state, config, torch.tensor([5, 9]), num_samples=40_000, generator=generator)
    seen, unseen = draws[0], draws[1]
    torch.testing.assert_close(seen.mean(0), mean, atol=0.03, rtol=0)
    torch.testing.assert_close(torch.cov(seen.T), torch.linalg.inv(precision), atol=0.03, rtol=0.05)
    torch.testing.assert_close(unseen.mean(0), torch.full((3,), 0.3, dtype=torch.float64), atol=0.05, rtol=0)
    torch.testing.assert_close(unseen.var(0), torch.full((3,), 4.0, dtype=torch.float64), atol=0, rtol=0.05)

    diagonal = RandomEffectState(torch.tensor([5]), mean[None], torch.tensor([[4.0, 1.0, 0.25]], dtype=torch.float64))
    draws = sample_coefficients(diagonal, config, torch.tensor([5]), num_samples=40_000, generator=generator)[0]
    torch.testing.assert_close(draws.var(0), torch.tensor([0.25, 1.0, 4.0], dtype=torch.float64), atol=0, rtol=0.05)


def test_one_draw_per_entity_is_shared_by_its_rows():
    config = RandomEffectConfig(dim=2)
    state = RandomEffectState(torch.tensor([1, 2]), torch.zeros(2, 2), torch.ones(2, 2, 2) * torch.eye(2))
    features = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    scores = thompson_scores(state, config, torch.tensor([1, 1, 2]), features, torch.tensor([0.0, 1.0, 0.0]),
                             generator=torch.Generator().manual_seed(1))
    assert torch.isclose(scores[1] - scores[0], torch.tensor(1.0))  # same draw, offsets differ by 1
    assert not torch.isclose(scores[0], scores[2])
