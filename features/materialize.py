"""Push one day of the feature tables from the offline zone to the online store.

Our writer (`materialize_day`) reads the day's partition of each table and writes it through
`features.store.online_write` (Arrow -> Feast protos in batches, the no-rollback guard, then the online
store's own batch writer). Feast's stock `FeatureStore.materialize` does the same job by scanning the
offline store for the newest row per entity in a time range; `stock_materialize` runs it for the
benchmark (benchmarks/bench_features.py), which compares the two on the same data.
"""

from __future__ import annotations

import time
from datetime import date, timedelta

from features.spark.build import FEATURE_TABLES, end_of_day
from features.store import feature_store, online_write, read_offline_partition
from rankflow.config import Settings


def materialize_day(settings: Settings, day: date, tables: tuple[str, ...] = FEATURE_TABLES) -> dict:
    """Write day D's rows of every feature table into the online store; newer stored values are kept."""
    store = feature_store(settings)
    started = time.perf_counter()
    results = {}
    for table in tables:
        frame = read_offline_partition(settings.paths, table, day)
        if frame is None:
            raise FileNotFoundError(f"{settings.paths.feature_partition(table, day)}: build the day before "
                                    f"materialising it (`rankflow features build --date {day}`)")
        results[table] = online_write(store, table, frame).to_dict()
    seconds = time.perf_counter() - started
    rows = sum(r["written"] + r["skipped_older"] for r in results.values())
    return {"day": day.isoformat(), "tables": results, "rows": rows, "seconds": round(seconds, 3),
            "rows_per_second": round(rows / seconds, 1) if seconds else None}


def stock_materialize(settings: Settings, day: date, tables: tuple[str, ...] = FEATURE_TABLES) -> float:
    """Feast's own `materialize` over the day's validity instant; returns seconds taken."""
    store = feature_store(settings)
    instant = end_of_day(day)
    started = time.perf_counter()
    store.materialize(start_date=instant - timedelta(seconds=1), end_date=instant + timedelta(seconds=1),
                      feature_views=list(tables))
    return time.perf_counter() - started
