"""The meta stage end to end on a tiny marketplace laid out as a training set: train, save, refresh, write."""

from __future__ import annotations

import shutil
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest
import torch

from rankflow.config import load_settings
from tests.training.meta_testdata import event_frame, write_training_set
from training.meta.config import MetaConfig
from training.meta.maml import MetaTrainConfig
from training.meta.state import latest_state, load_state
from training.meta.subnetwork import flatten_params

SMALL = MetaConfig(outer=MetaTrainConfig(outer_steps=15, members_per_batch=64), query_days=2)


@pytest.fixture()
def settings(tiny_data_dir, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_data_dir, root)
    write_training_set(root, event_frame(root))
    torch.set_num_threads(1)
    return load_settings(root)


def _add_member_without_events(settings, day: date, member_id: int) -> None:
    """A member who signed up on `day` and has not interacted yet (a cold start)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = settings.paths.raw_partition("members", day) / "part-0.parquet"
    table = pq.read_table(path)
    row = table.slice(0, 1).to_pylist()[0] | {"member_id": member_id}
    pq.write_table(pa.concat_tables([table, pa.Table.from_pylist([row], schema=table.schema)]), path)


def test_train_saves_warm_startable_state_and_refresh_embeds_active_and_new_members(settings) -> None:
    from rankflow.stages.meta import compute_meta_embeddings, meta_root, train_meta

    first, last = settings.generator.start_date, settings.generator.start_date + timedelta(days=3)
    result = train_meta(settings, last - timedelta(days=1), config=SMALL)
    assert not result["warm_started"] and result["tasks"] > 0
    state_dir = meta_root(settings) / f"dt={(last - timedelta(days=1)).isoformat()}"
    net, config, metadata = load_state(state_dir)
    assert config.subnetwork.categorical_columns == ("j_company", "j_industry", "j_seniority", "j_region")
    assert config.subnetwork.dense_columns == ("j_salary",)
    assert metadata["embedding_length"] == 33
    # The next week's run warm-starts from it, and re-running a day replaces only that day.
    again = train_meta(settings, last, config=SMALL)
    assert again["warm_started"] and latest_state(meta_root(settings), last) == meta_root(settings) / f"dt={last}"
    assert result["bentoml_tag"].startswith("rankflow-meta:")

    _add_member_without_events(settings, last, member_id=999_999)
    frame, summary = compute_meta_embeddings(settings, last)
    events = pd.read_parquet(settings.paths.feature_partition("training_set", last))
    arrived = pd.read_parquet(settings.paths.raw_partition("members", last))["member_id"]
    assert set(frame["member_id"]) == set(events["member_id"]) | set(arrived)
    assert summary["active"] == events["member_id"].nunique()
    vectors = np.stack(frame["meta_embedding"].to_list())
    assert vectors.shape[1] == 33 and vectors.dtype == np.float32 and np.isfinite(vectors).all()
    assert (frame["version"] == f"meta-{last.isoformat()}").all()
    # Cold start: a member with no event in the window gets the meta-initialisation itself.
    net, _, _ = load_state(meta_root(settings) / f"dt={last}")
    init = flatten_params(net.head_params()).detach().numpy()
    ever = pd.concat(pd.read_parquet(p, columns=["member_id"])
                     for p in settings.paths.feature_table("training_set").glob("dt=*/part-0.parquet"))
    cold = ~frame["member_id"].isin(ever["member_id"])
    assert cold.tolist().count(True) >= 1 and 999_999 in set(frame.loc[cold, "member_id"])
    assert np.allclose(vectors[cold.to_numpy()], init, atol=1e-6)
    # Active members are personalised: their embeddings differ from the init and from each other.
    active = vectors[frame["member_id"].isin(events["member_id"]).to_numpy()]
    assert np.abs(active - init).max() > 1e-3 and np.unique(active.round(5), axis=0).shape[0] > 0.9 * len(active)
    # Deterministic: the seeded support sample makes a re-run give the same embeddings.
    again_frame, _ = compute_meta_embeddings(settings, last)
    assert np.array_equal(np.stack(again_frame["meta_embedding"].to_list()), vectors)


def test_nan_features_and_huge_history_write_nothing_non_finite(settings) -> None:
    from rankflow.stages.meta import compute_meta_embeddings, train_meta

    last = settings.generator.start_date + timedelta(days=3)
    partition = settings.paths.feature_partition("training_set", last) / "part-0.parquet"
    day_frame = pd.read_parquet(partition)
    day_frame.loc[::3, "j_salary"] = np.nan
    heavy = day_frame.iloc[[0]].loc[np.zeros(5_000, int)].copy()          # one member, 5,000 events
    heavy["ts"] = heavy["ts"].iloc[0] + pd.to_timedelta(np.arange(5_000), unit="s")
    heavy["label"] = 1                                                     # only positives
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(partition)
    pq.write_table(pa.Table.from_pandas(pd.concat([day_frame, heavy]), schema=schema, preserve_index=False),
                   partition)
    train_meta(settings, last, config=SMALL)
    frame, summary = compute_meta_embeddings(settings, last)
    vectors = np.stack(frame["meta_embedding"].to_list())
    assert np.isfinite(vectors).all() and summary["non_finite_fallbacks"] == 0


@pytest.mark.slow
def test_refresh_validates_and_writes_offline_and_online(settings) -> None:
    from rankflow.stages.meta import VIEW, refresh_meta_embeddings, train_meta

    last = settings.generator.start_date + timedelta(days=3)
    train_meta(settings, last, config=SMALL)
    result = refresh_meta_embeddings(settings, last)
    assert result["bootstrapped"] is None
    offline = pd.read_parquet(settings.paths.feature_partition(VIEW, last))
    assert len(offline) == result["members"] and result["write"]["written"] == result["members"]
    assert (offline["event_timestamp"] == pd.Timestamp(last + timedelta(days=1), tz="UTC")).all()


@pytest.mark.slow
def test_each_days_partition_is_a_snapshot_of_every_members_newest_embedding(settings) -> None:
    """The day's partition holds the day's rows and every other member's newest one (restamped), marked in its
    footer so the offline store reads that partition alone; the online store gets the day's rows only. An
    older partition without the mark (written before partitions were snapshots) is read with all the others."""
    from features.offline_store import is_marked_snapshot
    from features.store import write_offline_partition
    from rankflow.stages.meta import VIEW, refresh_meta_embeddings, train_meta

    start = settings.generator.start_date
    before, first, second = start + timedelta(days=1), start + timedelta(days=2), start + timedelta(days=3)
    stamp = pd.Timestamp(before + timedelta(days=1), tz="UTC")
    old = pd.DataFrame({"member_id": np.array([888_001, 888_002], np.int64),
                        VIEW: [np.full(33, 0.5, np.float32), np.full(33, 0.25, np.float32)],
                        "version": "meta-old", "event_timestamp": stamp, "created_ts": stamp})
    # Unmarked, as before snapshots; the day before `first`, so that `first` skips no day.
    write_offline_partition(settings.paths, VIEW, before, old)
    train_meta(settings, first, config=SMALL)
    day_one = refresh_meta_embeddings(settings, first)
    day_two = refresh_meta_embeddings(settings, second)
    one = pd.read_parquet(settings.paths.feature_partition(VIEW, first)).set_index("member_id")
    two = pd.read_parquet(settings.paths.feature_partition(VIEW, second)).set_index("member_id")
    assert not is_marked_snapshot(settings.paths.feature_partition(VIEW, before))
    assert is_marked_snapshot(settings.paths.feature_partition(VIEW, first))
    assert is_marked_snapshot(settings.paths.feature_partition(VIEW, second))
    assert {888_001, 888_002} <= set(one.index) and set(one.index) <= set(two.index)
    assert len(one) == day_one["snapshot_members"] and len(two) == day_two["snapshot_members"]
    assert day_two["write"]["written"] == day_two["members"] < len(two)  # online: the day's rows only
    updated = set(pd.read_parquet(settings.paths.feature_partition("training_set", second))["member_id"]) | set(
        pd.read_parquet(settings.paths.raw_partition("members", second))["member_id"])
    carried = sorted(set(one.index) - updated)
    assert len(carried) > 2
    assert all(np.array_equal(one.loc[m, VIEW], two.loc[m, VIEW]) for m in carried)
    assert np.array_equal(two.loc[888_001, VIEW], np.full(33, 0.5, np.float32))
    assert (two["event_timestamp"] == pd.Timestamp(second + timedelta(days=1), tz="UTC")).all()
    assert two.index.is_monotonic_increasing


def test_rerunning_a_day_leaves_one_model_of_the_day_and_keeps_the_pinned_one(settings) -> None:
    from rankflow.stages.meta import MODEL_NAME, train_meta
    from rankflow.stages.ranker import _write_serving, model_store
    from serving.models import _newest

    day = settings.generator.start_date + timedelta(days=3)

    def models_of_the_day() -> set[str]:
        return {str(m.tag) for m in model_store(settings).list(MODEL_NAME)
                if m.info.labels["logical_date"] == day.isoformat()}

    first = train_meta(settings, day, config=SMALL)["bentoml_tag"]
    second = train_meta(settings, day, config=SMALL)["bentoml_tag"]  # a retry: the newer run replaces the day's model
    assert models_of_the_day() == {second} and _newest(settings, MODEL_NAME) == second != first
    _write_serving(settings, MODEL_NAME, second, [])  # pinned in models/serving.json: never deleted
    third = train_meta(settings, day, config=SMALL)["bentoml_tag"]
    assert models_of_the_day() == {second, third} and _newest(settings, MODEL_NAME) == third


def test_the_window_is_read_a_day_at_a_time_with_only_the_subnetworks_columns(settings, monkeypatch) -> None:
    """read_interactions equals encoding the whole window at once (the old way, 14 GB+ at 10x the demo size over
    22 days), reads only the columns the sub-network uses (never the member-side skill bags), gives a column only
    an older partition lacks as missing values there, and names a column that no partition has."""
    import dataclasses

    import pyarrow.parquet as pq

    from features.contract import read_partitions
    from rankflow.paths import dt_partition
    from features.training_set import read_spec
    from rankflow.stages.meta import read_interactions, subnetwork_columns
    from training.meta.frames import interactions_from_frame

    config = dataclasses.replace(SMALL, subnetwork=dataclasses.replace(
        SMALL.subnetwork, **subnetwork_columns(read_spec(settings))))
    first = settings.generator.start_date
    last = first + timedelta(days=3)
    table_dir = settings.paths.feature_table("training_set")
    # The oldest partition predates j_salary (a column added later): it reads as missing there.
    oldest = table_dir / dt_partition(first) / "part-0.parquet"
    pq.write_table(pq.read_table(oldest).drop_columns(["j_salary"]), oldest)

    read_columns = []
    original = pq.read_table
    monkeypatch.setattr(pq, "read_table", lambda path, columns=None, **kw: read_columns.append(columns)
                        or original(path, columns=columns, **kw))
    ours = read_interactions(settings, first, last, config)
    monkeypatch.setattr(pq, "read_table", original)
    whole = interactions_from_frame(read_partitions(table_dir, start=first, end=last), config.subnetwork,
                                    max_bag_size=config.max_bag_size)
    assert len(ours) == len(whole) > 0 and len(read_columns) == 4
    for field in ("member_id", "time", "day", "categorical", "multi_valued", "dense", "label", "weight"):
        np.testing.assert_array_equal(getattr(ours, field), getattr(whole, field), err_msg=field)
    assert all("m_skills" not in columns and "item_id" not in columns for columns in read_columns)
    assert np.isnan(ours.dense[ours.day == (first - date(1970, 1, 1)).days]).all()

    missing = dataclasses.replace(config, subnetwork=dataclasses.replace(
        config.subnetwork, dense_columns=("j_salary", "j_never_built")))
    with pytest.raises(KeyError, match="j_never_built"):
        read_interactions(settings, first, last, missing)
    assert len(read_interactions(settings, last + timedelta(days=30), last + timedelta(days=31), config)) == 0
