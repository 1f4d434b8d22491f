"""One logical day of Spark feature jobs: raw zone -> member, job and affinity tables as of the end of D.

Order of work for day D (only events of days <= D, i.e. ts < end of D, are read):
1. the daily aggregate of D (and of any earlier raw day that has none yet, for a day built alone);
2. window states of D: D-1's state + D - the leaving days when D-1 has a state, else from dailies;
3. the three feature tables, stamped event_timestamp = end of D (D+1 00:00 UTC) and created_ts.
The tables come back as pandas frames: validation runs on them before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

import pandas as pd
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from features.contract import PART_FILE, end_of_day, load_raw_schema, raw_days
from features.spark.affinities import AFFINITY_SPEC, affinity_attributes, attribute_events, member_affinities
from features.spark.job_features import job_features
from features.spark.member_features import member_features
from features.spark.raw import events_of_day, known_by
from features.spark.windows import WindowSpec, WindowStore, applies_col, daily_counts, impressions_col
from rankflow.paths import DataPaths

MEMBER_SPEC = WindowSpec(name="member", keys=("member_id",))
JOB_SPEC = WindowSpec(name="job", keys=("item_id",))

MEMBER_TABLE = "member_features"
JOB_TABLE = "job_features"
AFFINITY_TABLE = "member_affinities"
FEATURE_TABLES = (MEMBER_TABLE, JOB_TABLE, AFFINITY_TABLE)
ENTITY_OF_TABLE = {MEMBER_TABLE: "member_id", JOB_TABLE: "item_id", AFFINITY_TABLE: "member_id"}


@dataclass(frozen=True)
class FeatureConfig:
    """Smoothing and encoding choices of the feature jobs; the defaults suit the synthetic marketplace."""

    prior_strength: float = 20.0          # pseudo-impressions behind every smoothed rate
    affinity_strength: float = 10.0       # pseudo-impressions behind every affinity
    default_prior_rate: float = 0.05      # global apply rate when the 28-day window is empty
    recency_cap_days: float = 365.0       # days-since-apply of an entity that never had an apply
    affinity_attributes: tuple[str, ...] = ("industry", "seniority", "skills")


@dataclass
class DayBuild:
    """What building one day produced: pandas tables (not yet written) and how the windows were made."""

    day: date
    tables: dict[str, pd.DataFrame]
    window_modes: dict[str, str] = field(default_factory=dict)
    events: int = 0


def _write_dailies(spark: SparkSession, paths: DataPaths, day: date, attributes: tuple[str, ...],
                   stores: dict[str, WindowStore], items: DataFrame, force: bool) -> None:
    """Daily aggregates of one raw day (recomputed when forced: the day being (re)built)."""
    if not force and all(store.has_daily(day) for store in stores.values()):
        return
    events = events_of_day(spark, paths, day)
    if events is None:
        return
    events = events.select("member_id", "item_id", "ts", F.col("label").cast("int").alias("label")).cache()
    schema = load_raw_schema(paths)
    stores["member"].write_daily(day, daily_counts(events, MEMBER_SPEC))
    stores["job"].write_daily(day, daily_counts(events, JOB_SPEC))
    if attributes:
        per_value = attribute_events(events, items, schema.items, attributes)
        stores["affinity"].write_daily(day, daily_counts(per_value, AFFINITY_SPEC))
    events.unpersist()


def build_day(spark: SparkSession, paths: DataPaths, day: date, config: FeatureConfig = FeatureConfig()) -> DayBuild:
    """Build day D's feature tables (window state written under features/_windows/, tables returned)."""
    schema = load_raw_schema(paths)
    event_days = [d for d in raw_days(paths, "events") if d <= day]
    if day not in event_days:
        raise FileNotFoundError(f"{paths.raw_partition('events', day)}: no raw events for {day}")
    first_day = event_days[0]
    attributes = affinity_attributes(schema.items, config.affinity_attributes)
    stores = {"member": WindowStore(spark, paths, MEMBER_SPEC), "job": WindowStore(spark, paths, JOB_SPEC),
              "affinity": WindowStore(spark, paths, AFFINITY_SPEC)}
    members = known_by(spark, paths, "members", day).cache()
    items = known_by(spark, paths, "items", day).cache()

    for raw_day in event_days:
        _write_dailies(spark, paths, raw_day, attributes, stores, items, force=raw_day == day)
    events = pq.read_metadata(paths.raw_partition("events", day) / PART_FILE).num_rows
    modes = {}
    member_state, modes["member"] = stores["member"].build_state(day, first_day)
    job_state, modes["job"] = stores["job"].build_state(day, first_day)

    # One pass for the day's totals: the global prior rate and the popularity scale.
    totals = (items.select("item_id").join(job_state, on="item_id", how="left")
              .agg(F.count(F.lit(1)), F.sum(impressions_col(7)), F.sum(impressions_col(28)), F.sum(applies_col(28)))
              .collect()[0])
    known_jobs, impressions_7d, impressions_28d, applies_28d = (value or 0 for value in totals)
    prior = applies_28d / impressions_28d if impressions_28d else config.default_prior_rate
    mean_7d = impressions_7d / known_jobs if known_jobs else 0.0
    as_of = F.lit(end_of_day(day).replace(tzinfo=None)).cast("timestamp")  # session time zone is UTC

    member_frame = member_features(members, member_state, schema.members, as_of, prior,
                                   config.prior_strength, config.recency_cap_days).cache()
    job_frame = job_features(items, job_state, schema.items, as_of, prior,
                             config.prior_strength, config.recency_cap_days, mean_7d)
    tables = {MEMBER_TABLE: member_frame, JOB_TABLE: job_frame}
    if attributes:
        affinity_state, modes["affinity"] = stores["affinity"].build_state(day, first_day)
        tables[AFFINITY_TABLE] = member_affinities(members, affinity_state,
                                                   member_frame.select("member_id", "m_rate_28d"),
                                                   attributes, config.affinity_strength)
    # created_ts is the end of the logical day, not the wall clock: a re-run replaces the day's partition
    # atomically (never a second version beside it), and a deterministic stamp makes re-runs byte-identical.
    created = pd.Timestamp(end_of_day(day)).as_unit("us")
    frames = {name: _stamped(frame, ENTITY_OF_TABLE[name], day, created) for name, frame in tables.items()}
    member_frame.unpersist()
    members.unpersist()
    items.unpersist()
    return DayBuild(day=day, tables=frames, window_modes=modes, events=events)


def _stamped(frame: DataFrame, entity: str, day: date, created: pd.Timestamp) -> pd.DataFrame:
    """Spark -> pandas, sorted by entity, stamped with the day's validity instant (event and created)."""
    out = frame.toPandas().sort_values(entity, kind="stable").reset_index(drop=True)
    out[entity] = out[entity].astype("int64")
    out["event_timestamp"] = pd.Timestamp(end_of_day(day)).as_unit("us")
    out["created_ts"] = created.as_unit("us")
    return out
