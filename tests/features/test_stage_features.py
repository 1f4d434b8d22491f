"""Feature stages end to end on the tiny marketplace: online == offline, and bad raw days change nothing."""

from __future__ import annotations

import hashlib
import io
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from features.contract import raw_days
from features.store import read_offline_partition
from rankflow.config import Settings
from rankflow.paths import DataPaths
from rankflow.stages.features import build_features, materialize, run_range, validate_raw
from validation import ValidationFailed

from test_store import REDIS_URL, online_lookups, redis_or_skip

TABLES = {"member_features": "member_id", "job_features": "item_id", "member_affinities": "member_id"}


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_data_dir) -> Settings:
    """The tiny marketplace with its first two days validated, built and materialised (SQLite)."""
    root = tmp_path_factory.mktemp("stage") / "data"
    shutil.copytree(tiny_data_dir, root)
    settings = Settings(data_dir=root)
    run_range(settings, raw_days(settings.paths)[:2])
    return settings


def _assert_online_equals_offline(repo: Path, offline: dict[str, pd.DataFrame], out: Path) -> None:
    """Every view's online rows (one fresh process reads them all through Feast) == its offline table."""
    requests = [{"repo": repo, "view": view, "key": TABLES[view], "ids": frame[TABLES[view]].tolist(),
                 "out": out / f"{view}.pkl"} for view, frame in offline.items()]
    for (view, frame), online in zip(offline.items(), online_lookups(requests)):
        key = TABLES[view]
        for column in frame.columns.drop([key, "event_timestamp", "created_ts"]):
            for entity, expected in zip(frame[key], frame[column]):
                got = online.loc[entity, column]
                if isinstance(expected, (list, np.ndarray)):
                    assert list(np.asarray(got)) == list(np.asarray(expected)), (view, column, entity)
                else:
                    assert got == expected, (view, column, entity)


def test_online_lookups_equal_the_offline_table_sqlite(built, tmp_path):
    day = raw_days(built.paths)[1]
    offline = {view: read_offline_partition(built.paths, view, day) for view in TABLES}
    assert all(len(frame) > 50 for frame in offline.values())
    _assert_online_equals_offline(built.paths.feast, offline, tmp_path)


def test_cli_lookup_prints_a_members_online_values_and_says_when_it_has_none(built):
    """`rankflow features lookup`: the values as JSON; for an id with no online values, a note on stderr."""
    import json

    from rankflow.cli import app

    day = raw_days(built.paths)[1]
    member = int(read_offline_partition(built.paths, "member_features", day)["member_id"].iloc[0])
    known = CliRunner().invoke(app, ["features", "lookup", "--member-id", str(member), "--data-dir", str(built.paths.root)])
    assert known.exit_code == 0, known.output
    values = json.loads(known.stdout)
    assert values["member_id"] == member and values["m_impressions_28d"] is not None
    assert "no online values" not in known.stderr
    unknown = CliRunner().invoke(app, ["features", "lookup", "--member-id", "999999999", "--data-dir", str(built.paths.root)])
    assert unknown.exit_code == 0 and "no online values for {'member_id': 999999999}" in unknown.stderr


def test_online_lookups_equal_the_offline_table_redis(built, tmp_path):
    redis_or_skip()
    root = tmp_path / "data"
    shutil.copytree(built.paths.root, root, ignore=shutil.ignore_patterns("feast"))
    settings = Settings(data_dir=root, online_store=REDIS_URL)
    day = raw_days(settings.paths)[1]
    result = materialize(settings, day)
    assert result["rows"] == sum(len(read_offline_partition(settings.paths, t, day)) for t in TABLES)
    offline = {view: read_offline_partition(settings.paths, view, day) for view in TABLES}
    _assert_online_equals_offline(settings.paths.feast, offline, tmp_path)


def test_rematerialising_an_old_day_keeps_the_newer_online_values(built, tmp_path):
    first, second = raw_days(built.paths)[:2]
    result = materialize(built, first)
    assert result["tables"]["member_features"]["written"] == 0
    assert result["tables"]["member_features"]["skipped_older"] == len(read_offline_partition(built.paths, "member_features", first))
    newest = read_offline_partition(built.paths, "member_features", second)
    _assert_online_equals_offline(built.paths.feast, {"member_features": newest}, tmp_path)


