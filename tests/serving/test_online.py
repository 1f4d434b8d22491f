"""Feature reads that fail (store unreachable) or are late give default features, flagged, never raise."""

from __future__ import annotations

import asyncio
import time

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.redis]


def test_unreachable_store_gives_defaults_and_a_reason(served_settings, known_ids):
    from features.store import feature_store, remove_rendered_repo  # noqa: F401
    from rankflow.stages.publish import free_port
    from serving.models import load_models
    from serving.online import OnlineFeatures
    from serving.scoring import candidate_frame, combine, model_inputs, ranker_probabilities

    members, items = known_ids
    store = feature_store(served_settings)
    closed = free_port()  # nothing listens there
    store.config.online_store.connection_string = f"127.0.0.1:{closed},db=2"
    store._provider = None  # a fresh provider reads the changed connection string
    try:
        reader = OnlineFeatures(store, deadline_ms=200)
        started = time.perf_counter()
        read = asyncio.run(reader.read(members[0], items[:10]))
        elapsed = time.perf_counter() - started
    finally:
        from features import store as store_module
        store_module._stores.clear()
    assert read.degraded and len(read.degraded_reasons) == 2 and elapsed < 1.0
    assert read.member is None and read.jobs.drop(columns="item_id").isna().all().all()
    models = load_models(served_settings)
    frame = candidate_frame(members[0], read.member, read.jobs)
    scores = combine(ranker_probabilities(models.ranker, models.spec, model_inputs(frame, models)), None)
    assert scores.shape == (10,) and ((scores > 0) & (scores < 1)).all()


def test_skew_check_passes_on_the_served_day_and_catches_an_older_day(served_settings):
    from serving_testdata import DAYS, SERVED_DAY
    from serving.skew import skew_check

    report = skew_check(served_settings, SERVED_DAY, sample=8)
    assert report.ok and report.requests == 8 and report.values_compared > 8 * 40, report.summary()
    stale = skew_check(served_settings, DAYS[0], sample=8)
    assert not stale.ok and len(stale.mismatches) > 0


def test_skew_check_through_the_running_service(service, served_settings):
    from serving_testdata import SERVED_DAY
    from serving.skew import skew_check

    report = skew_check(served_settings, SERVED_DAY, sample=5, url=service.url)
    assert report.ok, report.summary()


async def direct_rows_equal_sdk_rows_and_follow_a_change(direct, sdk, members, items, change) -> None:
    """The direct reader's rows equal the Feast SDK's (known, unknown and cold members, an unknown job); an
    unchanged job keeps its row object (the encoder's cache key); after `change()` (j_age_days of items[0] set
    to 1234.5 in the store) that job gets a new row at once and the others keep theirs."""
    candidates = items[:40] + [55_555_555]
    for member_id in (members[0], members[7], 987_654_321):
        ours, theirs = await direct.read(member_id, candidates), await sdk.read(member_id, candidates)
        assert not ours.degraded and not theirs.degraded, (ours.degraded_reasons, theirs.degraded_reasons)
        assert ours.member == theirs.member and ours.cold_start == theirs.cold_start
        assert ours.job_rows == theirs.job_rows
        assert ours.unknown_candidates == theirs.unknown_candidates == [55_555_555]
    assert sum(v is not None for v in ours.job_rows[0].values()) > 10
    first, again = await direct.read(members[0], items[:2]), await direct.read(members[0], items[:2])
    assert again.job_rows[0] is first.job_rows[0]
    change()
    changed = await direct.read(members[0], items[:2])
    assert changed.job_rows[0]["j_age_days"] == 1234.5 and changed.job_rows[0] is not first.job_rows[0]
    assert changed.job_rows[1] is first.job_rows[1]


def direct_and_sdk_readers(settings, reader_type):
    """(direct reader, Feast SDK reader) of `settings`' online store; the direct one must be a `reader_type`."""
    from features.store import feature_store
    from serving.online import OnlineFeatures

    store = feature_store(settings)
    direct = OnlineFeatures(store, deadline_ms=5_000)
    assert isinstance(direct.direct, reader_type), f"the store must be read directly by {reader_type.__name__}"
    sdk = OnlineFeatures(store, deadline_ms=5_000)
    sdk.direct = None  # the Feast SDK path, for comparison
    return direct, sdk


