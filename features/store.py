"""The one way to reach the Feast feature store, and the one way to write a feature table.

`feature_store(settings)` renders the declarations of `features/repo/` into `<data_dir>/feast/` with a
`feature_store.yaml` made from Settings (registry, SQLite or Redis online store, file or Spark offline
store), applies them when they changed, and returns a `feast.FeatureStore`. Any process can then open
`FeatureStore(repo_path=<data_dir>/feast)` on its own. Stages call it before their first write, so it checks
what would otherwise fail half-way through a stage: a SQLite online store that is not a readable database
stops it with the file's name. `feast apply` runs against a copy of registry.db that is swapped in whole (Feast
rewrites the file in place: a kill mid-write left a truncated registry), and a registry.db that is not what the
last apply wrote, or cannot be parsed at all, is applied again (the registry holds only derived data: the
declarations, which are re-applied, and Feast's bookkeeping).

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
import os
import shutil
import sqlite3
import sys
import time
import uuid
from contextlib import closing, suppress
from datetime import date
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from features.contract import PART_FILE, parquet_bytes
from features.materialize import WRITE_BATCH_ROWS, OnlineWrite, unreadable_partition
from rankflow.config import Settings
from rankflow.errors import UnreadableInput
from rankflow.logs import get_logger
from rankflow.paths import DataPaths, atomic_directory, atomic_write_bytes

log = get_logger(__name__)

PROJECT = "rankflow"
TEMPLATE = Path(__file__).resolve().parent / "repo"
DECLARATION_FILES = ("definitions.py", ".feastignore")
REGISTRY_FILE = "registry.db"
SQLITE_ONLINE_FILE = "online_store.db"
REBUILD_SQLITE_ONLINE_STORE = ("move it away (the next command creates an empty one), then re-materialise the days "
                               "it should serve (`rankflow features materialize --date D`) and re-run "
                               "`rankflow personalise --date D` and `rankflow meta --date D` for the newest day")
_APPLIED_MARK = ".applied"  # the fingerprint applied, then the sha256 of the registry.db that apply wrote


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
        online = {"type": "sqlite", "path": SQLITE_ONLINE_FILE}
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
        "registry": {"registry_type": "file", "path": REGISTRY_FILE, "cache_ttl_seconds": 60},
        "online_store": online,
        "offline_store": offline,
        "entity_key_serialization_version": 3,
    }


def _yaml_text(settings: Settings) -> str:
    return yaml.safe_dump(feature_store_yaml(settings), sort_keys=False)


def render_repo(settings: Settings) -> Path:
    """Write the runnable Feast repo into <data_dir>/feast/ (for the `feast` CLI run there); return its path.

    rankflow's own processes never read feature_store.yaml back: each builds its config from its Settings
    (feature_store), so two processes on one data dir with different stores (`rankflow serve --online-store
    redis://...` beside a pipeline on SQLite) each get their own, whichever rendered the file last.
    """
    repo = settings.paths.feast
    repo.mkdir(parents=True, exist_ok=True)
    text = _yaml_text(settings)
    if not (repo / "feature_store.yaml").exists() or (repo / "feature_store.yaml").read_text() != text:
        atomic_write_bytes(repo / "feature_store.yaml", text.encode())
    for name in DECLARATION_FILES:
        payload = (TEMPLATE / name).read_bytes()
        if not (repo / name).exists() or (repo / name).read_bytes() != payload:
            atomic_write_bytes(repo / name, payload)
    return repo


def _fingerprint(settings: Settings) -> str:
    """What the registry was applied from: this process's config, the declarations and the raw schema."""
    digest = hashlib.sha256(_yaml_text(settings).encode())
    repo = settings.paths.feast
    for name in DECLARATION_FILES:
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
    try:
        spec.loader.exec_module(module)
    except yaml.YAMLError as error:  # feature_store.yaml is rendered just before: the raw schema is the suspect
        raw_schema = repo.parent / "raw" / "schema.yaml"
        raise ValueError(f"{raw_schema}: not readable YAML ({' '.join(str(error).split())}); the feature "
                         "declarations read it (`rankflow ingest` writes it)") from None
    kinds = (Entity, FeatureView, FeatureService)
    return [value for value in vars(module).values() if isinstance(value, kinds)]


_stores: dict[tuple, object] = {}


