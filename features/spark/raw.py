"""Reading the raw zone into Spark: one day's events, and the members / jobs known by the end of a day."""

from __future__ import annotations

from datetime import date

from pyspark.sql import DataFrame, SparkSession

from features.contract import PART_FILE, partition_days
from rankflow.paths import DataPaths, dt_partition


def events_of_day(spark: SparkSession, paths: DataPaths, day: date) -> DataFrame | None:
    """Day D's events (ts inside D by the raw contract, checked by validation), or None if D has none."""
    path = paths.raw_partition("events", day) / PART_FILE
    return spark.read.parquet(str(path)) if path.exists() else None


def known_by(spark: SparkSession, paths: DataPaths, table: str, day: date) -> DataFrame:
    """Members or items that arrived on or before `day` (partitions dt <= day)."""
    days = [d for d in partition_days(paths.raw_table(table)) if d <= day]
    if not days:
        raise FileNotFoundError(f"{paths.raw_table(table)}: no partition on or before {day}")
    files = [str(paths.raw_table(table) / dt_partition(d) / PART_FILE) for d in days]
    return spark.read.parquet(*files)
