"""The BentoML model store kept whole: a version a killed save left half-copied is moved aside, never served.

BentoML 1.4 saves a model (`Model.save` -> `Store.register`) by copying it straight into
<bentoml_home>/models/<name>/<version>/ (shutil.copytree; model.yaml is one of the files, in directory
order) and only after the copy writes <name>/latest, the version `store.get(name)` answers. A kill during
the copy leaves a version directory that BentoML cannot list (no model.yaml: every `store.list(name)`
raises) or lists as a model without its files. A version directory is *incomplete* when

- it has no model.yaml, or its model.yaml does not parse (BentoML's ModelInfo.from_yaml_file);
- a file its metadata `file_sizes` lists (`file_sizes(folder)`, written at registration) is missing or has
  another size (a copy cut short);
- a file every version of its name has (`MODEL_FILES`) is missing.

`sweep_incomplete` moves incomplete versions of our model names to <bentoml_home>/incomplete/<name>/<version>
(outside the store: BentoML takes every directory there for a model name) with one warning line naming
them, and points `latest` at the newest remaining version. A version being copied right now looks
incomplete too, so writers register under `registering(settings)`, which holds <bentoml_home>/store.lock
(flock) and sweeps first; readers sweep only when that lock is free, and otherwise still skip incomplete
versions (`complete_models`, `incomplete_reason`).

Daily models (`rankflow-glmix`, `rankflow-meta`) are registered with `register_daily_model`: one per logical day,
however often the day is re-run.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import threading
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any, Iterator

from rankflow.config import Settings
from rankflow.logs import get_logger
from rankflow.paths import atomic_hard_link, atomic_write_bytes

log = get_logger(__name__)

MODEL_YAML = "model.yaml"  # bentoml._internal.models.model.MODEL_YAML_FILENAME
LATEST = "latest"          # bentoml's Tag.latest_path(): <name>/latest holds the newest version
MODEL_FILES = {            # what every stored version of each name holds (besides model.yaml)
    "rankflow-ranker": ("config.json", "model.safetensors"),   # training.ranker.checkpoint
    "rankflow-glmix": ("member.safetensors", "job.safetensors", "meta.json"),  # personalise._state_files
    "rankflow-meta": ("config.json", "model.safetensors"),     # training.meta.state
}
MODEL_NAMES = tuple(MODEL_FILES)

_held = threading.local()  # this thread's depth in store_lock (the flock is per open file, not per process)
_checked: dict[tuple, tuple[str | None, Any]] = {}  # version dir listing -> (reason, Model); a listing changes on any write


def store_root(settings: Settings) -> Path:
    return settings.paths.bentoml_home / "models"


def file_sizes(folder: Path) -> dict[str, int]:
    """{file name: bytes} of the files in `folder`, for a model's metadata `file_sizes` (checked on every read)."""
    return {item.name: item.stat().st_size for item in sorted(Path(folder).iterdir()) if item.is_file()}


def _listing(version_dir: Path) -> tuple:
    entries = []
    with os.scandir(version_dir) as scan:
        for entry in scan:
            stat = entry.stat(follow_symlinks=False)
            entries.append((entry.name, stat.st_size, stat.st_mtime_ns, stat.st_ino))
    return (str(version_dir), tuple(sorted(entries)))


def _check(version_dir: Path, name: str) -> tuple[str | None, Any]:
    """(why `version_dir` is incomplete or None, its bentoml Model when complete); cached by directory listing."""
    try:
        key = _listing(version_dir)
    except OSError as error:
        return f"unreadable ({error.strerror})", None
    if key in _checked:
        return _checked[key]
    sizes = {entry[0]: entry[1] for entry in key[1]}
    verdict: tuple[str | None, Any]
    if MODEL_YAML not in sizes:
        verdict = (f"no {MODEL_YAML}", None)
    else:
        from bentoml._internal.models.model import Model

        try:
            model = Model.from_path(str(version_dir))
        except Exception as error:  # yaml, schema or BentoML's own validation: all mean "not a readable model"
            verdict = (f"unreadable {MODEL_YAML} ({type(error).__name__}: {str(error).splitlines()[0][:120]})", None)
        else:
            listed = model.info.metadata.get("file_sizes") or {}
            wrong = [f"{file} {sizes.get(file, 'missing')} of {size} bytes" for file, size in listed.items()
                     if sizes.get(file) != size]
            missing = [file for file in MODEL_FILES.get(name, ()) if file not in sizes]
            if wrong:
                verdict = ("files cut short: " + ", ".join(wrong), None)
            elif missing:
                verdict = ("missing " + ", ".join(missing), None)
            else:
                verdict = (None, model)
    if len(_checked) > 4096:  # a long-running service: forget old listings rather than grow
        _checked.clear()
    _checked[key] = verdict
    return verdict


