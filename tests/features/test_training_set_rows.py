"""The training set: one row per event of the day, the same bytes however often and whenever the day is built."""

from __future__ import annotations

import shutil
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features import contract
from features.contract import end_of_day
from features.store import feature_store, write_offline_partition
from features.training_set import SOURCE_VIEWS, build_training_set, historical_rows, write_training_set
from rankflow.config import Settings
from rankflow.paths import atomic_directory

KEY_OF_VIEW = {"member_features": "member_id", "job_features": "item_id", "member_affinities": "member_id"}


def _feature_value(dtype, entity: int, day: date):
    """A value of the declared Feast type that names its entity and partition day (entity * 100 + day)."""
    from feast.types import Array, Float32, Int64, String

    stamp = entity * 100 + day.day
    if dtype == Int64:
        return stamp
    if dtype == Float32:
        return float(stamp) + 0.5
    if dtype == String:
        return f"v{stamp}"
    if dtype == Array(String):
        return [f"v{stamp}", "x"]
    if dtype == Array(Float32):
        return [float(stamp), 0.25]
    raise AssertionError(f"no test value for {dtype}")


def _planted_partition(store, view: str, ids, day: date) -> pd.DataFrame:
    features = store.get_feature_view(view).features
    stamp = pd.Timestamp(end_of_day(day)).as_unit("us")
    frame = pd.DataFrame({KEY_OF_VIEW[view]: np.asarray(ids, np.int64)})
    for field in features:
        frame[field.name] = [_feature_value(field.dtype, int(i), day) for i in ids]
    return frame.assign(event_timestamp=stamp, created_ts=stamp)


@pytest.fixture()
def planted(tmp_path, tiny_data_dir) -> tuple[Settings, date, pd.DataFrame, set[int], set[int]]:
    """The tiny raw zone with hand-written feature partitions (no Spark): on day 1 only half of the members
    and jobs of day 2's events have rows; on days 2 and 3 every one has. Two events of day 2 share their
    member and instant (different jobs)."""
    root = tmp_path / "data"
    shutil.copytree(tiny_data_dir, root)
    settings = Settings(data_dir=root)
    first, second, third = contract.raw_days(settings.paths)[:3]
    part = settings.paths.raw_partition("events", second) / contract.PART_FILE
    events = contract.read_raw(settings.paths, "events", day=second)
    jobs_of_member = events.drop_duplicates(["member_id", "item_id"])
    member = jobs_of_member["member_id"][jobs_of_member["member_id"].duplicated()].iloc[0]
    pair = jobs_of_member.index[jobs_of_member["member_id"] == member][:2]
    events.loc[pair[1], "ts"] = events.loc[pair[0], "ts"]  # same member, same instant, another job
    events = events.sort_values(["ts", "event_id"], kind="stable", ignore_index=True)
    table = pa.Table.from_pandas(events, schema=pq.read_schema(part), preserve_index=False)
    with atomic_directory(part.parent) as staging:
        contract.write_partition(staging, table)

    store = feature_store(settings)
    members, jobs = sorted(events["member_id"].unique()), sorted(events["item_id"].unique())
    old_members, old_jobs = set(members[::2]), set(jobs[::2])
    for view in SOURCE_VIEWS:
        everyone = members if KEY_OF_VIEW[view] == "member_id" else jobs
        veterans = old_members if KEY_OF_VIEW[view] == "member_id" else old_jobs
        write_offline_partition(settings.paths, view, first, _planted_partition(store, view, sorted(veterans), first))
        for day in (second, third):
            write_offline_partition(settings.paths, view, day, _planted_partition(store, view, everyone, day))
    return settings, second, events, old_members, old_jobs


