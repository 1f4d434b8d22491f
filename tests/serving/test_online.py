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


def test_direct_redis_rows_equal_feast_sdk_rows_and_follow_changes(served_settings, known_ids):
    import redis
    from feast.infra.online_stores.helpers import _mmh3
    from feast.protos.feast.types.Value_pb2 import Value

    from features.store import feature_store
    from serving.online import OnlineFeatures

    members, items = known_ids
    store = feature_store(served_settings)
    direct = OnlineFeatures(store, deadline_ms=5_000)
    assert direct.redis is not None, "a plain Redis store must be read directly"
    sdk = OnlineFeatures(store, deadline_ms=5_000)
    sdk.redis = None  # the Feast SDK path, for comparison
    candidates = items[:40] + [55_555_555]
    client = redis.Redis.from_url(served_settings.online_store)
    key = direct.redis.job.key(items[0], direct.redis.project)
    field = _mmh3("job_features:j_age_days")
    held = client.hget(key, field)

    async def reads():  # one event loop: Feast's async Redis client belongs to the loop that made it
        for member_id in (members[0], members[7], 987_654_321):
            ours, theirs = await direct.read(member_id, candidates), await sdk.read(member_id, candidates)
            assert not ours.degraded and not theirs.degraded, (ours.degraded_reasons, theirs.degraded_reasons)
            assert ours.member == theirs.member and ours.cold_start == theirs.cold_start
            assert ours.job_rows == theirs.job_rows
            assert ours.unknown_candidates == theirs.unknown_candidates == [55_555_555]
        assert sum(v is not None for v in ours.job_rows[0].values()) > 10
        # an unchanged job keeps its row object (the encoder's cache key); a changed one gets a new row at once
        first, again = await direct.read(members[0], items[:2]), await direct.read(members[0], items[:2])
        assert again.job_rows[0] is first.job_rows[0]
        client.hset(key, field, Value(float_val=1234.5).SerializeToString())
        changed = await direct.read(members[0], items[:2])
        assert changed.job_rows[0]["j_age_days"] == 1234.5 and changed.job_rows[0] is not first.job_rows[0]
        assert changed.job_rows[1] is first.job_rows[1]

    try:
        asyncio.run(reads())
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
        assert reader.redis is not None and reader.redis.port == port

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
