"""Does adaptation personalise? Per-member AUC on a held-out day, by how much history the member has.

For each member active on `query_day`, three sub-networks score that day's jobs:
  adapted      phi_m = InnerLoop_k(phi_0, S_m)   the meta-init adapted on the member's earlier events
  meta_init    phi_0                              the same network, unadapted
  random_init  InnerLoop_k(phi_rand, S_m)        a freshly initialised sub-network, same k steps
Members are bucketed by support-set size: `cold_start` (no history: adapted == meta_init by construction),
`few` (1..few_max events) and `warm` (more). Naturally "few" members are rare among those with both labels
on a day, so a `n-shot` row adds the standard few-shot protocol (Finn et al. 2017): every member with history
is adapted on only their n most recent events. The metric is member_auc (training/meta/metrics.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from training.meta.adapt import InnerLoopConfig
from training.meta.maml import adapted_query_logits
from training.meta.metrics import member_auc
from training.meta.subnetwork import SubNetwork
from training.meta.tasks import PAD, Interactions, TaskConfig, query_day_tasks


@dataclass(frozen=True)
class BucketScores:
    bucket: str
    members: int
    events: int
    adapted: float
    meta_init: float
    random_init: float

    def row(self) -> str:
        return (f"| {self.bucket} | {self.members} | {self.events} | {self.adapted:.4f} | {self.meta_init:.4f} "
                f"| {self.random_init:.4f} |")


TABLE_HEADER = ("| bucket (support events) | members with both labels | query events | adapted AUC "
                "| meta-init AUC | random-init + k steps AUC |\n|---|---|---|---|---|---|")


@torch.no_grad()
def _day_scores(net: SubNetwork, interactions: Interactions, tasks, inner: InnerLoopConfig, adapt: bool,
                chunk: int = 8192) -> np.ndarray:
    inputs = interactions.job_inputs()
    labels, weights = interactions.targets()
    dtype = next(net.parameters()).dtype
    out = []
    for start in range(0, len(tasks), chunk):
        support = torch.from_numpy(tasks.support[start:start + chunk])
        query = torch.from_numpy(tasks.query[start:start + chunk])
        logits, _, _ = adapted_query_logits(net, inputs, labels.to(dtype), weights.to(dtype), support, query,
                                            inner, first_order=True, adapt=adapt)
        out.append(logits.float().numpy())
    return np.concatenate(out) if out else np.zeros((0, tasks.query.shape[1]), np.float32)


def evaluate_personalisation(
    net: SubNetwork,
    interactions: Interactions,
    query_day: int,
    task_config: TaskConfig = TaskConfig(),
    inner: InnerLoopConfig = InnerLoopConfig(),
    few_max: int = 10,
    shots: int | None = 5,
    random_seed: int = 12345,
) -> list[BucketScores]:
    """Scores of the three sub-networks on `query_day`, per history bucket (see module docstring)."""
    # Score every event of the day, not a capped sample.
    _, per_member = np.unique(interactions.member_id[interactions.day == query_day], return_counts=True)
    most = int(per_member.max()) if per_member.size else 1
    task_config = dataclasses.replace(task_config, query_events=most)
    torch.manual_seed(random_seed)
    random_net = SubNetwork(net.config).to(next(net.parameters()).dtype)
    random_net.load_state_dict({k: v for k, v in net.state_dict().items() if k.startswith("dense_")}, strict=False)
    tasks = query_day_tasks(interactions, query_day, task_config)
    count = tasks.support_count
    results = _bucket_scores(net, random_net, interactions, tasks, inner, {
        "cold_start (0)": count == 0, f"few (1-{few_max})": (count >= 1) & (count <= few_max),
        f"warm (>{few_max})": count > few_max})
    if shots:
        shot_config = dataclasses.replace(task_config, recent_events=shots, sampled_events=0)
        shot_tasks = query_day_tasks(interactions, query_day, shot_config)
        results += _bucket_scores(net, random_net, interactions, shot_tasks, inner,
                                  {f"{shots}-shot (all with history)": shot_tasks.support_count > 0})
    return results


def _bucket_scores(net, random_net, interactions, tasks, inner, buckets) -> list[BucketScores]:
    scores = {
        "adapted": _day_scores(net, interactions, tasks, inner, adapt=True),
        "meta_init": _day_scores(net, interactions, tasks, inner, adapt=False),
        "random_init": _day_scores(random_net, interactions, tasks, inner, adapt=True),
    }
    present = tasks.query != PAD
    rows = np.where(present, tasks.query, 0)
    labels = interactions.label[rows]
    members = np.broadcast_to(np.arange(len(tasks))[:, None], rows.shape)
    results = []
    for name, in_bucket in buckets.items():
        mask = present & in_bucket[:, None]
        values = {key: member_auc(score[mask], labels[mask], members[mask]) for key, score in scores.items()}
        results.append(BucketScores(name, values["adapted"][1], int(mask.sum()), values["adapted"][0],
                                    values["meta_init"][0], values["random_init"][0]))
    return results