def test_every_event_gets_one_row_with_the_features_of_the_day_before(planted):
    settings, day, events, old_members, old_jobs = planted
    assert events.duplicated(["member_id", "ts"]).any(), "the planted twin events must share member and instant"
    rows = historical_rows(settings, day)
    assert len(rows) == len(events)
    assert rows["event_id"].tolist() == events["event_id"].tolist()
    first = day - timedelta(days=1)
    for member, impressions in zip(rows["member_id"], rows["m_impressions_1d"]):
        # A member with a day-1 row sees exactly it; a member whose rows all come later is cold (null).
        if member in old_members:
            assert impressions == member * 100 + first.day
        else:
            assert pd.isna(impressions)
    for job, rate in zip(rows["item_id"], rows["j_rate_7d"]):
        assert rate == job * 100 + first.day + 0.5 if job in old_jobs else pd.isna(rate)
    assert set(events["member_id"]) - old_members, "some members must be new on day 2"


def test_first_day_rebuilt_after_later_days_keeps_every_event_and_its_columns(planted):
    settings, day, events, _, _ = planted
    first = day - timedelta(days=1)
    rows = historical_rows(settings, first)
    assert len(rows) == len(contract.read_raw(settings.paths, "events", day=first))
    assert rows["m_impressions_1d"].isna().all() and rows["j_rate_7d"].isna().all()


def test_daily_snapshot_views_are_joined_from_one_partition_with_feasts_rows(planted, monkeypatch):
    """features.offline_store hands Feast only the newest partition stamped before the day's events for the
    snapshot views; the training set equals the one from Feast's join over every partition (days 2 and 3 of
    the planted store)."""
    from features import offline_store

    settings, second, _, _, _ = planted
    narrowed = offline_store._narrowed
    sources = []
    monkeypatch.setattr(offline_store, "_narrowed", lambda view, *a: sources.append(
        (view.name, narrowed(view, *a).batch_source.path)) or narrowed(view, *a))
    for day in (second, second + timedelta(days=1)):
        sources.clear()
        pruned, spec = build_training_set(settings, day)
        before = (day - timedelta(days=1)).isoformat()
        assert sorted(sources) == sorted((v, f"../features/{v}/dt={before}") for v in SOURCE_VIEWS), sources
        with monkeypatch.context() as stock:
            stock.setattr(offline_store, "_narrowed", lambda view, *a: view)  # Feast's store as it is
            everything, stock_spec = build_training_set(settings, day)
        assert pruned.equals(everything)
        assert spec == stock_spec


