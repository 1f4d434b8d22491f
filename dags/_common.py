"""Shared wiring of the rankflow DAGs: assets, schedule bounds, retry policy, and the stage call.

DAG files stay thin: they declare schedules and task order and call `run_stage()`, which
imports the real work (rankflow.stages.*) inside the task, so a DAG file parses without
Spark, Feast, torch, BentoML or Great Expectations.

Configuration comes from Airflow's own config, section `[rankflow]` (airflow.cfg or
AIRFLOW__RANKFLOW__<KEY> env vars, written by `rankflow airflow up`):

    data_dir   the rankflow data directory the tasks read and write
    end_date   last logical day the daily/weekly schedules create runs for (empty: open-ended)
    gpu_pool   Airflow pool of the ranker's train task (default: default_pool)
    gpu_queue  executor queue of the ranker's train task (Celery/Kubernetes; default: default)
    retries    retries of a failed task, with exponential backoff from 30 s (default: 3)
    meta_min_history_days  training-set days before the first meta-training (default: 3)
"""

from __future__ import annotations

import sys
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

from airflow.sdk import Asset
from airflow.sdk.configuration import conf

FEATURES = Asset(name="features", uri="rankflow://features")
PERSONALISATION = Asset(name="personalisation", uri="rankflow://personalisation")
RANKER = Asset(name="ranker", uri="rankflow://ranker")

TAGS = ["rankflow"]


def rankflow_option(key: str, fallback: str | None = None) -> str | None:
    """One `[rankflow]` option from Airflow's configuration; empty strings count as unset."""
    value = conf.get("rankflow", key, fallback=fallback)
    return value or fallback


# Transient errors (a Spark executor lost, the online store briefly unreachable) get retried with
# exponential backoff: 30 s, 60 s, 120 s. Validation failures bypass this (AirflowFailException).
DEFAULT_ARGS: dict[str, Any] = {
    "owner": "rankflow",
    "retries": int(rankflow_option("retries", "3")),
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=10),
}


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=timezone.utc)


def schedule_start() -> datetime:
    """First logical day of every schedule: the data dir's first raw event day (Settings.scheduled_days)."""
    from rankflow.config import load_settings  # light: dataclasses + yaml

    return _midnight(load_settings(rankflow_option("data_dir")).scheduled_days()[0])


def schedule_end() -> datetime | None:
    """Last logical day the schedules create runs for; None runs on forever (production)."""
    value = rankflow_option("end_date")
    if not value:
        return None
    try:
        return _midnight(date.fromisoformat(value))
    except ValueError:
        raise ValueError(f"[rankflow] end_date: expected YYYY-MM-DD, got {value!r}") from None


def task_settings():
    """Inside a task: set up logging once and read the Settings of the configured data dir."""
    from rankflow.config import load_settings
    from rankflow.logs import configure_logging

    configure_logging()
    return load_settings(rankflow_option("data_dir"))


def logical_day(data_interval_start: datetime | None) -> date:
    """The day a daily run is about: the start of its data interval (UTC)."""
    if data_interval_start is None:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(
            "this run has no data interval: trigger it with a logical date, or through a backfill"
        )
    utc = data_interval_start.astimezone(timezone.utc)
    return date(utc.year, utc.month, utc.day)  # a plain date, not pendulum's subclass


def _validation_failure(error: BaseException) -> bool:
    # The validation package (and Great Expectations behind it) is only imported by the stages;
    # if it is not loaded, the error cannot be one of its failures.
    failure_type = getattr(sys.modules.get("validation"), "ValidationFailed", None)
    return failure_type is not None and isinstance(error, failure_type)


def _input_failure(error: BaseException) -> bool:
    """An input that is missing (rankflow.errors.MissingInput) or unreadable (UnreadableInput, or pyarrow's
    ArrowInvalid: a truncated or corrupt Parquet file): waiting does not fix either."""
    from rankflow.errors import MissingInput, UnreadableInput

    return isinstance(error, (MissingInput, UnreadableInput)) or type(error).__name__ == "ArrowInvalid"


def run_stage(area: str, function: str, *args: Any, **kwargs: Any) -> dict:
    """Call `rankflow.stages.<area>.<function>(settings, *args, **kwargs)` from inside a task.

    A validation failure fails the task at once (no retry can fix bad data) with the report path
    in the task log, and so does a missing or unreadable input (its message says what to do); any other
    error propagates and is retried by DEFAULT_ARGS.
    """
    import importlib

    from airflow.sdk.exceptions import AirflowFailException

    from rankflow.logs import get_logger

    settings = task_settings()
    stage = getattr(importlib.import_module(f"rankflow.stages.{area}"), function)
    log = get_logger(f"dags.{area}")
    try:
        result = stage(settings, *args, **kwargs)
    except Exception as error:
        if _input_failure(error):
            raise AirflowFailException(f"input missing or unreadable, not retrying: {error}") from error
        if not _validation_failure(error):
            raise
        # ValidationFailed.summary names the failed expectations, the report and the Data Docs page.
        summary = getattr(error, "summary", str(error))
        report = getattr(error, "report_path", None)
        if report is not None and str(report) not in summary:
            summary += f"\n  report: {report}"
        raise AirflowFailException(f"validation failed, not retrying:\n{summary}") from error
    log.info("%s.%s -> %s", area, function, result)
    return result


