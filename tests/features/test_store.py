"""The feature store: rendered repo, Redis URLs, and online writes that never roll a newer value back."""

from __future__ import annotations

import subprocess
import sys
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.spark.build import end_of_day
from features.store import feature_store, redis_connection_string, write_features
from rankflow.config import Settings

REDIS_URL = "redis://127.0.0.1:6379/1"

# Run in a fresh interpreter: only Feast's own SDK and the rendered repo path, nothing of rankflow.
LOOKUP = """
import sys, pandas as pd
from feast import FeatureStore
repo, view, key, out = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
ids = [int(i) for i in sys.argv[5].split(",")]
store = FeatureStore(repo_path=repo)
refs = [f"{view}:{f.name}" for f in store.get_feature_view(view).features]
store.get_online_features(features=refs, entity_rows=[{key: i} for i in ids]).to_df().to_pickle(out)
"""


def online_rows(repo: Path, view: str, key: str, ids, out: Path) -> pd.DataFrame:
    """`FeatureStore(repo_path).get_online_features(...)` from a fresh process, as a frame keyed by id."""
    subprocess.run([sys.executable, "-c", LOOKUP, str(repo), view, key, str(out), ",".join(map(str, ids))],
                   check=True, timeout=180)
    return pd.read_pickle(out).set_index(key)


def redis_or_skip():
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as error:
        pytest.skip(f"no Redis answers at {REDIS_URL} ({error}); the Redis path needs a running server")
    client.flushdb()
    return client


def glmix_frame(day: date, shift: float) -> pd.DataFrame:
    ids = np.arange(1, 6, dtype=np.int64)
    return pd.DataFrame({
        "member_id": ids,
        "member_re_mean": [np.full(3, i + shift, np.float32) for i in ids],
        "member_re_variance": [np.full(3, 0.5, np.float32) for _ in ids],
        "event_timestamp": pd.Timestamp(end_of_day(day)).as_unit("us"),
        "created_ts": pd.Timestamp.now(tz="UTC").as_unit("us"),
    })


def test_redis_urls_become_feast_connection_strings():
    assert redis_connection_string("redis://localhost:6379/1") == "localhost:6379,db=1"
    assert redis_connection_string("redis://:secret@cache:6380") == "cache:6380,password=secret"
    with pytest.raises(ValueError, match="database must be a number"):
        redis_connection_string("redis://localhost:6379/x")


@pytest.mark.parametrize("online_store", ["sqlite", REDIS_URL])
def test_old_day_never_rolls_the_online_store_back(tmp_path, online_store):
    if online_store != "sqlite":
        redis_or_skip()
    settings = Settings(data_dir=tmp_path, online_store=online_store)
    newer, older = date(2026, 1, 5), date(2026, 1, 4)
    first = write_features(settings, "glmix_member", glmix_frame(newer, shift=100.0), newer)
    backfill = write_features(settings, "glmix_member", glmix_frame(older, shift=0.0), older)
    assert first["written"] == 5
    if online_store == "sqlite":  # our guard reports what it kept back; Redis skips inside Feast
        assert backfill["skipped_older"] == 5 and backfill["written"] == 0
    online = online_rows(settings.paths.feast, "glmix_member", "member_id", range(1, 6), tmp_path / "o.pkl")
    for member_id in range(1, 6):
        assert online.loc[member_id, "member_re_mean"][0] == pytest.approx(member_id + 100.0)
    # Both offline partitions exist: the backfill is kept for training, only the online store ignores it.
    assert (settings.paths.feature_partition("glmix_member", older) / "part-0.parquet").exists()
    # Re-writing the newest day itself replaces it (a fixed re-run of today is not "older").
    if online_store == "sqlite":
        again = write_features(settings, "glmix_member", glmix_frame(newer, shift=200.0), newer)
        assert again["written"] == 5
        online = online_rows(settings.paths.feast, "glmix_member", "member_id", [1], tmp_path / "o2.pkl")
        assert online.loc[1, "member_re_mean"][0] == pytest.approx(201.0)


def test_rendered_repo_is_declarations_only_and_reapplies_on_change(tmp_path):
    settings = Settings(data_dir=tmp_path)
    store = feature_store(settings)
    repo = settings.paths.feast
    assert sorted(p.name for p in repo.glob("*.py")) == ["definitions.py"]
    assert (repo / ".feastignore").exists()
    assert {fs.name for fs in store.list_feature_services()} == {"ranker", "personalisation"}
    assert {fv.name for fv in store.list_feature_views()} >= {"member_features", "job_features", "member_affinities",
                                                             "glmix_member", "glmix_job", "meta_embedding"}
    redis_settings = Settings(data_dir=tmp_path, online_store=REDIS_URL)
    feature_store(redis_settings)
    assert "db=1" in (repo / "feature_store.yaml").read_text()
