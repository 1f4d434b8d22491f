"""Point-in-time correctness: no feature sees its own day, and a backfilled day equals one built alone."""

from __future__ import annotations

import shutil
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from features import contract
from features.spark.build import build_day
from features.spark.session import spark_session
from features.store import write_offline_partition
from features.training_set import build_training_set
from rankflow.config import Settings
from rankflow.paths import DataPaths, atomic_directory

DAY1, DAY2 = date(2026, 3, 1), date(2026, 3, 2)
UTC = timezone.utc


def _write(paths: DataPaths, table: str, day: date, frame: pa.Table) -> None:
    with atomic_directory(paths.raw_partition(table, day)) as staging:
        contract.write_partition(staging, frame)


def planted_raw_zone(root: Path) -> DataPaths:
    """Two days. Member 1 applies to job 10 at DAY1 23:59:59.999999 (must be seen by DAY2's row) and to
    job 11 at DAY2 00:00:00 (its own label: must not be seen). Members 2..6 add background traffic."""
    paths = DataPaths(root)
    schema = contract.RawSchema(
        members=contract.EntitySchema(id="member_id", timestamp="signup_ts", categorical=("industry",),
                                      numeric=("years_experience",), multi_valued={"skills": "|"}),
        items=contract.EntitySchema(id="item_id", timestamp="posted_ts", categorical=("industry", "seniority"),
                                    multi_valued={"skills": "|"}),
        events=contract.EventSchema(id="event_id", member="member_id", item="item_id", timestamp="ts",
                                    label="label", weight="weight", context=("position",)))
    schema.write(paths)
    start = datetime(2026, 2, 1, tzinfo=UTC)
    members = pa.table({"member_id": pa.array(range(1, 7), pa.int64()), "signup_ts": pa.array([start] * 6, contract.TIMESTAMP_TYPE),
                        "industry": ["software"] * 6, "years_experience": [3.0] * 6, "skills": [["python"]] * 6},
                       schema=contract.members_arrow_schema(schema.members))
    items = pa.table({"item_id": pa.array(range(10, 16), pa.int64()), "posted_ts": pa.array([start] * 6, contract.TIMESTAMP_TYPE),
                      "industry": ["software", "finance", "software", "finance", "software", "finance"],
                      "seniority": ["mid"] * 6, "skills": [["python", "sql"]] * 6},
                     schema=contract.items_arrow_schema(schema.items))
    _write(paths, "members", date(2026, 2, 1), members)
    _write(paths, "items", date(2026, 2, 1), items)
    end_day1 = datetime.combine(DAY2, datetime.min.time(), tzinfo=UTC)
    plan = {
        DAY1: [(1, 10, end_day1 - timedelta(microseconds=1), 1)]
              + [(m, 12 + m % 3, end_day1 - timedelta(hours=m), m % 2) for m in range(2, 7)],
        DAY2: [(1, 11, end_day1, 1)] + [(m, 12 + m % 3, end_day1 + timedelta(hours=m), 0) for m in range(2, 7)],
    }
    for day, rows in plan.items():
        rows = sorted(rows, key=lambda r: r[2])
        base = 1000 if day == DAY1 else 2000
        events = pa.table({
            "event_id": pa.array([base + i for i in range(len(rows))], pa.int64()),
            "member_id": pa.array([r[0] for r in rows], pa.int64()), "item_id": pa.array([r[1] for r in rows], pa.int64()),
            "ts": pa.array([r[2] for r in rows], contract.TIMESTAMP_TYPE), "label": pa.array([r[3] for r in rows], pa.int8()),
            "weight": pa.array([1.0] * len(rows), pa.float32()), "position": pa.array(range(len(rows)), pa.int64())},
            schema=contract.events_arrow_schema({"position": pa.int64()}))
        _write(paths, "events", day, events)
    return paths


def _build_and_write(settings: Settings, day: date) -> dict[str, pd.DataFrame]:
    built = build_day(spark_session(settings), settings.paths, day)
    for table, frame in built.tables.items():
        write_offline_partition(settings.paths, table, day, frame)
    return built.tables


def test_planted_label_never_leaks_into_its_own_training_row(tmp_path):
    settings = Settings(data_dir=tmp_path)
    planted_raw_zone(tmp_path)
    _build_and_write(settings, DAY1)
    day2_tables = _build_and_write(settings, DAY2)
    rows, _ = build_training_set(settings, DAY2)
    rows = rows.to_pandas()
    planted = rows[rows["event_id"] == 2000].iloc[0]
    assert planted["member_id"] == 1 and planted["label"] == 1
    # Exactly the DAY1 apply one microsecond before midnight, not the row's own apply at midnight.
    assert planted["m_impressions_1d"] == 1 and planted["m_applies_1d"] == 1
    assert planted["m_applies_28d"] == 1
    assert planted["m_days_since_apply"] == pytest.approx(1e-6 / 86_400, rel=1e-3)  # 1 us, not 0 (own apply)
    # Member 1 never saw a finance job before DAY2: the affinity for job 11 (finance) is the member's rate.
    assert planted["x_affinity_industry"] == pytest.approx(planted["m_rate_28d"])
    # Built one day later, the same counters do include the event (so the test can tell the two apart).
    member1 = day2_tables["member_features"].set_index("member_id").loc[1]
    assert member1["m_applies_28d"] == 2 and member1["m_applies_1d"] == 1


def _comparable(frame: pd.DataFrame) -> pd.DataFrame:
    # created_ts is the wall-clock build time by design (Feast dedupes same-instant rows with it).
    return frame.drop(columns=["created_ts"])


def _assert_frames_identical(left: pd.DataFrame, right: pd.DataFrame) -> None:
    left, right = _comparable(left), _comparable(right)
    assert list(left.columns) == list(right.columns)
    assert len(left) == len(right)
    for column in left.columns:
        a, b = left[column].to_numpy(), right[column].to_numpy()
        if a.dtype == object:
            assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b)), column
        else:
            assert np.array_equal(a, b), column


def test_backfill_in_order_equals_day_built_alone(tiny_data_dir, tmp_path):
    in_order, alone = tmp_path / "in_order", tmp_path / "alone"
    for target in (in_order, alone):
        shutil.copytree(tiny_data_dir, target)
    days = contract.raw_days(DataPaths(in_order))
    last = days[2]
    modes = []
    for day in days[:3]:
        built = build_day(spark_session(Settings(data_dir=in_order)), DataPaths(in_order), day)
        modes.append(built.window_modes["member"])
    alone_built = build_day(spark_session(Settings(data_dir=alone)), DataPaths(alone), last)
    assert modes == ["from_dailies", "incremental", "incremental"]
    assert alone_built.window_modes == {"member": "from_dailies", "job": "from_dailies", "affinity": "from_dailies"}
    assert set(built.tables) == set(alone_built.tables) == {"member_features", "job_features", "member_affinities"}
    for table in built.tables:
        _assert_frames_identical(built.tables[table], alone_built.tables[table])
    # The windows really moved: some 7-day counts exceed the 1-day ones.
    members = built.tables["member_features"]
    assert (members["m_impressions_7d"] > members["m_impressions_1d"]).any()
