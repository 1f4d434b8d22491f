"""Acceptance: meta-learned adaptation personalises on the synthetic marketplace.

1. On each member's next-day events, the adapted sub-network ranks jobs better (mean per-member AUC) than
   the unadapted meta-initialisation and than a randomly initialised sub-network given the same k steps,
   for members with few interactions (buckets: cold start, few, warm; printed with -s).
2. A logistic model over [features, meta embedding] beats the same model over the features alone on the
   next day (AUC and log loss).
Also measures first- vs second-order MAML (seconds per outer step, query AUC) on the same data.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from tests.training.meta_testdata import JOB_CATEGORICAL, event_frame, generate_marketplace
from training.meta.adapt import InnerLoopConfig, meta_embeddings
from training.meta.evaluate import TABLE_HEADER, evaluate_personalisation
from training.meta.frames import interactions_from_frame
from training.meta.maml import MetaTrainConfig, meta_train
from training.meta.subnetwork import SubNetwork, SubNetworkConfig
from training.meta.tasks import TaskConfig, concat_tasks, embed_set, query_day_tasks, support_sets
from training.ranker.evaluate import auc, log_loss

SUBNETWORK = SubNetworkConfig(categorical_columns=JOB_CATEGORICAL, multi_valued_columns=("j_skills",),
                              dense_columns=("j_salary",))
TASKS = TaskConfig(window_days=7)
INNER = InnerLoopConfig()
OUTER = MetaTrainConfig(outer_steps=300)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # These models are tiny: on a shared 2-core machine, two OpenMP threads spin against other processes and
    # cost ~10x the CPU time of one (measured: 107 vs 10 CPU-seconds for 300 outer steps).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def marketplace(tmp_path_factory):
    frame = event_frame(generate_marketplace(tmp_path_factory.mktemp("meta_market")))
    interactions = interactions_from_frame(frame, SUBNETWORK)
    days = np.unique(interactions.day)
    return frame, interactions, days


def _meta_trained(interactions, query_days, first_order=OUTER.first_order):
    torch.manual_seed(0)
    net = SubNetwork(SUBNETWORK)
    inputs = interactions.job_inputs()
    labels, weights = interactions.targets()
    net.fit_dense_scaling(inputs.dense)
    tasks = concat_tasks([query_day_tasks(interactions, int(d), TASKS) for d in query_days])
    history = meta_train(net, inputs, labels, weights, tasks, dataclasses.replace(OUTER, first_order=first_order),
                         INNER)
    return net, history


@pytest.fixture(scope="module")
def trained(marketplace):
    _, interactions, days = marketplace
    # Query days 2..T-2: the last two days stay unseen (T-1 trains the logistic model, T evaluates).
    return _meta_trained(interactions, days[1:-2])


@pytest.mark.slow
def test_adapted_beats_meta_init_and_random_init_for_few_interactions(marketplace, trained) -> None:
    _, interactions, days = marketplace
    net, history = trained
    buckets = evaluate_personalisation(net, interactions, int(days[-1]), TASKS, INNER)
    print(f"\nmeta-training: query loss {history.query_loss[0]:.4f} -> {np.mean(history.query_loss[-20:]):.4f}")
    print(TABLE_HEADER)
    for bucket in buckets:
        print(bucket.row())
    cold, few, warm, five_shot = buckets
    assert cold.adapted == pytest.approx(cold.meta_init)      # no history: the meta-init is the embedding
    assert few.members >= 30 and five_shot.members >= 300
    for bucket in (few, five_shot, warm):
        assert bucket.adapted > bucket.meta_init, bucket
        assert bucket.adapted > bucket.random_init, bucket


@pytest.mark.slow
def test_scoring_by_day_size_equals_one_matrix_padded_to_the_busiest_member(marketplace, trained) -> None:
    """evaluate_personalisation scores members in groups by the size of their day (memory: one busy member
    padded everyone's query set to its length); the buckets equal scoring one matrix padded to the busiest."""
    from training.meta.evaluate import _day_scores
    from training.meta.metrics import member_auc
    from training.meta.tasks import PAD

    _, interactions, days = marketplace
    net, _ = trained
    day = int(days[-1])
    ours = evaluate_personalisation(net, interactions, day, TASKS, INNER, shots=None)
    most = int(np.unique(interactions.member_id[interactions.day == day], return_counts=True)[1].max())
    tasks = query_day_tasks(interactions, day, dataclasses.replace(TASKS, query_events=most))
    present = tasks.query != PAD
    labels = interactions.label[np.where(present, tasks.query, 0)]
    members = np.broadcast_to(np.arange(len(tasks))[:, None], present.shape)
    adapted = _day_scores(net, interactions, tasks, INNER, adapt=True)
    meta_init = _day_scores(net, interactions, tasks, INNER, adapt=False)
    count = tasks.support_count
    assert most > 2 and len(ours) == 3
    for bucket, in_bucket in zip(ours, (count == 0, (count >= 1) & (count <= 10), count > 10)):
        mask = present & in_bucket[:, None]
        assert bucket.events == mask.sum() and bucket.members == member_auc(adapted[mask], labels[mask],
                                                                            members[mask])[1]
        assert bucket.adapted == pytest.approx(member_auc(adapted[mask], labels[mask], members[mask])[0], abs=1e-4)
        assert bucket.meta_init == pytest.approx(member_auc(meta_init[mask], labels[mask], members[mask])[0],
                                                 abs=1e-4)


def _embeddings_as_of(net, interactions, members, day):
    """Meta embeddings of `members` adapted on their events up to the end of `day` (point-in-time)."""
    tasks = support_sets(interactions, members, day, TASKS)
    inputs = interactions.job_inputs()
    labels, weights = interactions.targets()
    with torch.no_grad():
        hidden, support_labels, support_weights = embed_set(net, torch.from_numpy(tasks.support), inputs, labels,
                                                            weights)
        embedding, _ = meta_embeddings(net, hidden, support_labels, support_weights, INNER)
    return tasks.member_id, embedding.numpy()


def _features(frame):
    """A plain feature set: one-hot job and member attributes, attribute matches, skill overlap."""
    import pandas as pd

    columns = [pd.get_dummies(frame[c], prefix=c, dtype=float) for c in
               ("j_industry", "j_seniority", "j_region", "m_industry", "m_seniority", "m_region")]
    matches = np.stack([(frame[f"m_{a}"] == frame[f"j_{a}"]).to_numpy(float) for a in ("industry", "seniority",
                                                                                       "region")], axis=1)
    overlap = np.array([len(set(a) & set(b)) for a, b in zip(frame["m_skills"], frame["j_skills"])], float)
    return np.hstack([c.to_numpy() for c in columns] + [matches, overlap[:, None]])


def _fit_logistic(x, y, l2=1e-3):
    x = torch.from_numpy(np.hstack([x, np.ones((len(x), 1))]))
    y = torch.from_numpy(y.astype(np.float64))
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w, y) + l2 * (w[:-1] ** 2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return lambda z: torch.sigmoid(torch.from_numpy(np.hstack([z, np.ones((len(z), 1))])) @ w).detach().numpy()


@pytest.mark.slow
def test_logistic_model_gains_from_meta_embedding(marketplace, trained) -> None:
    frame, interactions, days = marketplace
    net, _ = trained
    base = _features(frame)
    blocks = {}
    for day in days[-2:]:
        rows = np.flatnonzero(interactions.day == day)
        members, embedding = _embeddings_as_of(net, interactions, np.unique(interactions.member_id[rows]), int(day) - 1)
        member_embedding = embedding[np.searchsorted(members, interactions.member_id[rows])]
        blocks[int(day)] = (base[rows], member_embedding, interactions.label[rows])
    (train_x, train_e, train_y), (test_x, test_e, test_y) = blocks.values()
    mean, scale = train_e.mean(0), train_e.std(0) + 1e-6
    with_meta = _fit_logistic(np.hstack([train_x, (train_e - mean) / scale]), train_y)
    without = _fit_logistic(train_x, train_y)
    p_with = with_meta(np.hstack([test_x, (test_e - mean) / scale]))
    p_without = without(test_x)
    result = {"auc_features": auc(p_without, test_y), "auc_features_meta": auc(p_with, test_y),
              "logloss_features": log_loss(p_without, test_y), "logloss_features_meta": log_loss(p_with, test_y)}
    print("\nnext-day logistic model:", {k: round(v, 4) for k, v in result.items()})
    assert result["auc_features_meta"] > result["auc_features"] + 0.005
    assert result["logloss_features_meta"] < result["logloss_features"]


@pytest.mark.slow
def test_first_order_is_trainable_and_second_order_default_is_better(marketplace, trained) -> None:
    """Measures both orders (printed): each lowers the query loss; the default (second) adapts better."""
    _, interactions, days = marketplace
    second, second_history = trained
    first, first_history = _meta_trained(interactions, days[1:-2], first_order=True)
    results = {}
    for name, net, history in (("first", first, first_history), ("second", second, second_history)):
        buckets = evaluate_personalisation(net, interactions, int(days[-1]), TASKS, INNER)
        results[name] = {b.bucket: b.adapted for b in buckets}
        print(f"\n{name}-order: {history.seconds_per_step * 1000:.1f} ms/outer step, "
              + ", ".join(f"{b.bucket} adapted AUC {b.adapted:.4f}" for b in buckets[1:]))
        assert np.mean(history.query_loss[-20:]) < history.query_loss[0]
    assert not OUTER.first_order
    warm = next(name for name in results["first"] if name.startswith("warm"))
    assert results["second"][warm] > results["first"][warm]