def _digest(*roots: Path, skip: str | None = None) -> str:
    digest = hashlib.sha256()
    for root in roots:
        for path in sorted(p for p in root.rglob("*") if p.is_file() and skip not in p.relative_to(root).parts):
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _corrupt(frame: pd.DataFrame, case: str) -> pd.DataFrame:
    if case == "nulls":
        frame["member_id"] = frame["member_id"].astype("Int64")
        frame.loc[frame.index[:5], "member_id"] = pd.NA
    elif case == "duplicate_event_ids":
        frame.loc[frame.index[1], "event_id"] = frame.loc[frame.index[0], "event_id"]
    elif case == "ts_outside_day":
        frame.loc[frame.index[-3:], "ts"] = frame["ts"].iloc[-1] + pd.Timedelta(days=1)
    elif case == "schema_change":
        frame = frame.rename(columns={"label": "applied"})
    return frame


@pytest.mark.parametrize("case", ["nulls", "duplicate_event_ids", "ts_outside_day", "schema_change"])
def test_bad_raw_day_fails_validation_and_changes_nothing(built, case):
    paths = built.paths
    day = raw_days(paths)[2]
    part = paths.raw_partition("events", day) / "part-0.parquet"
    original = part.read_bytes()
    before = _digest(paths.features, paths.feast)
    pq.write_table(pa.Table.from_pandas(_corrupt(pd.read_parquet(part), case), preserve_index=False), part)
    try:
        # The CLI validates the bad day, says why, exits 1 and quarantines it; the stores stay exactly as they were.
        result = CliRunner().invoke(_app(), ["features", "build", "--date", day.isoformat(), "--data-dir", str(paths.root)])
        said = result.output + (result.stderr if result.stderr_bytes is not None else "")
        assert result.exit_code == 1 and "validation failed" in said, said
        assert _digest(paths.features, paths.feast) == before
        quarantined = paths.quarantine("raw_events", day)
        summary = (quarantined / "summary.txt").read_text().strip()
        assert summary.splitlines()[0] in " ".join(said.split()), (summary, said)
        assert not paths.raw_partition("events", day).exists()
        # The stage itself raises ValidationFailed on the same data, with the same summary.
        shutil.rmtree(quarantined)
        part.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pandas(_corrupt(pd.read_parquet(io.BytesIO(original)), case), preserve_index=False), part)
        with pytest.raises(ValidationFailed) as failure:
            validate_raw(built, day)
        assert (paths.quarantine("raw_events", day) / "summary.txt").read_text().strip() == failure.value.summary.strip()
        assert _digest(paths.features, paths.feast) == before
    finally:
        shutil.rmtree(paths.quarantine("raw_events", day), ignore_errors=True)
        part.parent.mkdir(parents=True, exist_ok=True)
        part.write_bytes(original)


def test_a_training_set_that_fails_validation_is_quarantined_whole_and_changes_nothing(built, monkeypatch):
    """The training set is assembled in batches and held as Arrow: a bad value in the last batch fails the day,
    the quarantine keeps every row of it, and neither the feature tables nor the training set change."""
    import features.training_set as training_set

    paths = built.paths
    day = raw_days(paths)[1]
    # Spark's window state of D (features/_windows, a cache of D's validated raw events) is rewritten with the
    # same rows under new file names before the tables are checked; the tables and the store must not change.
    before = _digest(paths.features, paths.feast, skip="_windows")
    real, poisoned = training_set.build_training_set, []

    def with_a_nan(settings, day, **kwargs):
        table, spec = real(settings, day, batch_rows=100)
        column = spec["dense"][0]
        poisoned.append(column)
        values = table.column(column).to_numpy().copy()
        values[-1] = np.nan
        return table.set_column(table.column_names.index(column), column, pa.array(values)), spec

    monkeypatch.setattr(training_set, "build_training_set", with_a_nan)
    try:
        with pytest.raises(ValidationFailed, match="training_set"):
            build_features(built, day)
        assert _digest(paths.features, paths.feast, skip="_windows") == before
        kept = pq.read_table(paths.quarantine("features/training_set", day) / "partition" / "part-0.parquet")
        assert kept.num_rows == len(read_offline_partition(paths, "training_set", day)) > 100
        assert np.isnan(kept.column(poisoned[0]).to_numpy()[-1])
    finally:
        shutil.rmtree(paths.quarantine("features/training_set", day), ignore_errors=True)


def _app():
    from rankflow.cli import app

    return app


@pytest.mark.slow
def test_fixed_day_builds_after_a_failure(built):
    day = raw_days(built.paths)[2]
    summary = validate_raw(built, day)
    assert summary["rows"] > 0
    result = build_features(built, day)
    assert result["windows"]["member"] == "incremental"
    assert (built.paths.feature_partition("training_set", day) / "part-0.parquet").exists()


