"""The one way to reach the Feast feature store, and the one way to write a feature table.

`feature_store(settings)` renders the declarations of `features/repo/` into `<data_dir>/feast/` with a
`feature_store.yaml` made from Settings (registry, SQLite or Redis online store, file or Spark offline
store), applies them when they changed, and returns a `feast.FeatureStore`. Any process can then open
`FeatureStore(repo_path=<data_dir>/feast)` on its own.

`write_features(settings, view, frame, day)` writes the offline partition atomically, then pushes the
rows to the online store through `online_write`, which never rolls a value back: the online store must
always hold the newest value (design.md), but Feast's SQLite store overwrites whatever it is given, so a
backfill of an old day would replace today's values with older ones. The writer (features.materialize)
reads the stored event time of every entity and drops the rows that are older (equal passes: re-running a
day replaces that day), on SQLite and on Redis alike, and writes the rest in Feast's own byte layout.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import sys
from datetime import date
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd
import pyarrow as pa
import yaml

from features.contract import PART_FILE, parquet_bytes
from features.materialize import WRITE_BATCH_ROWS, OnlineWrite
from rankflow.config import Settings
from rankflow.logs import get_logger
from rankflow.paths import DataPaths, atomic_directory, atomic_write_bytes

log = get_logger(__name__)

PROJECT = "rankflow"
TEMPLATE = Path(__file__).resolve().parent / "repo"
DECLARATION_FILES = ("definitions.py", ".feastignore")
_APPLIED_MARK = ".applied"


def redis_connection_string(url: str) -> str:
    """`redis://host:port/db` -> Feast's `host:port,db=N` (password kept when given)."""
    parsed = urlparse(url)
    if parsed.scheme not in ("redis", "rediss") or not parsed.hostname:
        raise ValueError(f"online store {url!r}: expected 'sqlite' or a URL like redis://localhost:6379/0")
    parts = [f"{parsed.hostname}:{parsed.port or 6379}"]
    db = (parsed.path or "/").strip("/")
    if db:
        if not db.isdigit():
            raise ValueError(f"online store {url!r}: the Redis database must be a number, got {db!r}")
        parts.append(f"db={db}")
    if parsed.password:
        parts.append(f"password={parsed.password}")
    if parsed.scheme == "rediss":
        parts.append("ssl=true")
    return ",".join(parts)


def feature_store_yaml(settings: Settings) -> dict:
    """The feature_store.yaml of a data dir, from Settings alone (paths relative to the repo)."""
    if settings.online_store == "sqlite":
        online = {"type": "sqlite", "path": "online_store.db"}
    else:
        online = {"type": "redis", "connection_string": redis_connection_string(settings.online_store)}
    if settings.offline_store == "file":  # Feast's file store, reading one partition of daily snapshots
        offline = {"type": "features.offline_store.SnapshotFileOfflineStore"}
    elif settings.offline_store == "spark":
        offline = {"type": "spark", "spark_conf": {"spark.master": settings.spark_master,
                                                   "spark.sql.session.timeZone": "UTC",
                                                   "spark.ui.enabled": "false",
                                                   "spark.sql.shuffle.partitions": "4"}}
    else:
        raise ValueError(f"offline_store {settings.offline_store!r}: expected 'file' or 'spark'")
    return {
        "project": PROJECT,
        "provider": "local",
        "registry": {"registry_type": "file", "path": "registry.db", "cache_ttl_seconds": 60},
        "online_store": online,
        "offline_store": offline,
        "entity_key_serialization_version": 3,
    }


def render_repo(settings: Settings) -> Path:
    """Write the runnable Feast repo into <data_dir>/feast/; return its path."""
    repo = settings.paths.feast
    repo.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(feature_store_yaml(settings), sort_keys=False)
    if not (repo / "feature_store.yaml").exists() or (repo / "feature_store.yaml").read_text() != text:
        atomic_write_bytes(repo / "feature_store.yaml", text.encode())
    for name in DECLARATION_FILES:
        payload = (TEMPLATE / name).read_bytes()
        if not (repo / name).exists() or (repo / name).read_bytes() != payload:
            atomic_write_bytes(repo / name, payload)
    return repo


