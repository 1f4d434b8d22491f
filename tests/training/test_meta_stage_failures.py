"""The daily meta-embedding refresh when a day fails part-way or is skipped: no day is silently built upon.

The day's offline partition features/meta_embedding/dt=D (the snapshot the next day starts from) is written
after the online store: a day that fails before it has no partition, its re-run writes what an uninterrupted
run writes, and a later day is refused (naming the day and the command to run) until it is run.
"""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from datetime import timedelta

import pytest

from rankflow.config import load_settings
from rankflow.errors import MissingInput
from rankflow.stages.meta import VIEW, meta_root, refresh_meta_embeddings, train_meta
from tests.training.test_meta_stage import SMALL, settings  # noqa: F401 (settings: fixture)


def _stores(settings) -> dict:
    """What the refresh writes, comparable across data directories: partitions, online rows, meta-inits."""
    table = settings.paths.feature_table(VIEW)
    with sqlite3.connect(settings.paths.feast / "online_store.db") as connection:
        online = connection.execute(f'SELECT entity_key, feature_name, value, event_ts FROM "rankflow_{VIEW}" '
                                    "ORDER BY entity_key, feature_name").fetchall()
    return {"offline": {str(p.relative_to(table)): hashlib.sha256(p.read_bytes()).hexdigest()
                        for p in sorted(table.rglob("*")) if p.is_file()},
            "online": online, "meta_inits": sorted(p.name for p in meta_root(settings).iterdir())}


def _days(settings):
    """Three days with a training set, the first after one day of history (the tiny marketplace has four)."""
    start = settings.generator.start_date
    return start + timedelta(days=1), start + timedelta(days=2), start + timedelta(days=3)


def test_a_failed_online_write_leaves_no_partition_and_the_rerun_equals_an_uninterrupted_run(
        settings, tmp_path, monkeypatch) -> None:
    import features.store

    first, second, third = _days(settings)
    train_meta(settings, first, config=SMALL)
    refresh_meta_embeddings(settings, first)
    uninterrupted = load_settings(shutil.copytree(settings.data_dir, tmp_path / "uninterrupted"))
    refresh_meta_embeddings(uninterrupted, second)

    def online_write_failing(store, view, frame, *args, **kwargs):
        raise ConnectionError("online store went away")

    monkeypatch.setattr(features.store, "online_write", online_write_failing)
    with pytest.raises(ConnectionError):
        refresh_meta_embeddings(settings, second)
    monkeypatch.undo()

    # No partition of the second day: the third day's snapshot would carry on from the first, so it is refused.
    assert not settings.paths.feature_partition(VIEW, second).exists()
    before = _stores(settings)
    with pytest.raises(MissingInput, match=f"{second} has a training set but no partition.*"
                                           f"`rankflow meta --date {second}` first, then {third}"):
        refresh_meta_embeddings(settings, third)
    assert _stores(settings) == before

    # Re-running the day writes what an uninterrupted run wrote, byte for byte, online store included.
    refresh_meta_embeddings(settings, second)
    assert _stores(settings) == _stores(uninterrupted)


def test_a_day_after_a_skipped_day_is_refused_before_any_write(settings) -> None:
    first, second, third = _days(settings)
    train_meta(settings, first, config=SMALL)
    refresh_meta_embeddings(settings, first)  # the training-set day before it is no gap: it is the first
    before = _stores(settings)
    with pytest.raises(MissingInput, match=f"meta embeddings {third}: {second} has a training set but no "
                                           f"partition .*{third} would carry on from {first}'s.*nothing was "
                                           f"written.*`rankflow meta --date {second}` first"):
        refresh_meta_embeddings(settings, third)
    assert _stores(settings) == before
