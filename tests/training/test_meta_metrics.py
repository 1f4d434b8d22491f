"""member_auc: the vectorised per-member AUC equals each member's AUC computed by brute force, averaged."""

from __future__ import annotations

import numpy as np

from training.meta.metrics import member_auc


def _brute_auc(scores, labels):
    positive, negative = scores[labels], scores[~labels]
    wins = (positive[:, None] > negative[None]).sum() + 0.5 * (positive[:, None] == negative[None]).sum()
    return wins / (positive.size * negative.size)


def test_member_auc_matches_brute_force_with_ties_and_one_class_members() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=400).round(1)                 # rounding makes ties
    labels = rng.random(400) < 0.3
    members = rng.integers(0, 12, 400)
    labels[members == 11] = False                           # a member with one class only is skipped
    expected = np.mean([_brute_auc(scores[members == m], labels[members == m]) for m in range(11)])
    value, counted = member_auc(scores, labels, members)
    assert counted == 11
    assert abs(value - expected) < 1e-12


def test_member_auc_of_perfect_and_reversed_orderings() -> None:
    members = np.array([1, 1, 1, 2, 2, 2])
    labels = np.array([1, 0, 0, 0, 1, 0], bool)
    assert member_auc(np.array([3.0, 1, 2, 0, 9, 1]), labels, members) == (1.0, 2)
    assert member_auc(np.array([0.0, 1, 2, 5, 0, 1]), labels, members) == (0.0, 2)