def check_online_store(settings: Settings) -> None:
    """Fail, naming the file, when the SQLite online store exists but is not a readable, whole database.

    Cheap enough for every call (the header and the schema table, never a scan of the file, which can be GBs):
    the stages call feature_store() before their first write, so a bad store stops them before they write
    anything. Redis: the CLI pings it (rankflow.commands.common.check_online_store_answers).
    """
    if settings.online_store != "sqlite":
        return
    path = settings.paths.feast / SQLITE_ONLINE_FILE
    if not path.exists():
        return
    remedy = f"it is the SQLite online store (derived data): {REBUILD_SQLITE_ONLINE_STORE}"
    try:
        with closing(sqlite3.connect(path)) as connection:
            # Page 1 and the schema pages; SQLite also compares the page count in the header with the file's size.
            connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError as error:
        if "locked" in str(error) or "busy" in str(error):
            return  # a long writer elsewhere: the write itself will wait for it
        raise UnreadableInput(f"{path}: cannot be opened as a SQLite database ({error}); {remedy}") from None
    except sqlite3.DatabaseError as error:
        raise UnreadableInput(f"{path}: not a readable SQLite database ({error}); {remedy}") from None


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else ""


def _registry_parses(path: Path) -> bool:
    from feast.protos.feast.core.Registry_pb2 import Registry as RegistryProto
    from google.protobuf.message import DecodeError

    try:
        RegistryProto.FromString(path.read_bytes())
    except DecodeError:
        return False
    return True


def _apply(settings: Settings, repo: Path) -> str:
    """`feast apply` of the rendered declarations into a copy of registry.db, swapped in whole; returns the
    new registry's sha256.

    Feast's file registry rewrites registry.db in place (FileRegistryStore._write_registry), so a kill during
    apply would leave half a file that every later command fails to parse. A registry that cannot be parsed
    is not copied: apply rebuilds it from the declarations.
    """
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

    registry = repo / REGISTRY_FILE
    for stale in repo.glob(f".{REGISTRY_FILE}.applying-*"):  # left by a killed apply; a live one is seconds old
        with suppress(FileNotFoundError):  # another process's, just swapped in
            if time.time() - stale.stat().st_mtime > 3600:
                stale.unlink()
    staging = repo / f".{REGISTRY_FILE}.applying-{uuid.uuid4().hex[:8]}"
    try:
        if registry.exists():
            if _registry_parses(registry):
                shutil.copyfile(registry, staging)
            else:
                log.warning("%s: cannot be parsed (an interrupted `feast apply`?): rebuilding it from the "
                            "declarations", registry)
        declared = feature_store_yaml(settings)
        config = RepoConfig(**{**declared, "registry": {**declared["registry"], "path": staging.name}})
        config.repo_path = repo
        log.info("feast apply: %s", repo)
        FeatureStore(repo_path=str(repo), config=config).apply(_declared_objects(repo))
        digest = _digest(staging)
        os.replace(staging, registry)
    finally:
        staging.unlink(missing_ok=True)
    return digest


def feature_store(settings: Settings):
    """The data dir's `feast.FeatureStore`, rendered and applied when the declarations changed.

    Raises ValueError naming the file when the SQLite online store is not a readable database (before any
    apply, so nothing is written); a registry.db that is not the one the last apply wrote is applied again.
    """
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

    from features import dask_tokens

    dask_tokens.install()  # Feast's file offline store runs on dask: fast hashes of our list columns

    key = (str(settings.data_dir.resolve()), settings.online_store, settings.offline_store)
    repo = render_repo(settings)
    check_online_store(settings)
    fingerprint = _fingerprint(settings)
    mark, registry = repo / _APPLIED_MARK, repo / REGISTRY_FILE
    applied_mark = mark.read_text().split("\n") if mark.exists() else []
    applied = applied_mark[:1] == [fingerprint] and registry.exists() and \
        (settings.online_store != "sqlite" or (repo / SQLITE_ONLINE_FILE).exists())  # apply creates its tables
    if key in _stores and applied:
        return _stores[key]
    # First use in this process: the registry must be the one apply wrote (a kill during Feast's own write of
    # it, or an older rankflow's in-place apply, leaves a truncated file that may even parse).
    if not (applied and applied_mark[1:2] == [_digest(registry)]):
        digest = _apply(settings, repo)
        atomic_write_bytes(mark, f"{fingerprint}\n{digest}".encode())
    config = RepoConfig(**feature_store_yaml(settings))  # this process's own, not the file another may rewrite
    config.repo_path = repo
    store = FeatureStore(repo_path=str(repo), config=config)
    _stores[key] = store
    return store


def read_offline_partition(paths: DataPaths, table: str, day: date,
                           columns: list[str] | None = None) -> pd.DataFrame | None:
    """One day's partition of a feature table (only `columns`, those it has, when given), or None when it
    was never written."""
    path = paths.feature_partition(table, day) / PART_FILE
    if not path.exists():
        return None
    try:
        if columns is not None:
            present = set(pq.read_schema(path).names)
            columns = [column for column in dict.fromkeys(columns) if column in present]
        return pd.read_parquet(path, columns=columns)
    except (pa.ArrowException, OSError) as error:
        raise unreadable_partition(path, error) from None


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
