"""Random effects enter in logit space on top of the calibrated ranker; unseen ids get the prior mean."""

from __future__ import annotations

import numpy as np
import pandas as pd

from serving.scoring import RandomEffects, candidate_frame, combine, random_effect_offset, top_k
from training.glmix.design import CategoricalBasis


def effects() -> RandomEffects:
    member_basis = CategoricalBasis.from_vocabularies({"industry": ["energy", "retail"]})   # over job attributes
    job_basis = CategoricalBasis.from_vocabularies({"seniority": ["entry", "senior"]})    # over member attributes
    return RandomEffects(member_basis, job_basis, np.zeros(3), np.zeros(3), "rankflow-glmix:test")


def test_offset_is_member_effect_on_job_design_plus_job_effect_on_member_design():
    jobs = pd.DataFrame({"item_id": [10, 11, 12], "j_industry": ["retail", "energy", "unseen"],
                         "job_re_mean": [[0.5, 0.0, 1.0], None, [0.0, 2.0, 0.0]]})
    member = {"m_seniority": "senior", "member_re_mean": [0.1, -1.0, 3.0]}
    offset = random_effect_offset(candidate_frame(7, member, jobs), effects())
    # member: beta . [1, energy, retail]; job: gamma . [1, entry, senior] with the member 'senior'
    expected = [0.1 + 3.0 + (0.5 + 1.0), 0.1 - 1.0 + 0.0, 0.1 + 0.0]
    np.testing.assert_allclose(offset, expected)


def test_cold_member_reads_the_population_prior_and_combine_is_logit_additive():
    jobs = pd.DataFrame({"item_id": [1], "j_industry": ["energy"], "job_re_mean": [None]})
    prior = RandomEffects(effects().member_basis, effects().job_basis, np.array([0.2, 0.0, 0.0]), np.zeros(3))
    offset = random_effect_offset(candidate_frame(1, None, jobs), prior)
    np.testing.assert_allclose(offset, [0.2])
    p = np.array([0.25])
    np.testing.assert_allclose(combine(p, offset), 1 / (1 + np.exp(-(np.log(0.25 / 0.75) + 0.2))))
    assert combine(p, None) is not None and combine(p, None)[0] == 0.25


def test_top_k_is_best_first_and_stable_on_ties():
    assert top_k(np.array([5, 6, 7, 8]), np.array([0.1, 0.3, 0.3, 0.2]), 3) == [(6, 0.3), (7, 0.3), (8, 0.2)]


def test_thompson_offsets_draw_one_member_effect_and_one_per_job_from_the_posterior_marginals():
    jobs = pd.DataFrame({"item_id": [10, 11], "j_industry": ["retail", "energy"],
                         "job_re_mean": [[0.5, 0.0, 1.0], None], "job_re_variance": [[0.04, 0.0, 0.25], None]})
    member = {"m_seniority": "senior", "member_re_mean": [0.1, -1.0, 3.0], "member_re_variance": [0.01, 1.0, 0.09]}
    prior = RandomEffects(effects().member_basis, effects().job_basis, np.zeros(3), np.zeros(3), None,
                          np.full(3, 4.0), np.full(3, 9.0))
    frame = candidate_frame(7, member, jobs)
    means = random_effect_offset(frame, prior)
    rng = np.random.default_rng(0)
    draws = np.stack([random_effect_offset(frame, prior, rng) for _ in range(20_000)])
    # row 0: (beta_0 + beta_retail) + (gamma_0 + gamma_senior); row 1 (job never seen: prior variance 9 each):
    # (beta_0 + beta_energy) + (gamma_0 + gamma_senior)
    np.testing.assert_allclose(draws.mean(0), means, atol=0.05)
    np.testing.assert_allclose(draws.var(0), [0.01 + 0.09 + 0.04 + 0.25, 0.01 + 1.0 + 9.0 + 9.0], rtol=0.05)
    # one member draw shared by all rows: two jobs of one industry with certain effects score alike in each
    # draw, and differently across draws
    same = candidate_frame(7, member, pd.DataFrame({"item_id": [1, 2], "j_industry": ["retail", "retail"],
                                                    "job_re_mean": [[0.0] * 3] * 2, "job_re_variance": [[0.0] * 3] * 2}))
    shared = np.stack([random_effect_offset(same, prior, rng) for _ in range(50)])
    np.testing.assert_array_equal(shared[:, 0], shared[:, 1])
    assert len(np.unique(shared[:, 0])) == 50
    zero = RandomEffects(prior.member_basis, prior.job_basis, np.zeros(3), np.zeros(3), None, np.zeros(3), np.zeros(3))
    certain = candidate_frame(7, {**member, "member_re_variance": [0.0] * 3},
                              jobs.assign(job_re_variance=[[0.0] * 3, None]))
    np.testing.assert_array_equal(random_effect_offset(certain, zero, rng), random_effect_offset(certain, zero))
