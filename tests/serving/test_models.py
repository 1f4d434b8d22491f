"""A newly promoted ranker is picked up by the running service without downtime; rollback returns the old one."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.redis]


def test_hot_reload_and_rollback_without_failed_requests(service, served_settings, known_ids):
    import torch

    from serving_testdata import DAYS, SMALL_RANKER
    from rankflow.stages import ranker
    from rankflow.paths import atomic_write_bytes
    from rankflow.stages.publish import rollback
    from training.ranker.train import TrainConfig

    members, items = known_ids
    old = ranker.serving_tag(served_settings)
    serving_json = served_settings.paths.models / "serving.json"
    before = serving_json.read_bytes()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        new = ranker.train(served_settings, DAYS[1], DAYS[1], eval_days=0, warm_start=False,
                           train_config=TrainConfig(epochs=1, seed=3), model_overrides=SMALL_RANKER)["tag"]
    finally:
        torch.set_num_threads(threads)
    statuses, seen, stop = [], [], threading.Event()

    def traffic() -> None:
        with httpx.Client(base_url=service.url, timeout=30) as client:
            while not stop.is_set():
                response = client.post("/rank", json={"member_id": members[1], "candidates": items[:30]})
                statuses.append(response.status_code)
                if response.status_code == 200:
                    seen.append(response.json()["versions"]["models"]["rankflow-ranker"])

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        time.sleep(0.5)
        # what `promote` writes when a candidate wins (this one has no evaluation day, so force it)
        ranker._write_serving(served_settings, ranker.MODEL_NAME, new, [old])
        deadline = time.monotonic() + 30
        while (not seen or seen[-1] != new) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert seen and seen[-1] == new, f"service still serves {seen[-1:]} 30 s after promoting {new}"
        assert rollback(served_settings)["ranker"]["tag"] == old
        deadline = time.monotonic() + 30
        while seen[-1] != old and time.monotonic() < deadline:
            time.sleep(0.2)
        assert seen[-1] == old
    finally:
        stop.set()
        worker.join()
        # the session service is shared: whatever failed above, the tests after this one see the old model again
        if ranker.serving_tag(served_settings) != old:
            atomic_write_bytes(serving_json, before)
    assert set(statuses) == {200} and old in seen and new in seen
