"""An ingest that fails or is killed while swapping partitions in: the raw zone is left exactly as it was, or
the next ingest rolls the half-done swap back before it reads the zone, so no row is ever lost."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import rankflow.paths
from features.contract import read_raw
from features.ingest import ingest
from rankflow.paths import DataPaths

SCHEMA = ("members: {id: uid, timestamp: signup}\nitems: {id: job}\n"
          "events: {member: uid, item: job, timestamp: ts, label: y}\n")
FIRST = {"members": "uid,signup\n1,2026-01-01T00:00:00Z\n2,2026-01-02T00:00:00Z\n3,2026-01-03T00:00:00Z\n",
         "items": "job\n10\n11\n",
         "events": "uid,job,ts,y\n1,10,2026-01-01T08:00:00Z,1\n2,11,2026-01-02T08:00:00Z,0\n"
                   "3,10,2026-01-03T08:00:00Z,1\n1,11,2026-01-03T09:00:00Z,0\n"}
# Replaces days 2 and 3, adds day 4, and moves member 2 to day 4, which empties members/dt=2026-01-02.
SECOND = {"members": "uid,signup\n2,2026-01-04T00:00:00Z\n4,2026-01-04T00:00:00Z\n",
          "items": "job\n12\n",
          "events": "uid,job,ts,y\n1,12,2026-01-02T10:00:00Z,1\n3,10,2026-01-03T10:00:00Z,0\n"
                    "4,12,2026-01-04T08:00:00Z,1\n2,10,2026-01-04T09:00:00Z,1\n"}
# A partial re-ingest: one new day, referring to members and items already stored.
THIRD = {"members": "uid,signup\n5,2026-01-05T00:00:00Z\n", "items": "job\n13\n",
         "events": "uid,job,ts,y\n5,13,2026-01-05T08:00:00Z,1\n1,11,2026-01-05T09:00:00Z,0\n"}


class Killed(BaseException):
    """Stands for SIGKILL: no rename after it happens, so nothing is undone."""


def die(*args) -> None:
    raise Killed()


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under root (hidden ones included) -> sha256 of its bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def inputs(folder: Path, tables: dict[str, str]) -> list[Path]:
    """The schema, members, items and events files, in ingest's order."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "schema.yaml").write_text(SCHEMA)
    for name, text in tables.items():
        (folder / f"{name}.csv").write_text(text)
    return [folder / name for name in ("schema.yaml", "members.csv", "items.csv", "events.csv")]


def run(folder: Path, root: Path, tables: dict[str, str]) -> dict:
    return ingest(*inputs(folder, tables), DataPaths(root))


def fail_at(monkeypatch, position: int, error: BaseException, every_later: bool = False) -> None:
    """os.replace raises `error` at its position-th call from now on (counted from 1), and later too if asked."""
    count = [0]
    real = os.replace

    def replace(source, destination):
        count[0] += 1
        if count[0] == position or (every_later and count[0] > position):
            raise error
        return real(source, destination)

    monkeypatch.setattr(os, "replace", replace)


@pytest.fixture()
def clean(tmp_path) -> dict:
    """The raw zone after FIRST, after FIRST+SECOND and after FIRST+THIRD, and the renames SECOND does."""
    count = [0]
    real = os.replace

    def counting(source, destination):
        count[0] += 1
        return real(source, destination)

    root = tmp_path / "clean"
    run(tmp_path / "in", root, FIRST)
    first = tree_digest(root)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "replace", counting)
        run(tmp_path / "in", root, SECOND)
    second = tree_digest(root)
    other = tmp_path / "clean-third"
    run(tmp_path / "in", other, FIRST)
    run(tmp_path / "in", other, THIRD)
    assert len(read_raw(DataPaths(root), "events")) == 5  # day 1 kept, days 2 and 3 replaced, day 4 added
    return {"first": first, "second": second, "first_third": tree_digest(other), "renames": count[0]}


def test_a_rename_failing_at_any_position_leaves_the_raw_zone_byte_identical(tmp_path, monkeypatch, clean):
    assert clean["renames"] >= 8
    for position in range(1, clean["renames"] + 1):
        root = tmp_path / f"run{position}"
        run(tmp_path / "in", root, FIRST)
        fail_at(monkeypatch, position, OSError(28, "No space left on device"))
        with pytest.raises(OSError, match="No space left"):
            run(tmp_path / "in", root, SECOND)
        monkeypatch.undo()
        assert tree_digest(root) == clean["first"], f"rename {position} of {clean['renames']} failed"
        assert not [p for p in root.rglob(".*")], "staged or replaced copies left behind"


def test_an_ingest_killed_at_any_rename_is_undone_by_the_next_one_and_no_row_is_lost(tmp_path, monkeypatch, clean):
    """The audit's repro: killed midway, then a partial re-ingest; the rows of the killed one must not vanish."""
    for position in range(1, clean["renames"] + 1):
        root = tmp_path / f"run{position}"
        run(tmp_path / "in", root, FIRST)
        fail_at(monkeypatch, position, Killed(), every_later=True)
        with pytest.raises(Killed):
            run(tmp_path / "in", root, SECOND)
        monkeypatch.undo()
        run(tmp_path / "in", root, THIRD)
        assert tree_digest(root) == clean["first_third"], f"killed at rename {position} of {clean['renames']}"


def test_an_ingest_killed_after_its_last_swap_is_completed_by_the_next_one(
        tmp_path, monkeypatch, clean):
    root = tmp_path / "run"
    run(tmp_path / "in", root, FIRST)
    monkeypatch.setattr(rankflow.paths, "_finish", die, raising=False)
    with pytest.raises(Killed):
        run(tmp_path / "in", root, SECOND)
    monkeypatch.undo()
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == [".replace-journal.json"]
    run(tmp_path / "in", root, SECOND)  # the same input again: nothing changes, but the leftovers go
    assert tree_digest(root) == clean["second"]


KILLED_AT = """
import os, signal, sys
from pathlib import Path
from features.ingest import ingest
from rankflow.paths import DataPaths
real, count = os.replace, [0]
def replace(source, destination):
    count[0] += 1
    if count[0] == int(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGKILL)
    real(source, destination)
os.replace = replace
ingest(*sys.argv[2:6], DataPaths(Path(sys.argv[6])))
"""


def test_an_ingest_process_killed_midway_is_rolled_back_by_the_next_ingest(tmp_path, clean):
    root = tmp_path / "run"
    run(tmp_path / "in", root, FIRST)
    position = clean["renames"] // 2 + 1
    killed = subprocess.run([sys.executable, "-c", KILLED_AT, str(position), *inputs(tmp_path / "second", SECOND),
                             root], cwd=Path(__file__).parents[2], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (root / ".replace-journal.json").exists()
    run(tmp_path / "in", root, THIRD)
    assert tree_digest(root) == clean["first_third"]