def test_the_day_assembled_in_batches_equals_the_day_in_one_piece(planted, tmp_path):
    """Rows are assembled a batch of events at a time (Python objects for one batch only): any batch size
    gives the same table and the same bytes, the meta embedding column included when only a few members have
    one (batches without any get nulls, as one frame of the day would)."""
    settings, day, events, old_members, _ = planted
    first = day - timedelta(days=1)
    few = sorted(old_members)[:3]
    stamp = pd.Timestamp(end_of_day(first)).as_unit("us")
    embeddings = pd.DataFrame({"member_id": np.asarray(few, np.int64),
                               "meta_embedding": [np.array([m, 0.5], np.float32) for m in few]})
    write_offline_partition(settings.paths, "meta_embedding", first,
                            embeddings.assign(event_timestamp=stamp, created_ts=stamp), mark_snapshot=True)
    whole, spec = build_training_set(settings, day)
    progress = []
    batched, batched_spec = build_training_set(settings, day, batch_rows=7,
                                               on_batch=lambda done, rows: progress.append((done, rows)))
    assert len(progress) == -(-len(events) // 7) and progress[-1] == (len(events), len(events))
    assert batched_spec == spec and spec["embeddings"] == {"meta_embedding": 2}
    assert batched.equals(whole) and batched.num_rows == len(events)
    with_embedding = whole.to_pandas()["meta_embedding"].notna()
    assert 0 < with_embedding.sum() < len(events) / 7, "most batches must have no embedding at all"
    written = []
    for table in (whole, batched):
        write_training_set(settings, day, table, spec)
        written.append((settings.paths.feature_partition("training_set", day) / contract.PART_FILE).read_bytes())
    assert written[0] == written[1]
    with pytest.raises(ValueError, match="batch_rows"):
        build_training_set(settings, day, batch_rows=0)
    # Embeddings of two lengths are refused whichever batches they fall in (was: the first row's length won).
    embeddings["meta_embedding"] = [np.zeros(2 + (m == few[-1]), np.float32) for m in few]
    write_offline_partition(settings.paths, "meta_embedding", first,
                            embeddings.assign(event_timestamp=stamp, created_ts=stamp), mark_snapshot=True)
    for batch_rows in (7, len(events)):
        with pytest.raises(ValueError, match=r"training_set/dt=.*meta_embedding rows .* lengths \[2, 3\]"):
            build_training_set(settings, day, batch_rows=batch_rows)


def test_the_join_per_key_refuses_events_of_more_than_one_day():
    """_key_rows joins one entity row per key, valid only when every event sees the same rows (one day)."""
    from features.training_set import _key_rows

    events = pd.DataFrame({"member_id": [1, 1], "ts": pd.to_datetime(["2026-01-02 23:00", "2026-01-03 01:00"], utc=True)})
    with pytest.raises(ValueError, match="more than one day"):
        _key_rows(None, "member_features", "member_id", events)


def test_the_answering_partition_is_the_newest_stamped_before_every_event():
    from features.offline_store import answering_partition

    days = [date(2026, 1, d) for d in (1, 2, 4)]  # day 3 never built
    at = lambda text: pd.Timestamp(text, tz="UTC")  # noqa: E731
    assert answering_partition(days, at("2026-01-03 00:00"), at("2026-01-03 23:59")) == date(2026, 1, 2)
    assert answering_partition(days, at("2026-01-04 08:00"), at("2026-01-04 09:00")) == date(2026, 1, 2)
    assert answering_partition(days, at("2026-01-06 00:00"), at("2026-01-06 00:00")) == date(2026, 1, 4)
    assert answering_partition(days, at("2026-01-01 12:00"), at("2026-01-01 13:00")) is None  # none stamped before
    assert answering_partition(days, at("2026-01-02 12:00"), at("2026-01-03 12:00")) is None  # day 2's stamp between


def test_a_view_marked_snapshot_since_some_day_is_narrowed_only_to_a_marked_partition(tmp_path):
    """meta_embedding's partitions became snapshots on some day: an older partition (no footer mark) holds only
    its day's members, so a join it answers must read every partition (Feast's store)."""
    from feast import Entity, FeatureView, Field, FileSource
    from feast.types import Float32, Int64

    from features.offline_store import MARKED_TAG, SNAPSHOT_TAG, _narrowed, is_marked_snapshot
    from rankflow.paths import DataPaths

    paths = DataPaths(tmp_path)
    for day, marked in ((date(2026, 1, 1), False), (date(2026, 1, 2), True)):
        stamp = pd.Timestamp(end_of_day(day))
        frame = pd.DataFrame({"member_id": [1, 2], "x": [0.5, 1.5], "event_timestamp": stamp, "created_ts": stamp})
        write_offline_partition(paths, "marked_view", day, frame, mark_snapshot=marked)
    table = paths.feature_table("marked_view")
    assert [is_marked_snapshot(table / f"dt=2026-01-0{d}") for d in (1, 2)] == [False, True]
    view = FeatureView(name="marked_view", entities=[Entity(name="member", join_keys=["member_id"])],
                       schema=[Field(name="member_id", dtype=Int64), Field(name="x", dtype=Float32)],
                       source=FileSource(path=str(table), timestamp_field="event_timestamp"),
                       tags={SNAPSHOT_TAG: "daily", MARKED_TAG: "true"})
    frame = lambda when: pd.DataFrame({"member_id": [1], "event_timestamp": [pd.Timestamp(when, tz="UTC")]})  # noqa: E731
    assert _narrowed(view, frame("2026-01-03 08:00"), None).batch_source.path == f"{table}/dt=2026-01-02"
    assert _narrowed(view, frame("2026-01-02 08:00"), None) is view  # answered by the unmarked day 1


@pytest.fixture(scope="module")
def three_days(tmp_path_factory, tiny_data_dir) -> Settings:
    """The tiny marketplace with days 1..3 built in order, as the features stage does (validation aside)."""
    from features.spark.build import build_day
    from features.spark.session import spark_session

    root = tmp_path_factory.mktemp("three_days") / "data"
    shutil.copytree(tiny_data_dir, root)
    settings = Settings(data_dir=root)
    for day in contract.raw_days(settings.paths)[:3]:
        built = build_day(spark_session(settings), settings.paths, day)
        training, spec = build_training_set(settings, day)
        for table, frame in built.tables.items():
            write_offline_partition(settings.paths, table, day, frame)
        write_training_set(settings, day, training, spec)
    return settings


def _training_bytes(settings: Settings, day: date) -> bytes:
    return (settings.paths.feature_partition("training_set", day) / contract.PART_FILE).read_bytes()


@pytest.mark.slow
@pytest.mark.timeout(2400)  # the fixture builds three Spark days: 5-15 min on the shared 2-core box
@pytest.mark.parametrize("index", [1, 0])
def test_rebuilding_a_day_after_later_days_gives_the_same_training_set(three_days, index):
    settings = three_days
    day = contract.raw_days(settings.paths)[index]
    first_build = _training_bytes(settings, day)
    events = contract.read_raw(settings.paths, "events", day=day)
    rebuilt, spec = build_training_set(settings, day)
    assert len(rebuilt) == len(events)
    assert sorted(rebuilt["event_id"].to_pylist()) == sorted(events["event_id"])
    write_training_set(settings, day, rebuilt, spec)
    assert _training_bytes(settings, day) == first_build


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_meta_embeddings_written_later_leave_an_earlier_day_unchanged(three_days, tmp_path):
    """Personalisation writes meta_embedding/dt=D after D is built: D's rebuild must not grow the column,
    the next day's build must join it."""
    root = tmp_path / "data"
    shutil.copytree(three_days.paths.root, root)
    settings = Settings(data_dir=root)
    second, third = contract.raw_days(settings.paths)[1:3]
    members = contract.read_raw(settings.paths, "events", day=third)["member_id"].unique()
    stamp = pd.Timestamp(end_of_day(second)).as_unit("us")
    embeddings = pd.DataFrame({"member_id": members.astype(np.int64),
                               "meta_embedding": [np.array([m, 1.0], np.float32) for m in members]})
    write_offline_partition(settings.paths, "meta_embedding", second,
                            embeddings.assign(event_timestamp=stamp, created_ts=stamp))
    first_build = _training_bytes(settings, second)
    rebuilt, spec = build_training_set(settings, second)
    write_training_set(settings, second, rebuilt, spec)
    assert _training_bytes(settings, second) == first_build
    later, _ = build_training_set(settings, third)
    later = later.to_pandas()
    assert [float(v[0]) for v in later["meta_embedding"]] == later["member_id"].astype(float).tolist()


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_the_spark_tables_are_daily_snapshots(three_days):
    """What features.offline_store relies on: each day's partition of a snapshot view has a row for every
    member (or job) known by the end of that day, so it holds every key of the days before it."""
    from features.offline_store import MARKED_TAG, SNAPSHOT_TAG

    settings = three_days
    store = feature_store(settings)
    views = [v.name for v in store.list_feature_views()
             if v.tags.get(SNAPSHOT_TAG) == "daily" and v.tags.get(MARKED_TAG) != "true"]
    assert sorted(views) == sorted(SOURCE_VIEWS)  # meta_embedding's snapshots carry a mark (test above)
    for view in views:
        key, seen = KEY_OF_VIEW[view], set()
        for day in contract.raw_days(settings.paths)[:3]:
            part = settings.paths.feature_partition(view, day) / contract.PART_FILE
            keys = set(pq.read_table(part, columns=[key]).column(key).to_pylist())
            raw = "members" if key == "member_id" else "items"
            known = contract.read_raw(settings.paths, raw)
            stamp_column = "signup_ts" if raw == "members" else "posted_ts"
            known_ids = set(known.loc[known[stamp_column] < pd.Timestamp(end_of_day(day)), key])
            assert seen <= keys and keys == known_ids, (view, day)
            seen = keys
