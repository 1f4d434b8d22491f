"""`dag.test()` runs of every DAG: wiring with recorded stages, then a synthetic day with the real ones."""

from __future__ import annotations

import importlib
import shutil
from datetime import date, datetime, timedelta, timezone

import pytest

from tests.dags.conftest import STAGE_FUNCTIONS, validation_failure

pytestmark = pytest.mark.slow

DAY = date(2026, 1, 2)


def midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc)


def build_dag(dag_id: str):
    """A fresh DAG object from its file (calling the @dag function builds it)."""
    module = importlib.import_module(f"dags.{dag_id}_dag")
    return getattr(module, dag_id)()


def run_dag(dag_id: str, day: date | None = None, conf: dict | None = None):
    """dag.test() for one logical day; a manual run's interval is the day *before* its logical date."""
    logical_date = midnight(day + timedelta(days=1)) if day else None
    return build_dag(dag_id).test(logical_date=logical_date, run_conf=conf)


def states(run) -> dict[str, str]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(select(TaskInstance).where(TaskInstance.dag_id == run.dag_id,
                                                          TaskInstance.run_id == run.run_id))
        return {ti.task_id: str(ti.state) for ti in rows}


def training_history(data_dir, days: int = 3):
    """Empty training-set partitions for the `days` days before DAY: enough history to meta-train."""
    for back in range(1, days + 1):
        (data_dir / "features" / "training_set" / f"dt={DAY - timedelta(days=back)}").mkdir(parents=True)


def test_features_runs_its_three_stages_for_the_interval_day(airflow_db, fake_stages, rankflow_data_dir):
    run = run_dag("features", DAY)
    assert str(run.state) == "success"
    assert fake_stages.calls == [("validate_raw", (DAY,)), ("build_features", (DAY,)), ("materialize", (DAY,))]
    # The task's process needs no Spark after the build: its JVM goes before the training set is made.
    assert fake_stages.keywords["build_features"] == {"release_spark": True}


@pytest.mark.parametrize("failure, attempts", [("validation", 1), ("connection", 2)])
def test_features_stops_at_a_validation_failure_without_retrying(airflow_db, fake_stages, rankflow_data_dir,
                                                                  tmp_path, monkeypatch, failure, attempts):
    """With one retry allowed, a validation failure runs once (AirflowFailException); a transient error twice."""
    from dags._common import DEFAULT_ARGS

    monkeypatch.setitem(DEFAULT_ARGS, "retries", 1)
    monkeypatch.setitem(DEFAULT_ARGS, "retry_delay", timedelta(0))
    monkeypatch.setitem(DEFAULT_ARGS, "retry_exponential_backoff", 0)
    fake_stages.failures["validate_raw"] = (validation_failure(DAY, tmp_path / "result.json")
                                            if failure == "validation" else ConnectionError("store unreachable"))
    run = run_dag("features", DAY)
    assert str(run.state) == "failed"
    assert fake_stages.called() == ["validate_raw"] * attempts  # nothing downstream
    assert states(run)["materialize"] == "upstream_failed"


def test_personalisation_updates_then_refreshes_the_requested_day(airflow_db, fake_stages, rankflow_data_dir,
                                                                  tmp_path):
    training_history(rankflow_data_dir(tmp_path / "data"))
    run = run_dag("personalisation", conf={"day": DAY.isoformat()})
    assert str(run.state) == "success"
    assert fake_stages.calls == [("update_random_effects", (DAY,)), ("refresh_meta_embeddings", (DAY,))]


def test_personalisation_without_history_skips_only_the_meta_embeddings(airflow_db, fake_stages,
                                                                         rankflow_data_dir, tmp_path):
    training_history(rankflow_data_dir(tmp_path / "data"), days=2)  # one short of a meta-training window
    run = run_dag("personalisation", conf={"day": DAY.isoformat()})
    assert str(run.state) == "success"
    assert fake_stages.called() == ["update_random_effects"]


def test_ranker_trains_evaluates_and_promotes_on_the_requested_window(airflow_db, fake_stages, rankflow_data_dir,
                                                                      tmp_path):
    training_history(rankflow_data_dir(tmp_path / "data"))
    run = run_dag("ranker", conf={"start": "2026-01-01", "end": "2026-01-02"})
    assert str(run.state) == "success"
    by_name = dict(fake_stages.calls)
    assert by_name["train_meta"] == (DAY,)
    assert by_name["train"] == (date(2026, 1, 1), DAY)
    assert by_name["evaluate"] == ("train:1", DAY)
    assert by_name["promote"] == ("train:1",)


def test_ranker_trains_without_a_meta_init_when_history_is_short(airflow_db, fake_stages, rankflow_data_dir):
    run = run_dag("ranker", conf={"start": "2026-01-01", "end": "2026-01-02"})
    assert str(run.state) == "success"
    assert states(run)["train_meta"] == "skipped"
    assert fake_stages.called() == ["train", "evaluate", "promote"]


def test_ranker_not_promoted_skips_so_publish_is_not_triggered(airflow_db, fake_stages, rankflow_data_dir):
    fake_stages.results["promote"] = {"status": "rejected", "reason": "auc 0.71 < serving 0.72 + margin"}
    run = run_dag("ranker", conf={"start": "2026-01-01", "end": "2026-01-04"})
    assert states(run)["promote"] == "skipped"


def test_publish_builds_smoke_tests_and_promotes_the_same_bento(airflow_db, fake_stages, rankflow_data_dir):
    run = run_dag("publish")
    assert str(run.state) == "success"
    assert fake_stages.calls == [("build_bento", ()), ("smoke_test", ("build_bento:1",)),
                                 ("promote_bento", ("build_bento:1",))]


def _require_stages(*areas: str):
    for area in areas or STAGE_FUNCTIONS:
        pytest.importorskip(f"rankflow.stages.{area}", reason=f"rankflow.stages.{area} has not landed yet")


def test_features_dag_builds_a_synthetic_day_with_the_real_stages(airflow_db, rankflow_data_dir, tiny_data_dir,
                                                                 tmp_path):
    _require_stages("features")
    data_dir = rankflow_data_dir(shutil.copytree(tiny_data_dir, tmp_path / "tiny"))
    run = run_dag("features", date(2026, 1, 1))
    assert str(run.state) == "success"
    assert (data_dir / "features" / "training_set" / "dt=2026-01-01" / "part-0.parquet").is_file()
    assert (data_dir / "reports" / "validation").is_dir()


def test_every_dag_runs_a_synthetic_day_with_the_real_stages(airflow_db, rankflow_data_dir, tiny_data_dir, tmp_path):
    _require_stages()
    data_dir = rankflow_data_dir(shutil.copytree(tiny_data_dir, tmp_path / "tiny"))
    first = date(2026, 1, 1)
    for day in (first, first + timedelta(days=1)):
        assert str(run_dag("features", day).state) == "success", f"features {day}"
        assert str(run_dag("personalisation", conf={"day": day.isoformat()}).state) == "success"
    assert (data_dir / "features" / "training_set" / "dt=2026-01-02").is_dir()
    assert (data_dir / "models" / "glmix" / "dt=2026-01-02" / "meta.json").is_file()
    ranker = run_dag("ranker", conf={"start": "2026-01-01", "end": "2026-01-02"})
    assert str(ranker.state) == "success", states(ranker)
    assert states(ranker)["train_meta"] == "skipped"  # two days are too few to meta-train on
    if states(ranker)["promote"] == "success":
        publish = run_dag("publish")
        assert str(publish.state) == "success", states(publish)
    assert (data_dir / "models" / "bentoml").is_dir()