def test_direct_redis_rows_equal_feast_sdk_rows_and_follow_changes(served_settings, known_ids):
    import redis
    from feast.infra.online_stores.helpers import _mmh3
    from feast.protos.feast.types.Value_pb2 import Value

    from serving.redis_rows import RedisRows

    members, items = known_ids
    direct, sdk = direct_and_sdk_readers(served_settings, RedisRows)
    client = redis.Redis.from_url(served_settings.online_store)
    key = direct.direct.job.key(items[0], direct.direct.project)
    field = _mmh3("job_features:j_age_days")
    held = client.hget(key, field)

    def change():
        client.hset(key, field, Value(float_val=1234.5).SerializeToString())

    try:  # one event loop: Feast's async Redis client belongs to the loop that made it
        asyncio.run(direct_rows_equal_sdk_rows_and_follow_a_change(direct, sdk, members, items, change))
    finally:
        client.hset(key, field, held)


def test_redis_stopped_under_a_connected_reader_gives_defaults_then_recovers(served_settings, known_ids, tmp_path):
    """A real Redis server (a private one on a free port, holding a copy of the served keys) is stopped after
    the reader has connected to it: reads answer by the deadline with default features and a reason, and
    once the server is back the next read is whole again, with the same values as before."""
    import shutil
    import subprocess

    import redis

    from features import store as store_module
    from features.store import feature_store
    from rankflow.stages.publish import free_port
    from serving.online import OnlineFeatures
    from serving.redis_rows import RedisRows

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed on this machine")
    members, items = known_ids
    port = free_port()
    source = redis.Redis.from_url(served_settings.online_store)

    def start_server() -> subprocess.Popen:
        process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                    "--appendonly", "no", "--dir", str(tmp_path)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        target = redis.Redis(host="127.0.0.1", port=port)
        for _ in range(100):
            try:
                target.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        for key in source.scan_iter(count=1_000):
            target.restore(key, 0, source.dump(key), replace=True)
        return process

    servers = [start_server()]
    store = feature_store(served_settings)
    store.config.online_store.connection_string = f"127.0.0.1:{port}"
    store._provider = None
    try:
        reader = OnlineFeatures(store, deadline_ms=500)
        assert isinstance(reader.direct, RedisRows) and reader.direct.port == port

        async def reads():  # one event loop, so the reader's pooled connection outlives the server
            before = await reader.read(members[0], items[:10])
            servers[0].terminate()
            servers[0].wait(timeout=10)
            started = time.perf_counter()
            stopped = await reader.read(members[0], items[:10])
            elapsed = time.perf_counter() - started
            servers.append(start_server())
            after = await reader.read(members[0], items[:10])
            return before, stopped, elapsed, after

        before, stopped, elapsed, after = asyncio.run(reads())
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=10)
        store_module._stores.clear()
    assert not before.degraded and before.member is not None
    assert stopped.degraded and stopped.degraded_reasons and elapsed < 1.0, (stopped.degraded_reasons, elapsed)
    assert stopped.member is None and stopped.jobs.drop(columns="item_id").isna().all().all()
    assert not after.degraded, after.degraded_reasons
    assert after.member == before.member
    assert after.jobs.equals(before.jobs)


@pytest.fixture
def sqlite_settings(served_settings, tmp_path):
    """A copy of the served data dir with a new, empty SQLite online store filled by materialising its days."""
    import shutil

    from features.materialize import materialize_day
    from rankflow.config import load_settings
    from serving_testdata import DAYS

    root = tmp_path / "data"
    shutil.copytree(served_settings.data_dir, root, ignore=shutil.ignore_patterns("run", "feast"))
    settings = load_settings(root, online_store="sqlite", spark_master="local[2]")
    for day in DAYS:
        written = materialize_day(settings, day)
        assert {"glmix_member", "glmix_job"} <= set(written["tables"]), written["tables"]
    return settings


