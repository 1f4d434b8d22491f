"""Feature stages: what `rankflow features ...` and the features DAG call, one logical day at a time.

validate_raw(settings, day)      GX suite on the day's raw events; a failing partition is quarantined.
build_features(settings, day)    Spark feature tables + the day's training set, all validated, then
                                 written atomically (nothing is written when any check fails).
materialize(settings, day)       feast apply (when the declarations changed) + push the day online,
                                 never rolling a newer online value back.
run_day(settings, day)           the three in order; run_range(settings, days) over days in order
                                 (one SparkSession, each day's windows from the previous day's).
"""

from __future__ import annotations

import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Callable

import pandas as pd

from rankflow.config import Settings
from rankflow.errors import MissingInput
from rankflow.logs import get_logger
from rankflow.paths import recover_replacement

log = get_logger(__name__)

# Means that must not drift more than the bound from one day to the next (rates, not growing counts).
DRIFT_COLUMNS = {"member_features": ("m_rate_28d",), "job_features": ("j_rate_28d",), "member_affinities": ()}


def _table_rules(table: str, frame: pd.DataFrame) -> dict:
    """Ranges per column: rates in [0, 1], counts and durations non-negative."""
    ranges: dict[str, tuple[float | None, float | None]] = {}
    for column in frame.columns:
        if "_rate_" in column:
            ranges[column] = (0.0, 1.0)
        elif any(part in column for part in ("_impressions_", "_applies_", "_days", "_popularity")):
            ranges[column] = (0.0, None)
    return {"ranges": ranges, "drift_columns": DRIFT_COLUMNS.get(table, ())}


def _quarantine_frame(settings: Settings, zone: str, day: date, frame, failure) -> Path:
    """Keep a frame (pandas or Arrow) that failed validation aside with its report (it was never written to
    its zone)."""
    import pyarrow as pa

    from features.contract import PART_FILE, parquet_bytes
    from validation import quarantine

    settings.paths.root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{zone.replace('/', '_')}-", dir=settings.paths.root))
    table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
    (staging / PART_FILE).write_bytes(parquet_bytes(table))
    return quarantine(staging, settings.paths.quarantine(zone, day), failure)


def validate_raw(settings: Settings, day: date) -> dict:
    """Check day D's raw events (schema, ids, timestamps inside D, labels, duplicates, unknown ids)."""
    from features.contract import load_raw_schema, read_raw
    from validation import ValidationFailed, check_raw_events, quarantine

    paths = settings.paths
    recover_replacement(paths.root)  # an ingest / generate killed while swapping: rolled back before reading
    partition = paths.raw_partition("events", day)
    if not partition.is_dir():
        quarantined = paths.quarantine("raw_events", day)
        if (quarantined / "partition").is_dir():
            raise MissingInput(
                f"{partition}: no raw events for {day}: they failed validation and were moved to "
                f"{quarantined / 'partition'} (why: {quarantined / 'summary.txt'}); fix them and move them back, "
                "or re-ingest the day, then re-run")
        raise MissingInput(f"{partition}: no raw events for {day} (`rankflow generate` or `rankflow ingest` "
                           "writes the raw zone)")
    schema = load_raw_schema(paths)
    events = read_raw(paths, "events", day=day)
    expected = ["event_id", "member_id", "item_id", "ts", "label", "weight", *schema.events.context]
    try:
        result = check_raw_events(
            events, day, expected_columns=expected,
            known_member_ids=read_raw(paths, "members", end=day)["member_id"].to_numpy(),
            known_item_ids=read_raw(paths, "items", end=day)["item_id"].to_numpy(),
            reports_dir=paths.reports)
    except ValidationFailed as failure:
        moved = quarantine(partition, paths.quarantine("raw_events", day), failure)
        log.error("raw events of %s failed validation; partition moved to %s", day, moved)
        raise
    return {"day": day.isoformat(), "rows": len(events), "validation": result.to_dict()}


def _refuse_quarantined_earlier_days(settings: Settings, day: date) -> None:
    """Day D's windows count every earlier day's events: an earlier day whose raw events are in quarantine
    (and not back in the raw zone) would be left out silently, and D's features would stay wrong after the
    earlier day is repaired. So D waits for it."""
    paths = settings.paths
    root = paths.quarantine("raw_events", day).parent
    held = sorted(date.fromisoformat(folder.name[3:]) for folder in root.glob("dt=*")
                  if (folder / "partition").is_dir()) if root.is_dir() else []
    missing = [d for d in held if d < day and not paths.raw_partition("events", d).is_dir()]
    if missing:
        first = missing[0]
        raise MissingInput(
            f"{paths.raw_partition('events', first)}: the raw events of {', '.join(map(str, missing))} are in "
            f"quarantine ({paths.quarantine('raw_events', first)}), so the windows of {day} would leave them out: "
            f"fix and restore {first} and build it (`rankflow features build --date {first}`), then build {day}")