def test_run_range_says_which_step_of_which_day_runs_and_stops_at_the_first_failure(monkeypatch, tmp_path):
    """The CLI's progress line names the running step of the running day (a large day is minutes of Spark)."""
    from datetime import date

    from rankflow.stages import features as stage

    calls = []

    def step(name):
        def run(settings, day, on_progress=None):
            calls.append(("run", day.day, name))
            if on_progress is not None:  # only the build reports its parts
                on_progress("training set: 10 of 20 events")
            if (day.day, name) == (3, "build"):
                raise RuntimeError("Spark failed")
            return {name: day.day}
        return run

    monkeypatch.setattr(stage, "STEPS", {name: step(name) for name in ("validate", "build", "materialize")})
    days = [date(2026, 1, 2), date(2026, 1, 1), date(2026, 1, 3)]
    with pytest.raises(RuntimeError, match="Spark failed"):
        stage.run_range(Settings(data_dir=tmp_path), days, on_day=lambda day, outcome: calls.append(("day", day.day)),
                        on_step=lambda day, name, *part: calls.append(("step", day.day, name, *part)))
    part = "training set: 10 of 20 events"
    expected = []
    for day in (1, 2):
        for name in ("validate", "build", "materialize"):
            expected += [("step", day, name), ("run", day, name)] + [("step", day, name, part)] * (name == "build")
        expected.append(("day", day))
    expected += [("step", 3, "validate"), ("run", 3, "validate"), ("step", 3, "build"), ("run", 3, "build"),
                 ("step", 3, "build", part)]
    assert calls == expected


@pytest.mark.slow
def test_a_build_that_releases_spark_ends_the_jvm_after_the_spark_part_and_writes_the_same_day(built, monkeypatch):
    """release_spark (a one-day command, an Airflow task): the JVM goes before the training set is made (its heap
    was 2.8 GB of a 100x day's peak); the day's files are the same bytes, and the next build starts a new JVM."""
    from pyspark import SparkContext

    day = raw_days(built.paths)[1]
    folders = [built.paths.feature_partition(name, day) for name in [*TABLES, "training_set"]]
    build_features(built, day)
    before = _digest(*folders)
    process = SparkContext._gateway.proc

    import features.training_set as training_set

    seen, real = [], training_set.build_training_set
    monkeypatch.setattr(training_set, "build_training_set",
                        lambda *a, **k: seen.append(SparkContext._gateway) or real(*a, **k))
    build_features(built, day, release_spark=True)
    monkeypatch.undo()
    assert seen == [None]  # no JVM while the training set was made
    assert process.poll() is not None and SparkContext._gateway is None
    assert _digest(*folders) == before
    assert build_features(built, day)["events"] > 0 and SparkContext._gateway is not None


def test_run_range_releases_spark_only_in_the_last_days_build(monkeypatch, tmp_path):
    """Days of a range share one Spark session; the last day's build ends it when the caller asks (the CLI)."""
    from datetime import date

    from rankflow.stages import features as stage

    calls = []

    def step(name):
        def run(settings, day, **kwargs):
            calls.append((day.day, name, kwargs.get("release_spark", False)))
            return {}
        return run

    monkeypatch.setattr(stage, "STEPS", {name: step(name) for name in ("validate", "build", "materialize")})
    days = [date(2026, 1, 2), date(2026, 1, 1), date(2026, 1, 3)]
    stage.run_range(Settings(data_dir=tmp_path), days, release_spark=True)
    assert [call for call in calls if call[2]] == [(3, "build", True)]
    calls.clear()
    stage.run_range(Settings(data_dir=tmp_path), days)
    assert not any(call[2] for call in calls) and len(calls) == 9


@pytest.mark.parametrize("offline_store, released", [("file", True), ("spark", False)])
def test_spark_is_released_only_when_the_training_set_does_not_join_through_it(monkeypatch, tmp_path, offline_store,
                                                                                released):
    """With `offline_store: spark`, Feast's point-in-time join runs on the process's Spark session: releasing it
    would make Feast start a JVM of its own, without our settings. The build's Spark part is stubbed here."""
    from datetime import date
    from types import SimpleNamespace

    import features.spark.build as spark_build
    import features.spark.session as session
    import features.training_set as training_set

    stopped, order = [], []
    monkeypatch.setattr(session, "spark_session", lambda settings: None)
    monkeypatch.setattr(session, "stop_spark_session", lambda: stopped.append(True))
    monkeypatch.setattr(spark_build, "build_day", lambda spark, paths, day: SimpleNamespace(tables={}))

    class Reached(Exception):
        pass

    def training(*args, **kwargs):
        order.append(("training set", bool(stopped)))
        raise Reached

    monkeypatch.setattr(training_set, "build_training_set", training)
    with pytest.raises(Reached):
        build_features(Settings(data_dir=tmp_path, offline_store=offline_store), date(2026, 1, 1), release_spark=True)
    assert order == [("training set", released)]
