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
    .replace-journal.json                while ingest or generate swaps data in (`replace_all_or_nothing`)

Hidden `.<name>.tmp-*`, `.old-*`, `.new-*` and `.replaced-*` siblings are copies being written or replaced
(see "replacing files and folders safely" below).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import json
import os
import re
import shutil
import sys
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Callable, Iterator

from rankflow.logs import get_logger

log = get_logger(__name__)


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


def read_json(path: Path) -> Any:
    """A stored JSON file; one that is cut off or corrupt raises UnreadableInput naming it."""
    from rankflow.errors import UnreadableInput

    try:
        return json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError) as error:  # json.JSONDecodeError is a ValueError
        raise UnreadableInput(f"{path}: not readable JSON ({error}); the file is cut off or corrupt") from None


# --- replacing files and folders safely ------------------------------------------------------------------------
#
# Every staged copy is a hidden sibling of its target named for the process that wrote it:
# `.<name>.tmp-<pid>-<hex>` (new content being written) or `.<name>.old-<pid>-<hex>` (the content it replaced,
# about to be deleted); `replace_all_or_nothing` uses the kinds `new` and `replaced` instead, so that only its
# journal ever decides about those. A process that is killed leaves them behind; the next writer of the same
# target removes those of processes that are gone (one listdir of the parent), never one of a live process.
# Names without a pid were left by an older rankflow and count as left by a process that is gone.

_LEFTOVER = re.compile(r"\.(?P<target>.+)\.(?P<kind>tmp|old|new|replaced)-(?:(?P<pid>\d+)-)?[0-9a-f]+")
_SINGLE_WRITE_KINDS, _ALL_KINDS = ("tmp", "old"), ("tmp", "old", "new", "replaced")
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2  # <fcntl.h>, <linux/fs.h>
JOURNAL = ".replace-journal.json"  # in the root of a data directory while replace_all_or_nothing swaps


def _sibling(target: Path, kind: str) -> Path:
    """A fresh hidden name next to `target` for its new ("tmp", "new") or replaced ("old", "replaced") content."""
    return target.parent / f".{target.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # gone, or a number no process can have
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _leftovers(directory: Path, kinds: tuple[str, ...]) -> list[tuple[Path, str, str]]:
    """The staged copies in `directory` of these kinds whose writing process is gone: (path, target name, kind)."""
    leftovers = []
    for name in os.listdir(directory):
        match = _LEFTOVER.fullmatch(name)
        if match and match["kind"] in kinds and not (match["pid"] and _alive(int(match["pid"]))):
            leftovers.append((directory / name, match["target"], match["kind"]))
    return leftovers


def _recover(target: Path, kinds: tuple[str, ...] = _SINGLE_WRITE_KINDS) -> None:
    """Clean up after killed writers of `target`: restore it from a replaced copy if it is missing, drop the rest.

    A writer killed between moving the old content aside and moving the new one in (only where `_exchange` is
    unavailable) leaves no `target`, only `.<name>.old-*`: that content is put back. The kinds `new` and
    `replaced` may only be given once no `replace_all_or_nothing` journal is pending.
    """
    leftovers = [(path, kind) for path, name, kind in _leftovers(target.parent, kinds) if name == target.name]
    replaced = sorted((path for path, kind in leftovers if kind == "old"), key=lambda p: p.lstat().st_ctime)
    if replaced and not os.path.lexists(target):
        log.warning("%s was missing (its writer was killed while swapping it); restored it from %s",
                    target, replaced[-1].name)
        os.replace(replaced[-1], target)
    for path, _ in leftovers:
        _remove(path)


@functools.cache
def _renameat2() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # no such symbol: glibc older than 2.28, or another C library
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def _exchange(first: Path, second: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.ENOSYS, errno.EINVAL):  # kernel without renameat2, or a file system without the flag
        return False
    raise OSError(error, os.strerror(error), str(first), None, str(second))


def _move_into_place(staging: Path, target: Path) -> None:
    """Put `staging` at `target`; afterwards `staging` holds the old content, if any, or is gone."""
    if not os.path.lexists(target):
        os.replace(staging, target)
        return
    if _exchange(staging, target):
        return
    replaced = _sibling(target, "old")
    os.replace(target, replaced)
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(replaced, target)
        raise
    os.replace(replaced, staging)


