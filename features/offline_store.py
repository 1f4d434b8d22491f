"""Feast's file (dask) offline store, reading only the partitions a point-in-time join can use.

A feature table is one partition per day, dt=d, every row stamped with the end of d (d+1 00:00 UTC;
features.spark.build). Feast's file offline store reads every partition of a view for every
`get_historical_features` call, merges each entity row with all of its key's rows, and keeps the newest
stamped at or before the event: the work grows with the days stored, and a backfill of N days costs N^2.

Views tagged `rankflow.snapshot: daily` (features/repo/definitions.py) are daily snapshots: the partition of
day d has a row for every entity known by the end of d (their tables are built from every known member or
job, not from the day's events), so an entity with any row stamped at or before t has one in the newest
partition stamped at or before t. For those views this store hands Feast the one partition that can answer
an entity frame, when one can: its events all fall after the newest partition's stamp and before any later
partition's (every training set of one day does). The join is Feast's own, on that partition; any other
view, frame or source (several days, remote paths) goes to Feast's store unchanged.

A view may instead become a snapshot from some day on (`meta_embedding`, whose early partitions hold only that
day's members): tagged `rankflow.snapshot_marked: "true"` as well, it is narrowed only to a partition whose
Parquet footer carries the snapshot mark (`mark_snapshot`); an older, unmarked partition goes to Feast's store.

feature_store.yaml names it (`offline_store: type: features.offline_store.SnapshotFileOfflineStore`, written
by features.store for `offline_store = "file"`), and Feast finds this module's Config class by that name.
"""

from __future__ import annotations

import copy
from datetime import date
from pathlib import Path
from typing import Literal

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from feast import FileSource
from feast.infra.offline_stores.dask import DaskOfflineStore, DaskOfflineStoreConfig

from features.contract import PART_FILE, end_of_day, partition_days
from rankflow.paths import dt_partition

SNAPSHOT_TAG = "rankflow.snapshot"
MARKED_TAG = "rankflow.snapshot_marked"  # "true": only partitions whose footer has SNAPSHOT_MARK are snapshots
SNAPSHOT_MARK = b"rankflow.snapshot"
EVENT_TIMESTAMP = "event_timestamp"  # Feast's default entity-frame timestamp column, the one rankflow uses


class SnapshotFileOfflineStoreConfig(DaskOfflineStoreConfig):
    """Feast's file offline store settings; the type names this module's store."""

    type: Literal["features.offline_store.SnapshotFileOfflineStore"] = "features.offline_store.SnapshotFileOfflineStore"


def _stamp(day: date) -> pd.Timestamp:
    return pd.Timestamp(end_of_day(day))


def answering_partition(days: list[date], first_event: pd.Timestamp, last_event: pd.Timestamp) -> date | None:
    """The one partition whose rows a point-in-time join of events in [first, last] can pick, or None.

    None when no partition is stamped at or before the first event, or when one is stamped after the
    first event and at or before the last (then two partitions answer different events).
    """
    before = [d for d in days if _stamp(d) <= first_event]
    if not before or any(first_event < _stamp(d) <= last_event for d in days):
        return None
    return before[-1]


def mark_snapshot(table: pa.Table) -> pa.Table:
    """`table` with the snapshot mark in its schema metadata (kept in the Parquet footer)."""
    return table.replace_schema_metadata({**(table.schema.metadata or {}), SNAPSHOT_MARK: b"daily"})


def is_marked_snapshot(partition: Path) -> bool:
    """Whether the partition's part file was written with `mark_snapshot` (reads the footer only)."""
    part = partition / PART_FILE
    return part.is_file() and (pq.read_schema(part).metadata or {}).get(SNAPSHOT_MARK) == b"daily"


def _narrowed(view, entity_df, repo_path: Path | None):
    """`view` reading its one answering partition, or `view` itself when it cannot be narrowed."""
    source = view.batch_source
    if view.tags.get(SNAPSHOT_TAG) != "daily" or not isinstance(source, FileSource):
        return view
    if not isinstance(entity_df, pd.DataFrame) or EVENT_TIMESTAMP not in entity_df.columns or entity_df.empty:
        return view
    uri = FileSource.get_uri_for_file_path(repo_path, source.path) if repo_path else source.path
    table = Path(str(uri))
    if "://" in str(uri) or not table.is_dir():
        return view
    times = pd.to_datetime(entity_df[EVENT_TIMESTAMP], utc=True)
    day = answering_partition(partition_days(table), times.min(), times.max())
    if day is None:
        return view
    if view.tags.get(MARKED_TAG) == "true" and not is_marked_snapshot(table / dt_partition(day)):
        return view
    narrowed = copy.copy(view)
    narrowed.batch_source = FileSource(
        name=source.name, path=f"{source.path.rstrip('/')}/{dt_partition(day)}",
        timestamp_field=source.timestamp_field, created_timestamp_column=source.created_timestamp_column,
        field_mapping=source.field_mapping, file_format=source.file_format,
    )
    return narrowed


class SnapshotFileOfflineStore(DaskOfflineStore):
    """DaskOfflineStore whose historical retrieval reads one partition of each daily-snapshot view (module doc)."""

    @staticmethod
    def get_historical_features(config, feature_views, feature_refs, entity_df, registry, project,
                                full_feature_names=False, **kwargs):
        repo_path = Path(config.repo_path) if config.repo_path else None
        views = [_narrowed(view, entity_df, repo_path) for view in feature_views]
        return DaskOfflineStore.get_historical_features(config, views, feature_refs, entity_df, registry, project,
                                                        full_feature_names, **kwargs)