def test_materialising_the_days_fills_a_new_store_with_the_personalisation_views_too(sqlite_settings, known_ids):
    """A new online store (a switch of store, a lost one) gets the GLMix random effects from `features
    materialize` alone, not only at the next `personalise`: served features equal the offline ones."""
    from serving_testdata import SERVED_DAY
    from features.store import feature_store
    from serving.online import OnlineFeatures
    from serving.skew import skew_check

    report = skew_check(sqlite_settings, SERVED_DAY, sample=8)
    assert report.ok and report.values_compared > 8 * 40, report.summary()
    members, _ = known_ids
    reader = OnlineFeatures(feature_store(sqlite_settings), deadline_ms=5_000)
    rows = [asyncio.run(reader.read(member, [])).member for member in members[:20]]
    assert "member_re_mean" in reader.member_columns
    assert sum(row is not None and row["member_re_mean"] is not None for row in rows) >= 10


def test_direct_sqlite_rows_equal_feast_sdk_rows_and_follow_changes(sqlite_settings, known_ids):
    import sqlite3

    from feast.protos.feast.types.Value_pb2 import Value

    from serving.sqlite_rows import SqliteRows

    members, items = known_ids
    direct, sdk = direct_and_sdk_readers(sqlite_settings, SqliteRows)
    project = direct.store.config.project

    def change():
        with sqlite3.connect(direct.direct.path) as connection:
            updated = connection.execute(
                f'UPDATE "{project}_job_features" SET value = ? WHERE entity_key = ? AND feature_name = ?',
                (Value(float_val=1234.5).SerializeToString(), direct.direct.job.key(items[0]), "j_age_days")).rowcount
        assert updated == 1

    asyncio.run(direct_rows_equal_sdk_rows_and_follow_a_change(direct, sdk, members, items, change))


def test_a_late_sqlite_read_still_fills_the_job_cache(sqlite_settings, known_ids, monkeypatch):
    """A read past the deadline answers with defaults at once, but its job rows, when they come, are kept:
    the next request for those jobs is served their real features (before, the late read was dropped and a
    large request missed the deadline every time)."""
    from features.store import feature_store
    from serving.online import OnlineFeatures
    from serving.sqlite_rows import SqliteRows

    members, items = known_ids
    store = feature_store(sqlite_settings)
    truth = asyncio.run(OnlineFeatures(store, deadline_ms=5_000).read(members[0], items[:30]))
    reader = OnlineFeatures(store, deadline_ms=100, cache_seconds=60)
    fetch = SqliteRows._fetch

    def slow_fetch(self, member_id, item_ids):
        time.sleep(0.4)
        return fetch(self, member_id, item_ids)

    async def reads():
        monkeypatch.setattr(SqliteRows, "_fetch", slow_fetch)
        late = await reader.read(members[0], items[:30])
        await asyncio.sleep(1.0)  # the late read ends meanwhile
        monkeypatch.setattr(SqliteRows, "_fetch", fetch)
        return late, await reader.read(members[0], items[:30])

    late, next_read = asyncio.run(reads())
    assert late.degraded and late.member is None and all(v is None for v in late.job_rows[0].values())
    assert not next_read.degraded and next_read.job_rows == truth.job_rows and next_read.member == truth.member


def test_a_stalled_sqlite_store_keeps_at_most_two_late_reads(sqlite_settings, known_ids, monkeypatch):
    """Late reads are left to finish only up to MAX_LATE_READS: a store that stays behind gets no backlog of reads
    nobody waits for (the rest are cancelled; one not yet started in the thread pool never runs)."""
    from features.store import feature_store
    from serving.online import MAX_LATE_READS, OnlineFeatures
    from serving.sqlite_rows import SqliteRows

    members, items = known_ids
    reader = OnlineFeatures(feature_store(sqlite_settings), deadline_ms=20, cache_seconds=60)
    fetch = SqliteRows._fetch

    def stalled_fetch(self, member_id, item_ids):
        time.sleep(0.3)
        return fetch(self, member_id, item_ids)

    monkeypatch.setattr(SqliteRows, "_fetch", stalled_fetch)

    async def burst():
        reads = await asyncio.gather(*(reader.read(members[i], items[:5]) for i in range(8)))
        held = len(reader._late)
        await asyncio.sleep(1.0)
        return reads, held

    reads, held = asyncio.run(burst())
    assert all(read.degraded for read in reads)
    assert held == MAX_LATE_READS == 2 and not reader._late