def _versions(settings: Settings, name: str) -> list[Path]:
    folder = store_root(settings) / name
    try:
        return sorted(item for item in folder.iterdir() if item.is_dir())
    except FileNotFoundError:
        return []


def incomplete_reason(settings: Settings, tag: str) -> str | None:
    """Why the stored version `tag` ("name:version") cannot serve (incomplete or absent), or None when it can."""
    name, _, version = tag.partition(":")
    folder = store_root(settings) / name / version
    if not version or not folder.is_dir():
        return f"not in the model store {store_root(settings)}"
    return _check(folder, name)[0]


def complete_models(settings: Settings, name: str) -> list:
    """The complete stored versions of `name` (bentoml Models, by version); incomplete ones are left out."""
    return [model for model in (_check(folder, name)[1] for folder in _versions(settings, name)) if model is not None]


@contextmanager
def store_lock(settings: Settings, wait: bool = True) -> Iterator[bool]:
    """Hold <bentoml_home>/store.lock (re-entrant in a thread); yields False when `wait` is off and another holds it."""
    depth = getattr(_held, "depth", 0)
    if depth:
        _held.depth = depth + 1
        try:
            yield True
        finally:
            _held.depth -= 1
        return
    path = settings.paths.bentoml_home / "store.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        _held.depth = 1
        try:
            yield True
        finally:
            _held.depth = 0
            fcntl.flock(handle, fcntl.LOCK_UN)


def sweep_incomplete(settings: Settings, names: tuple[str, ...] = MODEL_NAMES, wait: bool = False) -> list[str]:
    """Move incomplete versions of `names` out of the store (one warning naming them); the tags moved.

    Only while holding the store lock (no save can be in progress then); with the lock busy, nothing moves
    (readers skip incomplete versions anyway). One directory listing per name, one per version.
    """
    with store_lock(settings, wait=wait) as held:
        if not held:
            return []
        moved, aside = [], settings.paths.bentoml_home / "incomplete"
        for name in names:
            for folder in _versions(settings, name):
                reason = _check(folder, name)[0]
                if reason is None:
                    continue
                target = aside / name / folder.name
                for attempt in range(1, 100):
                    if not target.exists():
                        break
                    target = aside / name / f"{folder.name}-{attempt}"
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(folder, target)
                moved.append(f"{name}:{folder.name} ({reason})")
            _repoint_latest(settings, name)
        if moved:
            log.warning("moved %d incomplete model version(s) out of the model store to %s (a save was cut short): %s",
                        len(moved), aside, "; ".join(moved))
        return [entry.split(" ", 1)[0] for entry in moved]


def _repoint_latest(settings: Settings, name: str) -> None:
    """<name>/latest names an existing complete version (the newest by creation time, as BentoML picks), or is gone."""
    latest = store_root(settings) / name / LATEST
    try:
        version = latest.read_text().strip()
    except OSError:
        return
    if version and _check(store_root(settings) / name / version, name)[0] is None:
        return
    remaining = complete_models(settings, name)
    if remaining:
        newest = max(remaining, key=lambda model: model.info.creation_time)
        atomic_write_bytes(latest, str(newest.tag.version).encode())
    else:
        latest.unlink(missing_ok=True)


@contextmanager
def registering(settings: Settings) -> Iterator[None]:
    """Hold the store lock for a registration (`bentoml.models.create` ... inside), after moving incomplete versions out.

    Wrap every write into the store in it: a reader that finds the lock free knows an incomplete version is
    a dead save's leftover, not a copy in progress.
    """
    with store_lock(settings, wait=True):
        sweep_incomplete(settings)
        yield


def file_digests(folder: Path, names: list[str]) -> dict[str, str] | None:
    """sha256 of each named file in `folder`, or None when one is missing."""
    digests = {}
    for name in names:
        path = folder / name
        if not path.is_file():
            return None
        with path.open("rb") as stream:  # in chunks: a GLMix state file is 0.4 GB a day at 100x the demo
            digests[name] = hashlib.file_digest(stream, "sha256").hexdigest()
    return digests


