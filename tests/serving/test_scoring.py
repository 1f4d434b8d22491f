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
