"""The personalisation metric: mean per-member AUC (numpy only; pooled AUC and log loss are the ranker's,
training/ranker/evaluate.py).

member_auc: the mean of each member's own AUC, P(score of a random positive > score of a random negative)
with ties counted half, over members who have both labels (a "group AUC"). It measures ordering jobs *for*
a member, which is what personalisation changes, unlike a pooled AUC that mostly rewards knowing which
members apply more.
"""

from __future__ import annotations

import numpy as np


def member_auc(scores: np.ndarray, labels: np.ndarray, member_id: np.ndarray) -> tuple[float, int]:
    """(mean per-member AUC, number of members it averages over), vectorised over members."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels) > 0.5
    member_id = np.asarray(member_id)
    if member_id.size == 0:
        return float("nan"), 0
    # Rank scores within each member: sort by (member, score), average ties inside a member.
    order = np.lexsort((scores, member_id))
    m, s, y = member_id[order], scores[order], labels[order]
    group_start = np.r_[True, m[1:] != m[:-1]]
    tie_start = group_start | np.r_[True, s[1:] != s[:-1]]
    tie_id = np.cumsum(tie_start) - 1
    position = np.arange(m.size, dtype=np.float64)
    group_id = np.cumsum(group_start) - 1
    first_in_group = np.flatnonzero(group_start)[group_id]
    tie_first = np.flatnonzero(tie_start)
    tie_last = np.r_[tie_first[1:], m.size] - 1
    rank = (position[tie_first] + position[tie_last])[tie_id] / 2 - first_in_group + 1  # 1-based in member
    n_groups = int(group_id[-1]) + 1
    positives = np.bincount(group_id, weights=y, minlength=n_groups)
    negatives = np.bincount(group_id, weights=~y, minlength=n_groups)
    rank_sum = np.bincount(group_id, weights=rank * y, minlength=n_groups)
    both = (positives > 0) & (negatives > 0)
    if not both.any():
        return float("nan"), 0
    per_member = (rank_sum[both] - positives[both] * (positives[both] + 1) / 2) / (positives[both] * negatives[both])
    return float(per_member.mean()), int(both.sum())