def share_file(source: Path, target: Path) -> bool:
    """Make `target`, a copy of `source`, a hard link to it (one copy on disk); False, with a warning, where it
    cannot be (another file system, no hard links there): the copy stays.

    The daily models' files are never changed in place (a re-run swaps a whole new folder in, and a store
    deletes a version by unlinking it), so the state folder (models/glmix/dt=D) and the BentoML model of the
    day can share their bytes: GLMix keeps a d x d precision per entity, 0.67 GB a day at 100x the demo.
    The link replaces the copy in one rename (`rankflow.paths.atomic_hard_link`): a reader sees the same bytes
    throughout, and a link staged by a killed process is deleted by the next call for the same file."""
    if atomic_hard_link(source, target):
        return True
    log.warning("%s: could not hard-link it to %s (another file system?); the model store keeps a copy",
                target, source)
    return False


def register_daily_model(settings: Settings, name: str, folder: Path, day: date, metadata: dict) -> str | None:
    """Store the files of `folder` as the day's model `name` (status serving): one per logical day, whatever re-runs.

    A stored model of `day` with the same files and metadata is reused as it is (re-running a day that gives
    the same answer adds nothing). Otherwise the new model is created in full first and only then are the
    day's older models deleted, so a reader always finds a complete model of the day (serving picks the
    newest by logical_date, then creation time). A model that models/serving.json names (`pinned_tags`: serving,
    or in its history) is never deleted.
    The stored files are hard links to `folder`'s where the store shares its file system (`share_file`).
    Returns the tag, or None when BentoML is not installed.
    """
    try:
        import bentoml
        from bentoml.exceptions import NotFound
    except ImportError:
        return None
    from rankflow.stages.ranker import model_store

    with registering(settings):  # incomplete versions of a killed save moved out first; readers wait
        store = model_store(settings)
        names = sorted(item.name for item in folder.iterdir())
        wanted = file_digests(folder, names)
        try:
            same_day = [m for m in store.list(name) if m.info.labels.get("logical_date") == day.isoformat()]
        except NotFound:
            same_day = []
        keep = next((m for m in sorted(same_day, key=lambda m: m.info.creation_time, reverse=True)
                     if file_digests(Path(m.path), names) == wanted and dict(m.info.metadata) == metadata), None)
        if keep is not None:
            tag = str(keep.tag)
        else:
            with bentoml.models.create(name, labels={"logical_date": day.isoformat(), "status": "serving"},
                                       metadata=metadata, _model_store=store) as stored:
                for file in names:
                    shutil.copy2(folder / file, Path(stored.path) / file)
                tag = str(stored.tag)
        # BentoML copies the files into the store as it saves (a reused model has the same bytes): they become
        # links to `folder`'s, which the caller swaps in as the day's state.
        for file in names:
            share_file(folder / file, Path(store.get(tag).path) / file)
        pinned = pinned_tags(settings, name)
        for old in same_day:
            if str(old.tag) != tag and str(old.tag) not in pinned:
                store.delete(old.tag)
        return tag


def pinned_tags(settings: Settings, name: str) -> set[str]:
    """The tags of `name` that models/serving.json names: the one serving and its history (kept for rollback)."""
    from rankflow.stages.ranker import serving_state

    entry = serving_state(settings).get(name, {})
    return {tag for tag in (entry.get("tag"), *entry.get("history", [])) if tag}


def delete_daily_models(settings: Settings, name: str, days: list[date], dry_run: bool = False) -> dict[str, list[str]]:
    """Delete the stored models `name` of these logical days (retention), except those serving.json names.

    {"deleted": tags, "pinned": tags kept because serving.json names them (serving, or in its history)}; with
    `dry_run` nothing is deleted and "deleted" lists what would be. Nothing to do without BentoML.
    """
    try:
        from bentoml.exceptions import NotFound
    except ImportError:
        return {"deleted": [], "pinned": []}
    from rankflow.stages.ranker import model_store

    wanted = {day.isoformat() for day in days}
    pinned = pinned_tags(settings, name)

    def split(models) -> tuple[list[str], list[str]]:
        tags = [str(m.tag) for m in models if m.info.labels.get("logical_date") in wanted]
        return sorted(t for t in tags if t not in pinned), sorted(t for t in tags if t in pinned)

    if dry_run:  # looks only: no lock taken, nothing moved (incomplete versions are left out, as readers do)
        deleted, kept = split(complete_models(settings, name))
        return {"deleted": deleted, "pinned": kept}
    with registering(settings):  # no save of a daily model runs meanwhile
        store = model_store(settings)
        try:
            deleted, kept = split(store.list(name))
        except NotFound:
            deleted, kept = [], []
        for tag in deleted:
            store.delete(tag)
        if deleted:
            _repoint_latest(settings, name)
    return {"deleted": deleted, "pinned": kept}