def run_stage_days(area: str, function: str, days: list[date]) -> dict[str, dict]:
    """run_stage for each day, oldest first; {day: result}. A day refused because retention deleted the state it
    starts from (rankflow.errors.PriorDeleted) is skipped, {"skipped": why}, with a warning, and the others still
    run; the task fails when every day was refused (a backfill of days that can no longer be re-run)."""
    from airflow.sdk.exceptions import AirflowFailException

    from rankflow.errors import PriorDeleted
    from rankflow.logs import get_logger

    results: dict[str, dict] = {}
    for day in days:
        try:
            results[day.isoformat()] = run_stage(area, function, day)
        except AirflowFailException as error:
            if not isinstance(error.__cause__, PriorDeleted):
                raise
            get_logger(f"dags.{area}").warning("%s.%s %s skipped: %s", area, function, day, error.__cause__)
            results[day.isoformat()] = {"skipped": str(error.__cause__)}
    if days and all("skipped" in result for result in results.values()):
        raise AirflowFailException(f"{area}.{function}: every day was refused: "
                                   + "; ".join(result["skipped"] for result in results.values()))
    return results


def triggered_days(triggering_asset_events: Any, asset: Asset, requested_day: str | None = None) -> list[date]:
    """The logical days an asset-triggered run must process, oldest first.

    One run can consume several events (upstream finished days faster than this DAG ran), so
    every event's day counts. The day is the event's `extra["day"]`, else the data interval of
    the upstream run that produced it. A manual run names its day in the `day` param instead.
    """
    if requested_day:
        return [date.fromisoformat(requested_day)]
    days: set[date] = set()
    for event in (triggering_asset_events or {}).get(asset, []):
        if event.extra and event.extra.get("day"):
            days.add(date.fromisoformat(event.extra["day"]))
        elif event.source_dag_run is not None and event.source_dag_run.data_interval_start is not None:
            days.add(logical_day(event.source_dag_run.data_interval_start))
    if not days:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(
            f"no day to process: no {asset.name!r} event names one; trigger with conf {{\"day\": \"YYYY-MM-DD\"}}"
        )
    return sorted(days)


# Meta-training needs query days with history before them (one task per active member per query day),
# so the first days of a fresh data dir can neither train nor use a meta-initialisation; the demo
# waits the same number of days (rankflow.stages.demo.META_TRAIN_AFTER_DAYS = 4: 3 days of history).
META_MIN_HISTORY_DAYS = 3


def meta_min_history_days() -> int:
    """`[rankflow] meta_min_history_days`: training-set days needed before the first meta-training."""
    return int(rankflow_option("meta_min_history_days", str(META_MIN_HISTORY_DAYS)))


def meta_not_ready(day: date) -> str | None:
    """Why `day` can neither use nor meta-train a meta-initialisation yet; None when it can.

    Ready when a meta-init exists at or before `day` (models/meta/dt=*), or when at least
    META_MIN_HISTORY_DAYS training-set days precede it to train one on. Decided from files only,
    so re-running a day, or backfilling it later, decides the same way.
    """
    from training.meta.state import state_days

    settings = task_settings()
    meta_root = settings.paths.models / "meta"  # rankflow.stages.meta.meta_root, without importing the stage
    if any(d <= day for d in state_days(meta_root)):
        return None
    table = settings.paths.feature_table("training_set")
    history = [p for p in table.glob("dt=*") if p.is_dir() and date.fromisoformat(p.name[3:]) < day]
    needed = meta_min_history_days()
    if len(history) >= needed:
        return None
    return (f"no meta-initialisation at or before {day} under {meta_root} and only {len(history)} "
            f"training-set day(s) before it in {table} (meta-training needs {needed})")


def training_window(
    data_interval_start: datetime | None, data_interval_end: datetime | None, params: dict | None
) -> tuple[date, date]:
    """First and last logical day (inclusive) a ranker run trains on.

    A scheduled weekly run trains on its data interval [start, end); a manual run may name
    `start`/`end` params, else it takes the week that ends at the newest built training set.
    """
    params = params or {}
    if params.get("start") and params.get("end"):
        first, last = date.fromisoformat(params["start"]), date.fromisoformat(params["end"])
    elif data_interval_start is not None and data_interval_end is not None and data_interval_end > data_interval_start:
        first = logical_day(data_interval_start)
        last = logical_day(data_interval_end) - timedelta(days=1)
    else:
        last = _newest_training_day()
        first = last - timedelta(days=6)
    if last < first:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(f"training window ends ({last}) before it starts ({first})")
    return first, last


def _newest_training_day() -> date:
    from airflow.sdk.exceptions import AirflowFailException

    from rankflow.paths import DataPaths

    table = DataPaths(task_settings().data_dir).feature_table("training_set")
    days = sorted(p.name.removeprefix("dt=") for p in table.glob("dt=*") if p.is_dir())
    if not days:
        raise AirflowFailException(f"no training set partitions under {table}: run the features DAG first")
    return date.fromisoformat(days[-1])
