"""The shared wiring: which days a run processes, and how stage failures reach Airflow."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timezone

import pytest
from airflow.sdk.exceptions import AirflowFailException

from dags._common import FEATURES, logical_day, run_stage, training_window, triggered_days
from tests.dags.conftest import validation_failure


@dataclass
class FakeSourceRun:
    data_interval_start: datetime | None


@dataclass
class FakeEvent:
    extra: dict
    source_dag_run: FakeSourceRun | None = None


def utc(day: str) -> datetime:
    return datetime.fromisoformat(day).replace(tzinfo=timezone.utc)


def test_one_run_consuming_several_feature_events_processes_every_day_oldest_first():
    events = {FEATURES: [FakeEvent({"day": "2026-01-03"}), FakeEvent({"day": "2026-01-02"}),
                         FakeEvent({}, FakeSourceRun(utc("2026-01-04"))), FakeEvent({"day": "2026-01-03"})]}
    assert triggered_days(events, FEATURES) == [date(2026, 1, 2), date(2026, 1, 3), date(2026, 1, 4)]


def test_a_manual_day_wins_and_no_day_at_all_fails_without_retry():
    assert triggered_days({}, FEATURES, "2026-01-05") == [date(2026, 1, 5)]
    with pytest.raises(AirflowFailException, match="no day to process"):
        triggered_days({FEATURES: []}, FEATURES)


def test_logical_day_is_the_utc_start_of_the_data_interval():
    assert logical_day(datetime(2026, 1, 2, 23, 0, tzinfo=timezone.utc)) == date(2026, 1, 2)
    assert type(logical_day(utc("2026-01-02"))) is date
    with pytest.raises(AirflowFailException, match="no data interval"):
        logical_day(None)


def test_weekly_window_is_the_data_interval_and_params_override_it():
    assert training_window(utc("2026-01-04"), utc("2026-01-11"), {}) == (date(2026, 1, 4), date(2026, 1, 10))
    params = {"start": "2026-01-01", "end": "2026-01-03"}
    assert training_window(utc("2026-01-04"), utc("2026-01-11"), params) == (date(2026, 1, 1), date(2026, 1, 3))


def test_manual_window_without_interval_ends_at_the_newest_training_set(rankflow_data_dir, tmp_path):
    data_dir = rankflow_data_dir(tmp_path / "data")
    for day in ("2026-01-02", "2026-01-09"):
        (data_dir / "features" / "training_set" / f"dt={day}").mkdir(parents=True)
    assert training_window(None, None, {}) == (date(2026, 1, 3), date(2026, 1, 9))


def test_validation_failure_fails_fast_with_the_report_and_other_errors_propagate(fake_stages, rankflow_data_dir,
                                                                                   tmp_path):
    report = tmp_path / "reports/validation/raw_events/dt=2026-01-02/result.json"
    fake_stages.failures["validate_raw"] = validation_failure(date(2026, 1, 2), report)
    with pytest.raises(AirflowFailException) as failed:
        run_stage("features", "validate_raw", date(2026, 1, 2))
    assert str(report) in str(failed.value) and "label: values outside" in str(failed.value)

    fake_stages.failures["build_features"] = ConnectionError("spark driver lost")
    with pytest.raises(ConnectionError):  # not AirflowFailException: DEFAULT_ARGS retries it
        run_stage("features", "build_features", date(2026, 1, 2))
    assert run_stage("features", "materialize", date(2026, 1, 2))["args"] == ["2026-01-02"]


def test_a_missing_or_unreadable_input_fails_fast_with_its_message(fake_stages, rankflow_data_dir, tmp_path):
    import pyarrow as pa

    from rankflow.errors import MissingInput, UnreadableInput

    fake_stages.failures["validate_raw"] = MissingInput("raw/events/dt=2026-01-06: no raw events for 2026-01-06")
    with pytest.raises(AirflowFailException, match="not retrying: raw/events/dt=2026-01-06: no raw events"):
        run_stage("features", "validate_raw", date(2026, 1, 6))
    fake_stages.failures["build_features"] = pa.ArrowInvalid("Parquet magic bytes not found in footer")
    with pytest.raises(AirflowFailException, match="magic bytes"):
        run_stage("features", "build_features", date(2026, 1, 6))
    fake_stages.failures["materialize"] = UnreadableInput("features/x/dt=2026-01-06/part-0.parquet: not readable")
    with pytest.raises(AirflowFailException, match="part-0.parquet: not readable"):
        run_stage("features", "materialize", date(2026, 1, 6))
    fake_stages.failures["materialize"] = FileNotFoundError("transient")  # a plain one stays retried
    with pytest.raises(FileNotFoundError):
        run_stage("features", "materialize", date(2026, 1, 6))


def test_schedules_cover_the_raw_zones_event_days_else_the_generators_range(tmp_path):
    from rankflow.config import GeneratorSettings, Settings
    from rankflow.paths import PART_FILE

    settings = Settings(data_dir=tmp_path, generator=GeneratorSettings(start_date=date(2026, 1, 1), days=10))
    assert settings.scheduled_days() == (date(2026, 1, 1), date(2026, 1, 10))
    events = settings.paths.raw_table("events")
    for day in ("2025-03-05", "2025-03-07"):  # ingested days: not the generator's
        (events / f"dt={day}").mkdir(parents=True)
        (events / f"dt={day}" / PART_FILE).write_bytes(b"")
    (events / "dt=2025-03-09").mkdir()  # no data file: not a day
    assert settings.scheduled_days() == (date(2025, 3, 5), date(2025, 3, 7))


def test_a_day_whose_prior_state_retention_deleted_is_skipped_and_the_others_run(rankflow_data_dir, tmp_path,
                                                                                  monkeypatch):
    """A backfill of days with glmix_keep_days on: the refused day (PriorDeleted) is skipped with its reason,
    the later days still run; a run whose every day is refused fails, without retry; other errors still fail."""
    import sys
    import types

    from dags._common import run_stage_days
    from rankflow.errors import MissingInput, PriorDeleted

    refused, calls = {date(2026, 1, 2)}, []

    def update(settings, day):
        calls.append(day)
        if day in refused:
            raise PriorDeleted(f"glmix {day}: the state it starts from was deleted by retention")
        if day == date(2026, 1, 9):
            raise MissingInput(f"no training set for {day}")
        return {"day": day.isoformat()}

    module = types.ModuleType("rankflow.stages.fake_personalise")
    module.update = update
    monkeypatch.setitem(sys.modules, "rankflow.stages.fake_personalise", module)
    rankflow_data_dir(tmp_path / "data")
    days = [date(2026, 1, 2), date(2026, 1, 3), date(2026, 1, 4)]
    results = run_stage_days("fake_personalise", "update", days)
    assert calls == days
    assert results["2026-01-02"] == {"skipped": "glmix 2026-01-02: the state it starts from was deleted by retention"}
    assert results["2026-01-03"] == {"day": "2026-01-03"} and results["2026-01-04"] == {"day": "2026-01-04"}
    with pytest.raises(AirflowFailException, match="every day was refused: glmix 2026-01-02"):
        run_stage_days("fake_personalise", "update", [date(2026, 1, 2)])
    with pytest.raises(AirflowFailException, match="no training set for 2026-01-09"):
        run_stage_days("fake_personalise", "update", [date(2026, 1, 3), date(2026, 1, 9)])