def _fingerprint(settings: Settings) -> str:
    """What the registry was applied from: the rendered repo and the raw schema (attribute columns)."""
    digest = hashlib.sha256()
    repo = settings.paths.feast
    for name in ("feature_store.yaml", *DECLARATION_FILES):
        digest.update((repo / name).read_bytes())
    if settings.paths.raw_schema.exists():
        digest.update(settings.paths.raw_schema.read_bytes())
    return digest.hexdigest()


def _declared_objects(repo: Path) -> list:
    """Import the rendered definitions.py and collect what it declares."""
    from feast import Entity, FeatureService, FeatureView

    module_name = f"_rankflow_feast_definitions_{hashlib.sha1(str(repo).encode()).hexdigest()[:10]}"
    spec = importlib.util.spec_from_file_location(module_name, repo / "definitions.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    kinds = (Entity, FeatureView, FeatureService)
    return [value for value in vars(module).values() if isinstance(value, kinds)]


_stores: dict[tuple, object] = {}


def feature_store(settings: Settings):
    """The data dir's `feast.FeatureStore`, rendered and applied when the declarations changed."""
    from feast import FeatureStore

    from features import dask_tokens

    dask_tokens.install()  # Feast's file offline store runs on dask: fast hashes of our list columns

    key = (str(settings.data_dir.resolve()), settings.online_store, settings.offline_store)
    repo = render_repo(settings)
    fingerprint = _fingerprint(settings)
    mark = repo / _APPLIED_MARK
    applied = mark.exists() and mark.read_text() == fingerprint and (repo / "registry.db").exists()
    if key in _stores and applied:
        return _stores[key]
    store = FeatureStore(repo_path=str(repo))
    if not applied:
        log.info("feast apply: %s", repo)
        store.apply(_declared_objects(repo))
        atomic_write_bytes(mark, fingerprint.encode())
    _stores[key] = store
    return store


def read_offline_partition(paths: DataPaths, table: str, day: date) -> pd.DataFrame | None:
    """One day's partition of a feature table, or None when it was never written."""
    path = paths.feature_partition(table, day) / PART_FILE
    return pd.read_parquet(path) if path.exists() else None


def write_offline_partition(paths: DataPaths, table: str, day: date, frame: pd.DataFrame,
                            mark_snapshot: bool = False) -> Path:
    """features/<table>/dt=D/part-0.parquet, swapped in atomically (readers never see half a day).

    `mark_snapshot`: the footer says the partition holds every entity known by the end of D
    (features.offline_store.mark_snapshot).
    """
    from features.offline_store import mark_snapshot as marked

    missing = {"event_timestamp", "created_ts"} - set(frame.columns)
    if missing:
        raise ValueError(f"feature table {table} for {day}: missing column(s) {sorted(missing)}")
    target = paths.feature_partition(table, day)
    table_arrow = pa.Table.from_pandas(frame, preserve_index=False)
    if mark_snapshot:
        table_arrow = marked(table_arrow)
    with atomic_directory(target) as staging:
        (staging / PART_FILE).write_bytes(parquet_bytes(table_arrow))
    return target


def online_write(store, view: str, frame: pd.DataFrame, batch_rows: int = WRITE_BATCH_ROWS) -> OnlineWrite:
    """Push rows of one FeatureView to the online store, never replacing a newer stored value.

    Feast's exact layout, written vectorised (features.materialize explains the bytes and the guard).
    """
    from features.materialize import online_write as write

    return write(store, view, frame, batch_rows=batch_rows)


def write_features(settings: Settings, view: str, frame: pd.DataFrame, day: date,
                   snapshot: pd.DataFrame | None = None) -> dict:
    """Write one day of a FeatureView: offline partition (atomic), then the online store (never rolled back).

    `frame` holds the view's join key, its feature columns, `event_timestamp` (end of `day`) and `created_ts`.
    With `snapshot` (every entity's newest row at the end of `day`, `frame`'s rows included), the offline
    partition is that snapshot, marked as one, and the online store gets `frame` alone: the rows that changed.
    """
    store = feature_store(settings)
    partition = write_offline_partition(settings.paths, view, day, frame if snapshot is None else snapshot,
                                        mark_snapshot=snapshot is not None)
    result = online_write(store, view, frame)
    return {"partition": str(partition), **result.to_dict()}


def remove_rendered_repo(settings: Settings) -> None:
    """Delete <data_dir>/feast (registry and SQLite online store included); the next call re-renders it."""
    shutil.rmtree(settings.paths.feast, ignore_errors=True)
    _stores.clear()
