"""Damaged files under the feature store: each stops the command with the file's name, before anything is written.

A garbage or cut-off SQLite online store (feature_store() checks it before a stage writes), a registry.db cut off
by a kill during `feast apply` (rebuilt; our apply never leaves half a registry), and a cut-off feature partition
(found before the first table is written online).
"""

from __future__ import annotations

import logging
import signal
import sqlite3
import subprocess
import sys
from contextlib import closing
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features import store as store_module
from features.contract import PART_FILE, end_of_day
from features.materialize import _read_partition, materialize_day
from features.spark.build import FEATURE_TABLES
from features.store import (feature_store, online_write, read_offline_partition, write_features,
                            write_offline_partition)
from rankflow.config import Settings
from test_store import applied_copy, applied_repo, glmix_frame  # noqa: F401 (applied_repo: fixture)

DAY = date(2026, 1, 2)


@pytest.fixture
def new_process(monkeypatch):
    """feature_store()'s per-process cache emptied, as in a command started after the damage."""
    monkeypatch.setattr(store_module, "_stores", {})


def table_frame(store, view: str, day: date, rows: int = 50) -> pd.DataFrame:
    """A day of `view` with every declared feature."""
    feature_view = store.get_feature_view(view)
    data = {store.get_entity(feature_view.entities[0]).join_key: np.arange(rows, dtype=np.int64) + 1}
    for field in feature_view.features:
        kind = field.dtype.to_value_type().name
        data[field.name] = {
            "INT64": lambda: np.arange(rows, dtype=np.int64),
            "FLOAT": lambda: np.linspace(0, 1, rows, dtype=np.float32),
            "STRING": lambda: [f"v{i % 5}" for i in range(rows)],
            "STRING_LIST": lambda: [[f"s{i % 3}"] * (i % 4) for i in range(rows)],
            "FLOAT_LIST": lambda: [np.full(i % 4, 0.5, np.float32) for i in range(rows)],
        }[kind]()
    frame = pd.DataFrame(data)
    frame["event_timestamp"] = pd.Timestamp(end_of_day(day)).as_unit("us")
    frame["created_ts"] = pd.Timestamp(end_of_day(day)).as_unit("us")
    return frame


def online_dump(settings: Settings, timeout: float = 5.0) -> dict:
    with closing(sqlite3.connect(settings.paths.feast / "online_store.db", timeout=timeout)) as connection:
        tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {table: connection.execute(f'SELECT * FROM "{table}" ORDER BY entity_key, feature_name').fetchall()
                for table in tables}


def cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


# ------------------------------------------------------------------------------------------ online store

def test_garbage_sqlite_online_store_stops_a_stage_before_it_writes_naming_the_file(applied_repo, tmp_path):
    settings = applied_copy(applied_repo, tmp_path / "data")
    online = settings.paths.feast / "online_store.db"
    online.write_bytes(b"this is not a database\n" * 200)

    with pytest.raises(ValueError, match=r"^\S*online_store\.db: not a readable SQLite database") as failure:
        feature_store(settings)
    assert str(failure.value).startswith(str(online)) and "features materialize --date" in str(failure.value)
    # A stage's write: it calls feature_store() first, so its offline partition is never written.
    with pytest.raises(ValueError, match="online_store.db"):
        write_features(settings, "glmix_member", glmix_frame(DAY, 0.0), DAY)
    assert not settings.paths.feature_partition("glmix_member", DAY).exists()