def build_features(settings: Settings, day: date, on_progress: Callable[[str], None] | None = None,
                   release_spark: bool = False) -> dict:
    """Spark feature tables of D and the training set of D, validated, then written atomically.

    `on_progress(text)` names each part as it starts (a large day is minutes of Spark, then of assembly).
    `release_spark`: end the Spark session and its JVM once the Spark part is done, when nothing after this
    day needs it (one day's command, an Airflow task): with the file offline store the training set needs no
    Spark, and the idle JVM's heap was 2.8 GB of a 100x day's peak. With `offline_store: spark` Feast's join
    runs on that session, so it is kept. A range of days keeps one session (starting a JVM costs seconds)."""
    from features.spark.build import ENTITY_OF_TABLE, build_day
    from features.spark.session import spark_session
    from features.store import read_offline_partition, write_offline_partition
    from features.training_set import TABLE as TRAINING_TABLE
    from features.training_set import build_training_set, validation_frame, write_training_set
    from validation import ValidationFailed, check_feature_table, check_training_set, refresh_data_docs_index

    say = on_progress or (lambda text: None)
    started = time.perf_counter()
    paths = settings.paths
    _refuse_quarantined_earlier_days(settings, day)
    say("Spark feature tables")
    built = build_day(spark_session(settings), paths, day)
    if release_spark and settings.offline_store == "file":
        from features.spark.session import stop_spark_session

        try:
            stop_spark_session()
        except Exception as error:  # the day's tables are already in memory: a JVM that died costs nothing here
            log.warning("features %s: Spark did not stop cleanly (%s); the next session starts a new JVM", day, error)
    spark_seconds = time.perf_counter() - started
    checks = {}
    for table, frame in built.tables.items():
        try:
            result = check_feature_table(
                table, frame, day, previous=read_offline_partition(paths, table, day - timedelta(days=1)),
                reports_dir=paths.reports, key_columns=[ENTITY_OF_TABLE[table]], **_table_rules(table, frame))
        except ValidationFailed as failure:
            _quarantine_frame(settings, f"features/{table}", day, frame, failure)
            raise
        checks[table] = result.success
    # The training set of D reads the features of D-1 only, so it can be made before D's tables land.
    say("training set")
    training, spec = build_training_set(
        settings, day, on_batch=lambda done, rows: say(f"training set: {done:,} of {rows:,} events"))
    say("validating the training set")
    try:
        check_training_set(validation_frame(training, spec), day, reports_dir=paths.reports,
                           dense_columns=spec["dense"])
    except ValidationFailed as failure:
        _quarantine_frame(settings, f"features/{TRAINING_TABLE}", day, training, failure)
        raise
    say("writing")
    for table, frame in built.tables.items():
        write_offline_partition(paths, table, day, frame)
    write_training_set(settings, day, training, spec)
    refresh_data_docs_index(paths.reports)  # GX's index, once a day (validation.checkpoint)
    return {
        "day": day.isoformat(), "events": built.events, "windows": built.window_modes,
        "rows": {table: len(frame) for table, frame in built.tables.items()} | {TRAINING_TABLE: training.num_rows},
        "spark_seconds": round(spark_seconds, 2), "seconds": round(time.perf_counter() - started, 2),
    }


def materialize(settings: Settings, day: date) -> dict:
    """feast apply when needed, then push day D's rows online (newer stored values are never replaced)."""
    from features.materialize import materialize_day

    return materialize_day(settings, day)


def run_day(settings: Settings, day: date) -> dict:
    """validate_raw -> build_features -> materialize for one day."""
    return {"validate": validate_raw(settings, day), "build": build_features(settings, day),
            "materialize": materialize(settings, day)}


STEPS: dict[str, Callable[..., dict]] = {
    "validate": validate_raw, "build": build_features, "materialize": materialize}


def run_range(settings: Settings, days: list[date], steps: tuple[str, ...] = ("validate", "build", "materialize"),
              on_day: Callable[[date, dict], None] | None = None,
              on_step: Callable[..., None] | None = None, release_spark: bool = False) -> list[dict]:
    """Run `steps` for each day in order; stops at the first failure (later days depend on it).

    `on_day(day, outcome)` after each day; `on_step(day, step)` before each step and, within the build,
    `on_step(day, "build", part)` as each part starts (a progress display). `release_spark`: the last day's
    build ends the Spark session once its Spark part is done (build_features); the days before share it.
    """
    results = []
    ordered = sorted(days)
    for day in ordered:
        outcome = {"day": day.isoformat()}
        for step in steps:
            progress = {"release_spark": True} if release_spark and step == "build" and day == ordered[-1] else {}
            if on_step is not None:
                on_step(day, step)
                if step == "build":
                    progress["on_progress"] = lambda part, day=day: on_step(day, "build", part)
            outcome[step] = STEPS[step](settings, day, **progress)
        results.append(outcome)
        if on_day is not None:
            on_day(day, outcome)
    return results
