"""The feature store: rendered repo, Redis URLs, our online writer == Feast's bytes, and no rollback."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from features.contract import end_of_day
from features.materialize import online_write as write_rows
from features.store import feature_store, feature_store_yaml, online_write, redis_connection_string, write_features
from rankflow.config import Settings

REDIS_URL = "redis://127.0.0.1:6379/1"
FEAST_REDIS_URL = "redis://127.0.0.1:6379/5"  # where Feast's own writer puts the reference bytes
VIEWS = ("member_features", "job_features", "member_affinities", "glmix_member", "meta_embedding")

# Run in a fresh interpreter: only Feast's own SDK and the rendered repo paths, nothing of rankflow.
LOOKUP = """
import json, sys
from feast import FeatureStore
for request in json.loads(sys.argv[1]):
    store = FeatureStore(repo_path=request["repo"])
    refs = [f"{request['view']}:{f.name}" for f in store.get_feature_view(request["view"]).features]
    rows = [{request["key"]: i} for i in request["ids"]]
    store.get_online_features(features=refs, entity_rows=rows).to_df().to_pickle(request["out"])
"""


def online_lookups(requests: list[dict]) -> list[pd.DataFrame]:
    """`FeatureStore(repo).get_online_features(...)` from ONE fresh process for each request
    ({repo, view, key, ids, out}); frames keyed by the join key."""
    payload = [{**r, "repo": str(r["repo"]), "out": str(r["out"]), "ids": [int(i) for i in r["ids"]]} for r in requests]
    subprocess.run([sys.executable, "-c", LOOKUP, json.dumps(payload)], check=True, timeout=300)
    return [pd.read_pickle(r["out"]).set_index(r["key"]) for r in requests]


def online_rows(repo: Path, view: str, key: str, ids, out: Path) -> pd.DataFrame:
    """One view's online rows, read through Feast's SDK from a fresh process."""
    return online_lookups([{"repo": repo, "view": view, "key": key, "ids": list(ids), "out": out}])[0]


def redis_or_skip(url: str = REDIS_URL):
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as error:
        pytest.skip(f"no Redis answers at {url} ({error}); the Redis path needs a running server")
    client.flushdb()
    return client


@pytest.fixture(scope="module")
def applied_repo(tmp_path_factory, tiny_data_dir) -> Path:
    """A data dir (the tiny raw schema: attribute features declared) whose Feast repo is applied once;
    tests copy it instead of re-applying."""
    root = tmp_path_factory.mktemp("applied") / "data"
    (root / "raw").mkdir(parents=True)
    shutil.copy(tiny_data_dir / "raw" / "schema.yaml", root / "raw" / "schema.yaml")
    feature_store(Settings(data_dir=root))
    return root


def applied_copy(applied_repo: Path, target: Path, online_store: str = "sqlite") -> Settings:
    shutil.copytree(applied_repo, target)  # registry and the applied (empty) SQLite tables come along
    return Settings(data_dir=target, online_store=online_store)


def glmix_frame(day: date, shift: float) -> pd.DataFrame:
    ids = np.arange(1, 6, dtype=np.int64)
    return pd.DataFrame({
        "member_id": ids,
        "member_re_mean": [np.full(3, i + shift, np.float32) for i in ids],
        "member_re_variance": [np.full(3, 0.5, np.float32) for _ in ids],
        "event_timestamp": pd.Timestamp(end_of_day(day)).as_unit("us"),
        "created_ts": pd.Timestamp.now(tz="UTC").as_unit("us"),
    })


def edge_case_frame(store, view: str, rows: int = 120, seed: int = 0) -> pd.DataFrame:
    """Every declared feature of `view` with awkward values: 0, negatives, 2^63-1, varint boundaries, -0.0,
    subnormal and huge floats, empty / unicode / long strings, empty lists, NaN and nulls (Feast's fallback)."""
    rng = np.random.default_rng(seed)
    feature_view = store.get_feature_view(view)
    key = store.get_entity(feature_view.entities[0]).join_key
    data = {key: np.r_[np.int64([0, -5, 2**40, 2**63 - 1]), rng.choice(10**6, rows - 4, replace=False) + 10]}
    for field in feature_view.features:
        kind = field.dtype.to_value_type().name
        if kind == "INT64":
            data[field.name] = np.r_[np.int64([0, -1, 127, 128, 2**63 - 1]), rng.integers(-10**12, 10**12, rows - 5)]
        elif kind == "FLOAT":
            data[field.name] = np.r_[np.float32([0.0, -0.0, 1e-40, 3.4e38]), rng.random(rows - 4).astype(np.float32)]
        elif kind == "STRING":
            data[field.name] = ["", "ünïcødé", "a" * 300] + [f"v{i % 7}" for i in range(rows - 3)]
        elif kind == "STRING_LIST":
            data[field.name] = [[], ["é" * 200]] + [[f"s{(i * j) % 11}" for j in range(i % 6)] for i in range(rows - 2)]
        elif kind == "FLOAT_LIST":
            data[field.name] = [np.zeros(0, np.float32)] + [rng.random(i % 40).astype(np.float32) for i in range(rows - 1)]
        else:
            raise AssertionError(f"{view}.{field.name}: no edge cases for {kind}")
    frame = pd.DataFrame(data)
    stamps = pd.Timestamp(end_of_day(date(2026, 1, 2))) + pd.to_timedelta(rng.integers(0, 10**6, rows), unit="us")
    frame["event_timestamp"] = stamps.as_unit("us")
    frame["created_ts"] = pd.Timestamp("2026-01-03 10:00:00.123456", tz="UTC").as_unit("us")
    if view == "member_features":  # nulls and NaN take Feast's own converter for that column
        frame["m_rate_7d"] = frame["m_rate_7d"].astype("float32").where(frame.index % 9 != 3, np.nan)
        frame["m_industry"] = frame["m_industry"].where(frame.index % 13 != 5, None)
    return frame


def feast_write(store, view: str, frame: pd.DataFrame) -> None:
    """The reference: Feast's own Arrow -> proto conversion and the online store's online_write_batch."""
    from feast.utils import _convert_arrow_to_proto

    feature_view = store.get_feature_view(view)
    join_keys = {store.get_entity(n).join_key: store.get_entity(n).value_type for n in feature_view.entities}
    rows = _convert_arrow_to_proto(pa.Table.from_pandas(frame, preserve_index=False).to_batches()[0],
                                   feature_view, join_keys)
    store._get_provider().online_write_batch(store.config, feature_view, rows, progress=None)


def sqlite_dump(settings: Settings, view: str) -> list[tuple]:
    with sqlite3.connect(settings.paths.feast / "online_store.db") as connection:
        return connection.execute(
            "SELECT entity_key, feature_name, value, value_text, event_ts, created_ts, typeof(event_ts), "
            f'typeof(value_text) FROM "rankflow_{view}" ORDER BY entity_key, feature_name').fetchall()


def redis_dump(url: str) -> dict[bytes, dict[bytes, bytes]]:
    import redis

    client = redis.Redis.from_url(url)
    return {key: client.hgetall(key) for key in client.scan_iter(count=1000)}


def _assert_online_matches(online: pd.DataFrame, frame: pd.DataFrame, key: str) -> None:
    """Values read back through Feast equal what was written (nulls stay null, float32 stays exact)."""
    for column in frame.columns.drop([key, "event_timestamp", "created_ts"]):
        for entity, expected in zip(frame[key], frame[column]):
            got = online.loc[entity, column]
            if isinstance(expected, (list, np.ndarray)):
                assert list(np.asarray(got)) == list(np.asarray(expected)), (column, entity)
            elif expected is None or (isinstance(expected, float) and np.isnan(expected)):
                assert got is None or (isinstance(got, float) and np.isnan(got)), (column, entity, got)
            else:
                assert got == expected, (column, entity)


def test_redis_urls_become_feast_connection_strings():
    assert redis_connection_string("redis://localhost:6379/1") == "localhost:6379,db=1"
    assert redis_connection_string("redis://:secret@cache:6380") == "cache:6380,password=secret"
    with pytest.raises(ValueError, match="database must be a number"):
        redis_connection_string("redis://localhost:6379/x")


def test_sqlite_writer_bytes_equal_feasts_and_read_back_through_feast(applied_repo, tmp_path):
    ours = applied_copy(applied_repo, tmp_path / "ours")
    theirs = applied_copy(applied_repo, tmp_path / "theirs")
    ours_store, theirs_store = feature_store(ours), feature_store(theirs)
    frames = {view: edge_case_frame(ours_store, view) for view in VIEWS}
    for view, frame in frames.items():
        result = online_write(ours_store, view, frame)
        assert (result.written, result.skipped_older) == (len(frame), 0)
        feast_write(theirs_store, view, frame)
    for view in VIEWS:
        mine, reference = sqlite_dump(ours, view), sqlite_dump(theirs, view)
        assert len(mine) == len(frames[view]) * len(ours_store.get_feature_view(view).features)
        assert mine == reference, view
    frame = frames["member_features"]
    [online] = online_lookups([{"repo": ours.paths.feast, "view": "member_features", "key": "member_id",
                                "ids": frame["member_id"], "out": tmp_path / "m.pkl"}])
    _assert_online_matches(online, frame, "member_id")


@pytest.mark.parametrize("guard", ["hmget", "lua"])
def test_redis_writer_bytes_equal_feasts_and_read_back_through_feast(applied_repo, tmp_path, guard):
    redis_or_skip(REDIS_URL)
    redis_or_skip(FEAST_REDIS_URL)
    ours = applied_copy(applied_repo, tmp_path / "ours", REDIS_URL)
    theirs = applied_copy(applied_repo, tmp_path / "theirs", FEAST_REDIS_URL)
    ours_store, theirs_store = feature_store(ours), feature_store(theirs)
    frames = {view: edge_case_frame(ours_store, view) for view in VIEWS}
    for view, frame in frames.items():
        result = write_rows(ours_store, view, frame, guard=guard)
        assert (result.written, result.skipped_older) == (len(frame), 0)
        feast_write(theirs_store, view, frame)
    mine, reference = redis_dump(REDIS_URL), redis_dump(FEAST_REDIS_URL)
    # member_* views share one hash per member, job_features one per job: every key and field byte-equal.
    assert len(mine) == len(set(frames["member_features"]["member_id"])) + len(set(frames["job_features"]["item_id"]))
    assert mine == reference
    if guard != "hmget":  # the bytes are Feast's; one read-back through a fresh process is enough
        return
    frame = frames["job_features"]
    [online] = online_lookups([{"repo": ours.paths.feast, "view": "job_features", "key": "item_id",
                                "ids": frame["item_id"], "out": tmp_path / "j.pkl"}])
    _assert_online_matches(online, frame, "item_id")


@pytest.mark.parametrize("online_store", ["sqlite", REDIS_URL])
def test_old_day_never_rolls_the_online_store_back(applied_repo, tmp_path, online_store):
    if online_store != "sqlite":
        redis_or_skip()
    settings = applied_copy(applied_repo, tmp_path / "data", online_store)
    newer, older = date(2026, 1, 5), date(2026, 1, 4)
    first = write_features(settings, "glmix_member", glmix_frame(newer, shift=100.0), newer)
    backfill = write_features(settings, "glmix_member", glmix_frame(older, shift=0.0), older)
    assert first["written"] == 5
    assert backfill["skipped_older"] == 5 and backfill["written"] == 0
    # Re-writing the newest day itself replaces it (a fixed re-run of today is not "older").
    again = write_features(settings, "glmix_member", glmix_frame(newer, shift=200.0), newer)
    assert again["written"] == 5
    from feast import FeatureStore  # a new SDK object on the rendered repo (no cached state of ours)

    online = FeatureStore(repo_path=str(settings.paths.feast)).get_online_features(
        features=["glmix_member:member_re_mean"], entity_rows=[{"member_id": i} for i in range(1, 6)]).to_dict()
    assert [means[0] for means in online["member_re_mean"]] == pytest.approx([i + 200.0 for i in range(1, 6)])
    # Both offline partitions exist: the backfill is kept for training, only the online store ignores it.
    assert (settings.paths.feature_partition("glmix_member", older) / "part-0.parquet").exists()


def test_one_entity_twice_in_a_frame_keeps_its_newest_row(applied_repo, tmp_path):
    settings = applied_copy(applied_repo, tmp_path / "data")
    store = feature_store(settings)
    frame = pd.concat([glmix_frame(date(2026, 1, 5), shift=100.0), glmix_frame(date(2026, 1, 4), shift=0.0)])
    result = online_write(store, "glmix_member", frame.iloc[::-1])  # the older rows come last
    assert (result.written, result.skipped_older) == (5, 5)
    stored = {row[0]: row[2] for row in sqlite_dump(settings, "glmix_member") if row[1] == "member_re_mean"}
    from feast.protos.feast.types.Value_pb2 import Value

    means = sorted(Value.FromString(raw).float_list_val.val[0] for raw in stored.values())
    assert means == [101.0, 102.0, 103.0, 104.0, 105.0]


def test_a_process_keeps_its_own_store_config_while_another_rewrites_feature_store_yaml(applied_repo, tmp_path,
                                                                                        monkeypatch):
    """Two processes on one data dir with different online stores (a pipeline on SQLite, `rankflow serve
    --online-store redis://...`) each render feature_store.yaml: a process must get its own config, not the
    file as the other just rewrote it (it used to read the file back, and 27-39 of 300 constructions under
    two such processes got the other's store)."""
    import yaml

    from features import store as store_module

    settings = applied_copy(applied_repo, tmp_path / "data")
    other = yaml.safe_dump(feature_store_yaml(Settings(data_dir=settings.data_dir, online_store=REDIS_URL)),
                           sort_keys=False)
    yaml_file = settings.paths.feast / "feature_store.yaml"
    checked = store_module.check_online_store

    def other_process_renders(*args, **kwargs):  # between this process's render and its FeatureStore()
        yaml_file.write_text(other)
        return checked(*args, **kwargs)

    monkeypatch.setattr(store_module, "check_online_store", other_process_renders)
    store_module._stores.clear()
    store = feature_store(settings)
    assert "db=1" in yaml_file.read_text()  # the other process's file is there...
    assert store.config.online_store.type == "sqlite"  # ...and this process kept its own store
    assert {fv.name for fv in store.list_feature_views()} >= {"member_features", "job_features"}


def test_rendered_repo_is_declarations_only_and_reapplies_on_change(applied_repo, tmp_path, monkeypatch):
    settings = applied_copy(applied_repo, tmp_path / "data")
    store = feature_store(settings)
    repo = settings.paths.feast
    assert sorted(p.name for p in repo.glob("*.py")) == ["definitions.py"]
    assert (repo / ".feastignore").exists()
    assert {fs.name for fs in store.list_feature_services()} == {"ranker", "personalisation"}
    assert {fv.name for fv in store.list_feature_views()} >= {"member_features", "job_features", "member_affinities",
                                                             "glmix_member", "glmix_job", "meta_embedding"}
    # A changed declaration (here the online store) is applied again, once: the mark follows the new
    # fingerprint, and an unchanged second call does not apply.
    from feast import FeatureStore

    mark_before = (repo / ".applied").read_text()
    applies = []
    original = FeatureStore.apply
    monkeypatch.setattr(FeatureStore, "apply", lambda self, objects, *a, **k: applies.append(1) or original(self, objects, *a, **k))
    redis_settings = Settings(data_dir=settings.data_dir, online_store=REDIS_URL)
    feature_store(redis_settings)
    assert "db=1" in (repo / "feature_store.yaml").read_text()
    assert applies == [1] and (repo / ".applied").read_text() not in ("", mark_before)
    feature_store(redis_settings)
    assert applies == [1]