@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Write a directory aside, then swap it into place; on error the old one is untouched.

    Yields an empty hidden sibling directory (`.<name>.tmp-<pid>-<hex>`) to write into. When the block ends
    without an error, the new directory and the old `target` are exchanged in one atomic step (Linux
    renameat2 RENAME_EXCHANGE) and the old content is deleted: readers, and a process killed at any moment,
    see the whole old or the whole new directory. Where that call is unavailable the swap is two renames; a
    process killed between them leaves `target` missing and the old content in `.<name>.old-*`, which the next
    `atomic_directory` (or `atomic_write_bytes`) for `target` restores before writing. Each call first deletes
    the staged copies of `target` left by processes that are gone.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _recover(target)
    staging = _sibling(target, "tmp")
    staging.mkdir()
    try:
        yield staging
        _move_into_place(staging, target)
    finally:
        _remove(staging)  # the old content after the swap; the half-written new one after an error


def atomic_write_bytes(target: Path, payload: bytes) -> None:
    """Write a file aside and rename it into place (readers see the whole old or the whole new file).

    Like `atomic_directory`, first deletes the staged copies of `target` left by processes that are gone.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _recover(target)
    staging = _sibling(target, "tmp")
    try:
        staging.write_bytes(payload)
        os.replace(staging, target)
    finally:
        staging.unlink(missing_ok=True)


def atomic_hard_link(source: Path, target: Path) -> bool:
    """Replace `target` by a hard link to `source` in one rename (readers see the old or the linked file); False,
    and `target` untouched, where no link can be made (another file system, none on this one, too many links).

    Like `atomic_write_bytes`, first deletes the staged links of `target` left by processes that are gone.
    """
    target = Path(target)
    _recover(target)
    staging = _sibling(target, "tmp")
    try:
        os.link(source, staging)
    except OSError:
        return False
    try:
        os.replace(staging, target)
    finally:
        staging.unlink(missing_ok=True)
    return True


def remove_directory(target: Path) -> bool:
    """Delete the folder `target` so that readers see it whole or not at all; False when it was not there.

    It is renamed aside first (`.<name>.tmp-<pid>-<hex>`, one atomic step) and deleted there: a process killed
    while deleting leaves that staged copy, never a half-deleted `target`, and the next writer of `target`
    (or `remove_directory` of it) deletes the copy. Staged copies of `target` left by processes that are gone
    are deleted first.
    """
    target = Path(target)
    if target.parent.is_dir():
        _recover(target)
    if not target.is_dir():
        return False
    aside = _sibling(target, "tmp")
    os.replace(target, aside)
    _remove(aside)
    return True


def sweep_leftovers(directory: Path) -> list[Path]:
    """Delete the staged copies (`.<name>.tmp-<pid>-<hex>`) in `directory` whose writing process is gone; the paths.

    Each writer of a target deletes its own target's leftovers; this is for targets nothing will write again (a
    state folder that retention renamed aside, `remove_directory`, before its process was killed). Replaced copies
    (`.old-`) are left to `_recover`, which may need them to restore their target.
    """
    leftovers = [path for path, _, _ in _leftovers(Path(directory), ("tmp",))]
    for path in leftovers:
        _remove(path)
    return leftovers


def staging_directory(target: Path) -> Path:
    """A new empty hidden folder next to `target` (`.<name>.tmp-<pid>-<hex>`), to build something in aside.

    The caller deletes it; if the process is killed first, the next call for the same `target` does.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _recover(target)
    staging = _sibling(target, "tmp")
    staging.mkdir()
    return staging


