"""The one path helper: where every zone of a rankflow data directory lives.

Layout (all under one data directory, so several data sets can live side by side):

    raw/schema.yaml                      column roles of the raw tables (written by generate/ingest)
    raw/{members,items,events}/dt=D/     raw zone, Parquet, partitioned by arrival / event date
    truth/                               synthetic ground truth (generator only)
    features/<table>/dt=D/               Spark feature output and personalisation outputs (Feast sources)
    feast/                               the rendered Feast repo: feature_store.yaml, registry, online store
    models/                              BentoML model store (BENTOML_HOME) and model states
    reports/                             validation results, Data Docs, training reports, benchmarks
    quarantine/<zone>/dt=D/              data that failed validation, kept aside with its report
"""

from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Iterator


PART_FILE = "part-0.parquet"  # the one data file of every dt=D partition


def dt_partition(day: date) -> str:
    """The Hive-style partition folder name for a logical date."""
    return f"dt={day.isoformat()}"


def partition_days(directory: Path) -> list[date]:
    """The logical dates of the `dt=YYYY-MM-DD` partitions under a table folder, oldest first."""
    if not directory.is_dir():
        return []
    days = []
    for child in directory.iterdir():
        if child.is_dir() and child.name.startswith("dt=") and (child / PART_FILE).exists():
            days.append(date.fromisoformat(child.name[3:]))
    return sorted(days)


@dataclass(frozen=True)
class DataPaths:
    """Named locations inside one data directory."""

    root: Path

    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def raw_schema(self) -> Path:
        return self.raw / "schema.yaml"

    def raw_table(self, table: str) -> Path:
        """`table` is one of members, items, events."""
        return self.raw / table

    def raw_partition(self, table: str, day: date) -> Path:
        return self.raw_table(table) / dt_partition(day)

    @property
    def truth(self) -> Path:
        return self.root / "truth"

    @property
    def features(self) -> Path:
        return self.root / "features"

    def feature_table(self, table: str) -> Path:
        return self.features / table

    def feature_partition(self, table: str, day: date) -> Path:
        return self.feature_table(table) / dt_partition(day)

    @property
    def feast(self) -> Path:
        return self.root / "feast"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def bentoml_home(self) -> Path:
        return self.models / "bentoml"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    def quarantine(self, zone: str, day: date) -> Path:
        return self.root / "quarantine" / zone / dt_partition(day)

    @property
    def run(self) -> Path:
        """Pid files, logs and sockets of services rankflow starts (airflow, serve)."""
        return self.root / "run"


@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Write a directory aside, then swap it into place; on error the old one is untouched.

    Yields a temporary sibling directory. On success the old `target` (if any) is moved away,
    the new one renamed in, and the old one deleted: readers see either the old or the new
    content, never a half-written one.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    backup = None
    if target.exists():
        backup = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(target, backup)
    os.replace(staging, target)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def atomic_write_bytes(target: Path, payload: bytes) -> None:
    """Write a file aside and rename it into place."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.write_bytes(payload)
    os.replace(tmp, target)
