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
from training.meta.tasks import PAD, Interactions, Tasks, TaskConfig, padded_sets, query_day_tasks


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
    """Scores of the three sub-networks on `query_day`, per history bucket (see module docstring).

    Every event of the day is scored, not a capped sample; members are scored in groups by the size of their
    day (widths 1, 2, 4, ...), each group's query sets padded only to its own width: one member with thousands
    of events on the day padded every member's set to that length (3.3 GB at 10x the demo size, 1 GB without).
    """
    torch.manual_seed(random_seed)
    random_net = SubNetwork(net.config).to(next(net.parameters()).dtype)
    random_net.load_state_dict({k: v for k, v in net.state_dict().items() if k.startswith("dense_")}, strict=False)
    tasks = query_day_tasks(interactions, query_day, dataclasses.replace(task_config, query_events=1))
    flat = _flat_scores(net, random_net, interactions, _by_day_size(tasks, interactions, query_day), inner)
    count = flat["support"]
    results = _bucket_scores(flat, {
        "cold_start (0)": count == 0, f"few (1-{few_max})": (count >= 1) & (count <= few_max),
        f"warm (>{few_max})": count > few_max})
    if shots:
        shot_config = dataclasses.replace(task_config, recent_events=shots, sampled_events=0, query_events=1)
        shot_tasks = query_day_tasks(interactions, query_day, shot_config)
        shot = _flat_scores(net, random_net, interactions, _by_day_size(shot_tasks, interactions, query_day), inner)
        results += _bucket_scores(shot, {f"{shots}-shot (all with history)": shot["support"] > 0})
    return results


def _by_day_size(tasks: Tasks, interactions: Interactions, query_day: int):
    """`tasks` (support sets as drawn) split by the member's number of events on the day, in power-of-two widths,
    each with a query set of all those events (oldest first), padded to the group's width."""
    on_day = interactions.day == query_day
    counts = np.bincount(np.searchsorted(tasks.member_id, interactions.member_id[on_day]), minlength=len(tasks))
    widths = np.left_shift(1, np.ceil(np.log2(np.maximum(counts, 1))).astype(np.int64))
    unused = np.random.default_rng(0)  # a width holds every event of its members: nothing is sampled
    for width in np.unique(widths):
        index = np.flatnonzero(widths == width)
        query = padded_sets(interactions.member_id, interactions.time, on_day, tasks.member_id[index], 0,
                            int(width), unused)
        yield Tasks(tasks.member_id[index], tasks.support[index], query)


def _flat_scores(net, random_net, interactions, groups, inner) -> dict[str, np.ndarray]:
    """Per query event (groups concatenated): the three networks' scores, label, member id, support size."""
    parts = []
    for tasks in groups:
        present = tasks.query != PAD
        part = {
            "adapted": _day_scores(net, interactions, tasks, inner, adapt=True)[present],
            "meta_init": _day_scores(net, interactions, tasks, inner, adapt=False)[present],
            "random_init": _day_scores(random_net, interactions, tasks, inner, adapt=True)[present],
            "label": interactions.label[tasks.query[present]],
            "member": np.broadcast_to(tasks.member_id[:, None], present.shape)[present],
            "support": np.broadcast_to(tasks.support_count[:, None], present.shape)[present],
        }
        parts.append(part)
    if not parts:
        return {key: np.zeros(0) for key in ("adapted", "meta_init", "random_init", "label", "member", "support")}
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


def _bucket_scores(flat: dict[str, np.ndarray], buckets: dict[str, np.ndarray]) -> list[BucketScores]:
    results = []
    for name, mask in buckets.items():
        values = {key: member_auc(flat[key][mask], flat["label"][mask], flat["member"][mask])
                  for key in ("adapted", "meta_init", "random_init")}
        results.append(BucketScores(name, values["adapted"][1], int(mask.sum()), values["adapted"][0],
                                    values["meta_init"][0], values["random_init"][0]))
    return results
