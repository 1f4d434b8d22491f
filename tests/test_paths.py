"""rankflow.paths: swapping a directory in, cleaning up after killed writers, and replacing several paths
all or nothing (`replace_all_or_nothing`), including after a process was killed halfway."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import rankflow.paths as paths
from rankflow.paths import (JOURNAL, atomic_directory, atomic_write_bytes, recover_replacement, remove_directory,
                            replace_all_or_nothing)
from tests.killing import Killed, dead_pid


def die(*args) -> None:
    raise Killed()


def tree(root: Path) -> dict[str, str]:
    """Every file and folder under root, hidden ones included, with file contents."""
    return {str(p.relative_to(root)): (p.read_text() if p.is_file() else "<dir>") for p in sorted(root.rglob("*"))}


def folder(path: Path, text: str) -> Path:
    path.mkdir(parents=True)
    (path / "part-0.parquet").write_text(text)
    return path


def test_the_swap_is_one_exchange_so_the_target_is_never_missing(tmp_path, monkeypatch):
    if paths._renameat2() is None:
        pytest.skip("renameat2 is Linux-only")
    target = folder(tmp_path / "dt=2026-01-01", "old")

    def no_rename(source, destination):  # a two-rename swap would need os.replace
        raise AssertionError(f"renamed {source} -> {destination}")

    monkeypatch.setattr(paths.os, "replace", no_rename)
    with atomic_directory(target) as staging:
        (staging / "part-0.parquet").write_text("new")
    assert tree(tmp_path) == {"dt=2026-01-01": "<dir>", "dt=2026-01-01/part-0.parquet": "new"}


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two renames"])
def test_a_failing_block_leaves_the_old_directory_and_no_staging(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(paths, "_exchange", lambda first, second: False)
    target = folder(tmp_path / "dt=2026-01-01", "old")
    with pytest.raises(OSError, match="disk full"), atomic_directory(target) as staging:
        (staging / "part-0.parquet").write_text("half")
        raise OSError("disk full")
    assert tree(tmp_path) == {"dt=2026-01-01": "<dir>", "dt=2026-01-01/part-0.parquet": "old"}
    with atomic_directory(target) as staging:
        (staging / "part-0.parquet").write_text("new")
    assert tree(tmp_path) == {"dt=2026-01-01": "<dir>", "dt=2026-01-01/part-0.parquet": "new"}


def test_a_target_a_killed_writer_left_missing_is_restored_before_the_next_write(tmp_path):
    """Without renameat2, a kill between the two renames leaves only `.name.old-*`: the next call puts it back."""
    pid = dead_pid()
    folder(tmp_path / f".dt=2026-01-01.old-{pid}-0a1b2c3d", "old")
    folder(tmp_path / f".dt=2026-01-01.tmp-{pid}-4e5f6a7b", "new, never swapped in")
    target = tmp_path / "dt=2026-01-01"
    with pytest.raises(RuntimeError), atomic_directory(target):
        raise RuntimeError("the new write fails too")
    assert tree(tmp_path) == {"dt=2026-01-01": "<dir>", "dt=2026-01-01/part-0.parquet": "old"}


def test_leftovers_of_dead_writers_are_removed_and_those_of_live_ones_kept(tmp_path):
    pid, live = dead_pid(), os.getppid()
    target = tmp_path / "serving.json"
    target.write_text("old")
    for name in (f".serving.json.tmp-{pid}-0a1b2c3d", f".serving.json.tmp-{live}-4e5f6a7b",
                 ".serving.json.tmp-9e8d7c6b", f".other.json.tmp-{pid}-0a1b2c3d"):
        (tmp_path / name).write_text("leftover")
    folder(tmp_path / f".serving.json.old-{pid}-1a2b3c4d", "leftover")
    atomic_write_bytes(target, b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f".other.json.tmp-{pid}-0a1b2c3d", f".serving.json.tmp-{live}-4e5f6a7b", "serving.json"]
    assert target.read_text() == "new"


def test_a_removed_directory_is_whole_until_one_rename_takes_it_away(tmp_path, monkeypatch):
    """remove_directory renames the folder aside before deleting it: killed while deleting, it leaves a staged
    copy (deleted by the next writer of the target), never a half-deleted folder under the target's name."""
    target = folder(tmp_path / "dt=2026-01-01", "state")
    monkeypatch.setattr(paths, "_remove", die)
    with pytest.raises(Killed):
        remove_directory(target)
    assert not target.exists()
    [aside] = [p for p in tmp_path.iterdir()]
    assert aside.name.startswith(f".dt=2026-01-01.tmp-{os.getpid()}-") and (aside / "part-0.parquet").exists()
    monkeypatch.undo()
    aside.rename(tmp_path / f".dt=2026-01-01.tmp-{dead_pid()}-0a1b2c3d")  # as if that process had died
    assert remove_directory(target) is False  # nothing there; the dead process's copy is cleaned up
    assert list(tmp_path.iterdir()) == []
    assert remove_directory(folder(target, "again")) is True and list(tmp_path.iterdir()) == []