class Replacement:
    """The files and folders one `replace_all_or_nothing` block replaces or removes, all under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.swaps: list[tuple[Path, Path | None]] = []  # (target, its staged new content or None to remove it)

    def stage(self, target: Path) -> Path:
        """Where to put `target`'s new content (a file or a folder; nothing is created there yet)."""
        target = Path(target)
        self._check(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        _recover(target, _ALL_KINDS)  # the journal, if any, was dealt with on entry
        staged = _sibling(target, "new")
        self.swaps.append((target, staged))
        return staged

    def remove(self, target: Path) -> None:
        """Delete `target` together with the replacements."""
        target = Path(target)
        self._check(target)
        self.swaps.append((target, None))

    def _check(self, target: Path) -> None:
        if not target.is_relative_to(self.root) or target == self.root:
            raise ValueError(f"{target} is not inside {self.root}, the root of this replacement")

    def discard(self) -> None:
        for _, staged in self.swaps:
            if staged is not None:
                _remove(staged)

    def commit(self) -> None:
        if not self.swaps:
            return
        missing = [str(staged) for _, staged in self.swaps if staged is not None and not os.path.lexists(staged)]
        if missing:
            raise ValueError(f"staged for replacement but never written: {missing}")
        swaps = [{"target": str(target.relative_to(self.root)),
                  "staged": str(staged.relative_to(self.root)) if staged else None,
                  "old": str(_sibling(target, "replaced").relative_to(self.root))} for target, staged in self.swaps]
        atomic_write_bytes(self.root / JOURNAL, json.dumps({"pid": os.getpid(), "swaps": swaps}, indent=1).encode())
        try:
            for swap in swaps:
                target, staged, old = _journal_paths(self.root, swap)
                if os.path.lexists(target):
                    os.replace(target, old)
                if staged is not None:
                    os.replace(staged, target)
        except BaseException:
            _roll_back(self.root, swaps)  # if this fails too, the journal stays and the next writer finishes it
            raise
        _finish(self.root, swaps)


def _journal_paths(root: Path, swap: dict[str, str | None]) -> tuple[Path, Path | None, Path]:
    return root / swap["target"], root / swap["staged"] if swap["staged"] else None, root / swap["old"]


def _done(root: Path, swap: dict[str, str | None]) -> bool:
    """Whether a swap happened: its staged content was moved in or, for a removal, its target moved out."""
    return not os.path.lexists(root / (swap["staged"] or swap["target"]))


def _roll_back(root: Path, swaps: list[dict[str, str | None]]) -> None:
    """Undo the swaps done, newest first; then delete the journal, then the staged content.

    In that order because a staged copy that is gone reads as "moved in" (`_done`) while the journal exists.
    """
    for swap in reversed(swaps):
        target, staged, old = _journal_paths(root, swap)
        if staged is not None and not os.path.lexists(staged) and os.path.lexists(target):
            os.replace(target, staged)
        if os.path.lexists(old):
            os.replace(old, target)
    (root / JOURNAL).unlink()
    for swap in swaps:
        if swap["staged"]:
            _remove(root / swap["staged"])


def _finish(root: Path, swaps: list[dict[str, str | None]]) -> None:
    """Delete the replaced content, then the journal (a kill before that leaves the deleting to the next writer)."""
    for swap in swaps:
        _remove(root / swap["old"])
    (root / JOURNAL).unlink()


def recover_replacement(root: Path) -> None:
    """Finish a `replace_all_or_nothing` in `root` that a killed process left half done, from its journal.

    Rolled back, so `root` holds exactly what it held before, unless every swap had been done: then completed
    (only the replaced content was still to delete). Raises RuntimeError while the process that wrote the
    journal is still running. Then deletes what processes that are gone left staged directly in `root`
    (such as a data set that `rankflow generate` was killed while generating).
    """
    root = Path(root)
    if (root / JOURNAL).exists():
        _recover_from_journal(root, json.loads((root / JOURNAL).read_text()))
    if root.is_dir():
        for name in {name for _, name, _ in _leftovers(root, _ALL_KINDS)}:
            _recover(root / name, _ALL_KINDS)


def _recover_from_journal(root: Path, record: dict) -> None:
    if record["pid"] != os.getpid() and _alive(record["pid"]):
        raise RuntimeError(f"process {record['pid']} is replacing data in {root} (journal {root / JOURNAL}); "
                           "run this again when it has finished")
    swaps = record["swaps"]
    if all(_done(root, swap) for swap in swaps):
        log.warning("%s: completing the replacement of %d path(s) that process %s was killed during",
                    root, len(swaps), record["pid"])
        _finish(root, swaps)
    else:
        log.warning("%s: rolling back the replacement of %d path(s) that process %s was killed during",
                    root, len(swaps), record["pid"])
        _roll_back(root, swaps)


@contextmanager
def replace_all_or_nothing(root: Path) -> Iterator[Replacement]:
    """Replace or remove several files and folders under `root` together: all of them, or none.

    In the block, `stage(target)` says where to write a target's new content and `remove(target)` marks a
    target for deletion; an error in the block deletes what was staged and changes nothing. When the block
    ends, a journal listing the swaps is written to `root/.replace-journal.json`, then each target is moved
    aside and its new content moved in, one rename at a time (a reader can see some targets new and some old
    meanwhile, or a target missing for an instant). An error during the swaps undoes the ones done, in reverse
    order, and re-raises: `root` holds exactly what it held before. On success the replaced content is deleted,
    then the journal. A process killed at any point leaves the journal; the next `replace_all_or_nothing`
    (or `recover_replacement`) on `root` rolls the swaps back before anything else, or completes them when all
    had been done. Guards against errors and killed processes, not against power loss (nothing is fsynced).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    recover_replacement(root)
    replacement = Replacement(root)
    try:
        yield replacement
    except BaseException:
        replacement.discard()
        raise
    try:
        replacement.commit()
    except BaseException:
        if not (root / JOURNAL).exists():  # failed before the journal, or rolled back: staged copies are unused
            replacement.discard()
        raise
