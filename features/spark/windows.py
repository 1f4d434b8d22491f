"""Incremental sliding-window counts: day D's window = day D-1's window + the day entering - the day leaving.

For an entity key k (a member, a job, or a member x job-attribute value) and a window of w days,

    impressions_w(k, D) = sum_{d = D-w+1}^{D} n(k, d),    applies_w(k, D) = sum_{d = D-w+1}^{D} a(k, d),

where n(k, d), a(k, d) are the impressions and applies of k on day d (the *daily aggregate*, computed
once from day d's raw events and kept). Counts are integers, so the running update

    S_w(k, D) = S_w(k, D-1) + n(k, D) - n(k, D-w)

is exact: a range builds each day from the previous day's state and three daily aggregates instead of
re-reading 28 days of events, and a day built alone (summing its last w daily aggregates) gives
bit-identical state. `last_apply_ts` is a running maximum, max(last(D-1), last apply on D).
Only events of days <= D enter day D's state (events of D have ts < end of D by the raw contract).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from rankflow.paths import DataPaths, atomic_directory, dt_partition

WINDOWS: tuple[int, ...] = (1, 7, 28)


def impressions_col(window: int) -> str:
    return f"impressions_{window}d"


def applies_col(window: int) -> str:
    return f"applies_{window}d"


@dataclass(frozen=True)
class WindowSpec:
    """One family of windowed counts: which keys, which windows, whether to track the last apply."""

    name: str
    keys: tuple[str, ...]
    windows: tuple[int, ...] = WINDOWS
    track_last_apply: bool = True

    @property
    def count_columns(self) -> list[str]:
        return [c for w in self.windows for c in (impressions_col(w), applies_col(w))]


def daily_counts(events: DataFrame, spec: WindowSpec) -> DataFrame:
    """n(k, d), a(k, d) (and the day's last apply time) from one day's events keyed by `spec.keys`."""
    aggregates = [
        F.count(F.lit(1)).cast("long").alias("impressions"),
        F.sum(F.col("label").cast("long")).cast("long").alias("applies"),
    ]
    if spec.track_last_apply:
        aggregates.append(F.max(F.when(F.col("label") == 1, F.col("ts"))).alias("last_apply_ts"))
    return events.groupBy(*spec.keys).agg(*aggregates)


class WindowStore:
    """Daily aggregates and window states of one WindowSpec, kept under features/_windows/<name>/."""

    def __init__(self, spark: SparkSession, paths: DataPaths, spec: WindowSpec):
        self.spark = spark
        self.spec = spec
        self.root: Path = paths.features / "_windows" / spec.name

    def _daily_path(self, day: date) -> Path:
        return self.root / "daily" / dt_partition(day)

    def _state_path(self, day: date) -> Path:
        return self.root / "state" / dt_partition(day)

    def has_daily(self, day: date) -> bool:
        return (self._daily_path(day) / "_SUCCESS").exists()

    def has_state(self, day: date) -> bool:
        return (self._state_path(day) / "_SUCCESS").exists()

    def write_daily(self, day: date, daily: DataFrame) -> None:
        _write(daily, self.spec.keys, self._daily_path(day))

    def read_daily(self, day: date) -> DataFrame | None:
        return _read(self.spark, self._daily_path(day)) if self.has_daily(day) else None

    def read_state(self, day: date) -> DataFrame:
        return _read(self.spark, self._state_path(day))

    def build_state(self, day: date, first_day: date) -> tuple[DataFrame, str]:
        """Window state of `day` (daily aggregates of every day in [first_day, day] must exist).

        Returns the state (also written) and how it was made: "incremental" from day-1's state,
        or "from_dailies" when day-1 has no state (a day built alone, or the first day).
        """
        previous = day - timedelta(days=1)
        if previous >= first_day and self.has_state(previous):
            state, how = self._advance(day, self.read_state(previous)), "incremental"
        else:
            state, how = self._from_dailies(day, first_day), "from_dailies"
        _write(state, self.spec.keys, self._state_path(day))
        return self.read_state(day), how

    def _signed(self, daily: DataFrame, sign: int, windows: tuple[int, ...], with_last: bool) -> DataFrame:
        """A daily aggregate as a contribution of +-counts to the given windows (0 to the others)."""
        columns = [F.col(k) for k in self.spec.keys]
        for w in self.spec.windows:
            inside = w in windows
            columns.append((F.col("impressions") * sign if inside else F.lit(0)).cast("long").alias(impressions_col(w)))
            columns.append((F.col("applies") * sign if inside else F.lit(0)).cast("long").alias(applies_col(w)))
        if self.spec.track_last_apply:
            last = F.col("last_apply_ts") if with_last else F.lit(None).cast("timestamp")
            columns.append(last.alias("last_apply_ts"))
        return daily.select(*columns)

    def _advance(self, day: date, previous_state: DataFrame) -> DataFrame:
        parts = [previous_state.select(*self.spec.keys, *self.spec.count_columns,
                                       *(["last_apply_ts"] if self.spec.track_last_apply else []))]
        entering = self.read_daily(day)
        parts.append(self._signed(entering, +1, self.spec.windows, with_last=True))
        for w in self.spec.windows:
            leaving = self.read_daily(day - timedelta(days=w))
            if leaving is not None:
                parts.append(self._signed(leaving, -1, (w,), with_last=False))
        return self._combine(parts)

    def _from_dailies(self, day: date, first_day: date) -> DataFrame:
        longest = max(self.spec.windows)
        # The running maximum of the last apply needs every earlier day; plain counts only the window.
        current = first_day if self.spec.track_last_apply else max(first_day, day - timedelta(days=longest - 1))
        parts = []
        while current <= day:
            daily = self.read_daily(current)
            if daily is not None:
                age = (day - current).days
                windows = tuple(w for w in self.spec.windows if age < w)
                parts.append(self._signed(daily, +1, windows, with_last=True))
            current += timedelta(days=1)
        if not parts:
            raise FileNotFoundError(f"{self.root}/daily: no daily aggregates between {first_day} and {day}")
        return self._combine(parts)

    def _combine(self, parts: list[DataFrame]) -> DataFrame:
        union = parts[0]
        for part in parts[1:]:
            union = union.unionByName(part)
        aggregates = [F.sum(c).cast("long").alias(c) for c in self.spec.count_columns]
        if self.spec.track_last_apply:
            aggregates.append(F.max("last_apply_ts").alias("last_apply_ts"))
        state = union.groupBy(*self.spec.keys).agg(*aggregates)
        # Keys that left every window (and never applied) carry no information: drop them.
        alive = F.lit(False)
        for c in self.spec.count_columns:
            alive = alive | (F.col(c) != 0)
        if self.spec.track_last_apply:
            alive = alive | F.col("last_apply_ts").isNotNull()
        return state.where(alive)


def _write(frame: DataFrame, keys: tuple[str, ...], target: Path) -> None:
    """One Parquet file per partition of the aggregation that made the frame (hashed by the keys, so the same
    rows give the same files), each sorted by the keys. Not coalesce(1): that ran the aggregation's last step,
    the sort and the write as one task, on one core (a 100x day's affinity daily and state: about 14 s each
    in that task). Not orderBy: its range partitioning samples its input in a job of its own first."""
    with atomic_directory(target) as staging:
        frame.sortWithinPartitions(*keys).write.mode("overwrite").parquet(str(staging))


_SPARK_SCHEMA_KEY = b"org.apache.spark.sql.parquet.row.metadata"


def _read(spark: SparkSession, directory: Path) -> DataFrame:
    """A window folder written by `_write`, with the schema Spark stored in its footer: reading it from
    the driver here spares the schema-inference job Spark would run for every read."""
    files = sorted(directory.glob("*.parquet"))
    metadata = (pq.read_schema(files[0]).metadata or {}) if files else {}
    if _SPARK_SCHEMA_KEY not in metadata:  # not written by Spark: let Spark infer it
        return spark.read.parquet(str(directory))
    return spark.read.schema(StructType.fromJson(json.loads(metadata[_SPARK_SCHEMA_KEY]))).parquet(str(directory))