def test_staging_names_carry_the_writers_pid(tmp_path):
    with atomic_directory(tmp_path / "dt=2026-01-01") as staging:
        assert staging.name.startswith(f".dt=2026-01-01.tmp-{os.getpid()}-")


# --- replace_all_or_nothing ---------------------------------------------------------------------------------

def zone(root: Path) -> Path:
    """Three partitions and a schema file; the replacement below changes two, adds one and removes one."""
    for day, text in (("01", "a1"), ("02", "a2"), ("03", "a3")):
        folder(root / "raw/events" / f"dt=2026-01-{day}", text)
    (root / "raw/schema.yaml").write_text("schema 1")
    return root


def replace(root: Path) -> None:
    with replace_all_or_nothing(root) as replacement:
        for day, text in (("02", "b2"), ("03", "b3"), ("04", "b4")):
            staged = replacement.stage(root / "raw/events" / f"dt=2026-01-{day}")
            staged.mkdir()
            (staged / "part-0.parquet").write_text(text)
        replacement.remove(root / "raw/events/dt=2026-01-01")
        replacement.stage(root / "raw/schema.yaml").write_text("schema 2")


def renames_in(action) -> int:
    count = [0]
    real = os.replace

    def counting(source, destination):
        count[0] += 1
        return real(source, destination)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "replace", counting)
        action()
    return count[0]


def fail_at(monkeypatch, position: int, error: BaseException) -> None:
    count = [0]
    real = os.replace

    def failing(source, destination):
        count[0] += 1
        if count[0] == position:
            raise error
        return real(source, destination)

    monkeypatch.setattr(os, "replace", failing)


@pytest.fixture()
def before_and_after(tmp_path) -> tuple[dict[str, str], dict[str, str], int]:
    """The zone before and after a clean replacement, and how many renames the replacement does."""
    before = tree(zone(tmp_path / "before"))
    root = zone(tmp_path / "after")
    renames = renames_in(lambda: replace(root))
    return before, tree(root), renames


def test_a_clean_replacement_leaves_no_journal_or_copies(before_and_after):
    _, after, renames = before_and_after
    assert after == {"raw": "<dir>", "raw/events": "<dir>", "raw/schema.yaml": "schema 2",
                     **{f"raw/events/dt=2026-01-{d}": "<dir>" for d in ("02", "03", "04")},
                     **{f"raw/events/dt=2026-01-{d}/part-0.parquet": f"b{int(d)}" for d in ("02", "03", "04")}}
    assert renames == 1 + 3 + 4 + 1  # journal; 3 replaced, 1 added, 1 removed, schema: moved aside, moved in


def test_an_error_at_any_rename_leaves_the_root_exactly_as_it_was(tmp_path, monkeypatch, before_and_after):
    before, _, renames = before_and_after
    for position in range(1, renames + 1):
        root = zone(tmp_path / f"run{position}")
        fail_at(monkeypatch, position, OSError(28, "No space left on device"))
        with pytest.raises(OSError, match="No space"):
            replace(root)
        monkeypatch.undo()
        assert tree(root) == before, f"rename {position} of {renames} failed"


def test_a_replacement_killed_at_any_rename_is_rolled_back_or_completed_by_the_next_one(
        tmp_path, monkeypatch, before_and_after):
    before, after, renames = before_and_after
    for position in range(2, renames + 2):  # the first rename writes the journal; renames + 1: after the last
        root = zone(tmp_path / f"run{position}")
        if position <= renames:
            fail_at(monkeypatch, position, Killed())
        else:
            monkeypatch.setattr(paths, "_finish", die)
        monkeypatch.setattr(paths, "_roll_back", die)
        with pytest.raises(Killed):
            replace(root)
        monkeypatch.undo()
        assert (root / JOURNAL).exists()
        recover_replacement(root)
        expected = after if position > renames else before
        assert tree(root) == expected, f"killed at rename {position} of {renames}"


def test_a_journal_of_a_running_process_is_left_alone(tmp_path):
    root = zone(tmp_path)
    (root / JOURNAL).write_text(json.dumps({"pid": os.getppid(), "swaps": []}))
    with pytest.raises(RuntimeError, match=f"process {os.getppid()} is replacing data"):
        replace(root)
    assert (root / JOURNAL).exists()
