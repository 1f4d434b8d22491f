"""A small served data dir, built by the real stages once per session, and one running service.

generate (tests/conftest.py's tiny marketplace) -> features build + materialise for two days (Spark,
Feast, online store = a Redis db this session claims, see online_store_url) -> train a small ranker on
day 2 and promote it -> GLMix random effects of both days (personalise, online too). The service is `bentoml serve` started by
rankflow.stages.publish.start_service, exactly as `rankflow serve` does.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from serving_testdata import DAYS, REDIS_URL, SERVED_DAY, SESSION_DBS, SMALL_RANKER

CLAIM_SECONDS = 1800  # a crashed session's claim runs out by itself


@pytest.fixture(scope="session")
def online_store_url():
    """A Redis database of this session's own, claimed (SET NX in db 2) and flushed; released at the end."""
    import os
    import socket

    import redis

    claims = redis.Redis.from_url(REDIS_URL)
    owner = f"{socket.gethostname()}:{os.getpid()}"
    for db in SESSION_DBS:
        key = f"rankflow:serving-tests:db:{db}"
        if claims.set(key, owner, nx=True, ex=CLAIM_SECONDS):
            break
    else:
        pytest.fail(f"all Redis databases {SESSION_DBS} are claimed by other serving test sessions "
                    f"(keys rankflow:serving-tests:db:* in {REDIS_URL})")
    url = f"redis://127.0.0.1:6379/{db}"
    redis.Redis.from_url(url).flushdb()
    yield url
    if claims.get(key) == owner.encode():
        claims.delete(key)


@pytest.fixture(scope="session")
def served_settings(tiny_data_dir: Path, tmp_path_factory: pytest.TempPathFactory, online_store_url: str):
    """Settings of a data dir with features online (the claimed Redis db) and a promoted ranker."""
    import torch

    from rankflow.config import load_settings
    from rankflow.stages import features, personalise, ranker
    from training.ranker.train import TrainConfig

    root = tmp_path_factory.mktemp("served") / "data"
    shutil.copytree(tiny_data_dir, root)
    settings = load_settings(root, online_store=online_store_url, spark_master="local[2]")
    features.run_range(settings, list(DAYS), steps=("build", "materialize"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trained = ranker.train(settings, DAYS[1], DAYS[1], eval_days=0, warm_start=False,
                               train_config=TrainConfig(epochs=4), model_overrides=SMALL_RANKER)
    finally:
        torch.set_num_threads(threads)
    assert ranker.promote(settings, trained["tag"])["status"] == "serving"
    for day in DAYS:  # GLMix random effects on top of the served ranker, online beside the features
        personalise.update_random_effects(settings, day)
    return settings


# The session service's feature deadline. Generous on purpose: on the loaded 2-core CI box 16 concurrent
# reads can take over 100 ms, and a read past the deadline answers with default features (`degraded`),
# whose scores then differ from the offline ones. The slow-store test pauses Redis well past this.
SERVICE_DEADLINE_MS = 1_000


@pytest.fixture
def private_settings(served_settings, tmp_path: Path):
    """A copy of the served data dir for tests that rewrite serving.json or the model store.

    The session service keeps serving the original, so its scores cannot depend on which test ran before.
    """
    from rankflow.config import load_settings

    root = tmp_path / "data"
    shutil.copytree(served_settings.data_dir, root, ignore=shutil.ignore_patterns("run"))
    return load_settings(root, online_store=served_settings.online_store, spark_master="local[2]")


@pytest.fixture(scope="session")
def service(served_settings):
    """A running service (adaptive batching on) on a free loopback port."""
    from rankflow.stages.publish import ServeOptions, free_port, start_service

    handle = start_service(served_settings, ServeOptions(port=free_port(), feature_deadline_ms=SERVICE_DEADLINE_MS,
                                                         reload_check_seconds=0.5))
    yield handle
    handle.stop()


@pytest.fixture(scope="session")
def known_ids(served_settings):
    """(member ids, item ids) present in the served day's feature tables."""
    import pandas as pd

    paths = served_settings.paths
    members = pd.read_parquet(paths.feature_partition("member_features", SERVED_DAY))["member_id"].astype(int).tolist()
    items = pd.read_parquet(paths.feature_partition("job_features", SERVED_DAY))["item_id"].astype(int).tolist()
    return sorted(members), sorted(items)
