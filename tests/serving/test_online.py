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
