"""A small served data dir, built by the real stages once per session, and one running service.

generate (tests/conftest.py's tiny marketplace) -> features build + materialise for two days (Spark,
Feast, online store = Redis db 2) -> train a small ranker on day 2 and promote it. The service is
`bentoml serve` started by rankflow.stages.publish.start_service, exactly as `rankflow serve` does.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from serving_testdata import DAYS, REDIS_URL, SERVED_DAY, SMALL_RANKER


def _flush_redis_db() -> None:
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()


@pytest.fixture(scope="session")
def served_settings(tiny_data_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """Settings of a data dir with features online (Redis db 2) and a promoted ranker."""
    import torch

    from rankflow.config import load_settings
    from rankflow.stages import features, ranker
    from training.ranker.train import TrainConfig

    root = tmp_path_factory.mktemp("served") / "data"
    shutil.copytree(tiny_data_dir, root)
    _flush_redis_db()
    settings = load_settings(root, online_store=REDIS_URL, spark_master="local[2]")
    features.run_range(settings, list(DAYS), steps=("build", "materialize"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trained = ranker.train(settings, DAYS[1], DAYS[1], eval_days=0, warm_start=False,
                               train_config=TrainConfig(epochs=4), model_overrides=SMALL_RANKER)
    finally:
        torch.set_num_threads(threads)
    assert ranker.promote(settings, trained["tag"])["status"] == "serving"
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
    return load_settings(root, online_store=REDIS_URL, spark_master="local[2]")


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