@pytest.mark.parametrize("cut", ["half", "last page"])
def test_cut_off_sqlite_online_store_stops_a_stage_before_it_writes(applied_repo, tmp_path, new_process, cut):
    settings = applied_copy(applied_repo, tmp_path / "data")
    write_features(settings, "glmix_member", glmix_frame(DAY, 0.0), DAY)  # pages beyond the schema's
    online = settings.paths.feast / "online_store.db"
    data = online.read_bytes()
    page_size = int.from_bytes(data[16:18], "big")
    online.write_bytes(data[:len(data) // 2] if cut == "half" else data[:-page_size])
    # A lost last page holds no schema: SQLite's check of the header's page count against the file size finds it.
    with pytest.raises(ValueError, match=r"^\S*online_store\.db: not a readable SQLite database \(database disk"):
        write_features(settings, "glmix_member", glmix_frame(DAY + timedelta(days=1), 1.0), DAY + timedelta(days=1))
    assert not settings.paths.feature_partition("glmix_member", DAY + timedelta(days=1)).exists()


def test_damaged_table_page_of_the_online_store_names_the_file(applied_repo, tmp_path, new_process):
    settings = applied_copy(applied_repo, tmp_path / "data")
    write_features(settings, "glmix_member", glmix_frame(DAY, 0.0), DAY)
    online = settings.paths.feast / "online_store.db"
    with sqlite3.connect(online) as connection:
        (root,), = connection.execute("SELECT rootpage FROM sqlite_master WHERE name = 'rankflow_glmix_member'")
    data = bytearray(online.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    data[(root - 1) * page_size:root * page_size] = b"\xff" * page_size  # the header and schema stay good
    online.write_bytes(bytes(data))

    store = feature_store(settings)  # the cheap check reads the schema only
    with pytest.raises(ValueError, match=r"^\S*online_store\.db: the SQLite online store is damaged"):
        online_write(store, "glmix_member", glmix_frame(DAY + timedelta(days=1), 1.0))


def test_moved_away_online_store_is_recreated_with_its_tables(applied_repo, tmp_path, new_process):
    settings = applied_copy(applied_repo, tmp_path / "data")
    feature_store(settings)
    (settings.paths.feast / "online_store.db").rename(tmp_path / "moved.db")  # what the error message says to do
    result = write_features(settings, "glmix_member", glmix_frame(DAY, 0.0), DAY)
    assert result["written"] == 5


# ------------------------------------------------------------------------------------------ registry

def test_cut_off_registry_is_rebuilt_with_a_warning_and_keeps_the_online_values(applied_repo, tmp_path,
                                                                             new_process, caplog):
    settings = applied_copy(applied_repo, tmp_path / "data")
    write_features(settings, "glmix_member", glmix_frame(DAY, 100.0), DAY)
    registry = settings.paths.feast / "registry.db"
    cut_in_half(registry)  # what a kill during Feast's in-place write leaves
    store_module._stores.clear()  # the next command

    with caplog.at_level(logging.WARNING, logger="features.store"):
        store = feature_store(settings)
    assert any("registry.db: cannot be parsed" in r.getMessage() and "rebuilding" in r.getMessage()
               for r in caplog.records)
    assert {fv.name for fv in store.list_feature_views()} >= {"member_features", "glmix_member"}
    from feast import FeatureStore  # a fresh SDK object, as serving and other processes open it

    online = FeatureStore(repo_path=str(settings.paths.feast)).get_online_features(
        features=["glmix_member:member_re_mean"], entity_rows=[{"member_id": i} for i in range(1, 6)]).to_dict()
    assert [means[0] for means in online["member_re_mean"]] == pytest.approx([i + 100.0 for i in range(1, 6)])


def test_apply_killed_mid_write_leaves_the_registry_whole(applied_repo, tmp_path, new_process, monkeypatch):
    from feast.infra.registry.file import FileRegistryStore

    settings = applied_copy(applied_repo, tmp_path / "data")
    registry = settings.paths.feast / "registry.db"
    before = registry.read_bytes()
    (settings.paths.feast / ".applied").write_text("declarations changed")  # the next call applies

    def killed(self, registry_proto):  # Feast's writer, stopped half-way (a SIGKILL, as far as the file sees)
        data = registry_proto.SerializeToString()
        with open(self._filepath, "wb") as file:
            file.write(data[:len(data) // 2])
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(FileRegistryStore, "_write_registry", killed)
        with pytest.raises(KeyboardInterrupt):
            feature_store(settings)
    assert registry.read_bytes() == before
    store_module._stores.clear()
    assert {fs.name for fs in feature_store(settings).list_feature_services()} == {"ranker", "personalisation"}


# ------------------------------------------------------------------------------------------ partitions

def test_cut_off_second_table_stops_materialize_before_any_online_write(applied_repo, tmp_path, new_process):
    settings = applied_copy(applied_repo, tmp_path / "data")
    store = feature_store(settings)
    for table in FEATURE_TABLES:
        write_offline_partition(settings.paths, table, DAY, table_frame(store, table, DAY))
    second = settings.paths.feature_partition(FEATURE_TABLES[1], DAY) / PART_FILE
    cut_in_half(second)
    before = online_dump(settings)

    with pytest.raises(ValueError, match=r"^\S+: not a readable Parquet partition") as failure:
        materialize_day(settings, DAY)
    assert str(failure.value).startswith(str(second)) and f"features build --date {DAY}" in str(failure.value)
    assert online_dump(settings) == before  # the first table was not written either


def published_day(settings: Settings, store) -> dict:
    """DAY materialised, DAY + 1's partitions written: the online store as a reader sees it before DAY + 1."""
    for day in (DAY, DAY + timedelta(days=1)):
        for table in FEATURE_TABLES:
            write_offline_partition(settings.paths, table, day, table_frame(store, table, day))
    materialize_day(settings, DAY)
    return online_dump(settings)


def test_a_day_failing_in_its_last_table_leaves_the_sqlite_store_as_it_was_and_readable(applied_repo, tmp_path,
                                                                                      new_process, monkeypatch):
    import features.materialize as materialize

    settings = applied_copy(applied_repo, tmp_path / "data")
    store = feature_store(settings)
    before = published_day(settings, store)
    real_online_write, seen = materialize.online_write, []

    def online_write_failing_last(store, view, frame, **kwargs):
        if view == FEATURE_TABLES[-1]:
            # The first tables of the new day are written, not committed: a reader (the service) still gets
            # the day before, at once (WAL: never "database is locked").
            seen.append(online_dump(settings, timeout=0.5))
            raise OSError("No space left on device")
        return real_online_write(store, view, frame, **kwargs)

    monkeypatch.setattr(materialize, "online_write", online_write_failing_last)
    with pytest.raises(OSError, match="No space left"):
        materialize_day(settings, DAY + timedelta(days=1))
    assert seen == [before]
    assert online_dump(settings) == before  # the first tables of the failed day were not kept either
    monkeypatch.undo()
    materialize_day(settings, DAY + timedelta(days=1))
    assert online_dump(settings) != before


KILLED_IN_LAST_TABLE = """
import os, signal, sys
from datetime import date
from pathlib import Path
import features.materialize as materialize
from features.spark.build import FEATURE_TABLES
from rankflow.config import Settings
real = materialize.online_write
def online_write(store, view, frame, **kwargs):
    if view == FEATURE_TABLES[-1]:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(store, view, frame, **kwargs)
materialize.online_write = online_write
materialize.materialize_day(Settings(data_dir=Path(sys.argv[1])), date.fromisoformat(sys.argv[2]))
"""


def test_a_day_killed_in_its_last_table_leaves_the_sqlite_store_as_it_was(applied_repo, tmp_path, new_process):
    settings = applied_copy(applied_repo, tmp_path / "data")
    before = published_day(settings, feature_store(settings))
    killed = subprocess.run([sys.executable, "-c", KILLED_IN_LAST_TABLE, str(settings.data_dir),
                             str(DAY + timedelta(days=1))], capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert online_dump(settings) == before


def test_partition_lacking_a_declared_column_stops_materialize_naming_it(applied_repo, tmp_path, new_process):
    settings = applied_copy(applied_repo, tmp_path / "data")
    store = feature_store(settings)
    for table in FEATURE_TABLES:
        frame = table_frame(store, table, DAY)
        write_offline_partition(settings.paths, table, DAY,
                                frame.drop(columns=frame.columns[1]) if table == FEATURE_TABLES[2] else frame)
    before = online_dump(settings)
    third = settings.paths.feature_partition(FEATURE_TABLES[2], DAY) / PART_FILE
    with pytest.raises(ValueError, match=r"lacks column\(s\)") as failure:
        materialize_day(settings, DAY)
    assert str(failure.value).startswith(str(third))
    assert online_dump(settings) == before


@pytest.mark.parametrize("reader", ["read_offline_partition", "materialize plain", "materialize dictionaries"])
def test_cut_off_partition_readers_name_the_file(applied_repo, tmp_path, reader):
    settings = applied_copy(applied_repo, tmp_path / "data")
    write_offline_partition(settings.paths, "glmix_member", DAY, glmix_frame(DAY, 0.0))
    part = settings.paths.feature_partition("glmix_member", DAY) / PART_FILE
    cut_in_half(part)
    with pytest.raises(ValueError, match=r"^\S+part-0\.parquet: not a readable Parquet partition") as failure:
        if reader == "read_offline_partition":
            read_offline_partition(settings.paths, "glmix_member", DAY)
        else:
            _read_partition(part, dictionaries=reader.endswith("dictionaries"))
    assert str(failure.value).startswith(str(part))
