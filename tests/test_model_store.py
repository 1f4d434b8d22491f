"""A model version a killed save left half-copied in the BentoML store is moved aside and never served; the newest
complete one serves instead, and BentoML's `latest` pointer follows."""

from __future__ import annotations

import fcntl
import logging
import shutil
from pathlib import Path

from rankflow.config import load_settings
from rankflow.model_store import registering
from rankflow.stages.ranker import _write_serving, model_store
from serving.models import GLMIX, META, RANKER, resolve_tags

GLMIX_FILES = ("member.safetensors", "job.safetensors", "meta.json")
CHECKPOINT_FILES = ("config.json", "model.safetensors")


def _register(settings, name: str, day: str, files: tuple[str, ...], metadata: dict | None = None) -> str:
    """A model of `name` for `day` as the stages register one (a few bytes per file stand in for the real ones)."""
    import bentoml

    with registering(settings), bentoml.models.create(
        name, labels={"logical_date": day, "status": "serving"}, metadata=metadata or {},
        _model_store=model_store(settings),
    ) as stored:
        for file in files:
            (Path(stored.path) / file).write_bytes(b"x" * 64)
        tag = str(stored.tag)
    return tag


def _version_dir(settings, tag: str) -> Path:
    name, version = tag.split(":")
    return settings.paths.bentoml_home / "models" / name / version


def _cut_short(settings, tag: str, keep: tuple[str, ...]) -> None:
    """What a SIGKILL during BentoML's copy into the store leaves: only the files in `keep`."""
    for item in _version_dir(settings, tag).iterdir():
        if item.name not in keep:
            item.unlink()


def test_half_copied_versions_are_moved_aside_and_the_newest_complete_one_serves(tmp_path, caplog):
    settings = load_settings(tmp_path)
    ranker = _register(settings, RANKER, "2026-01-02", CHECKPOINT_FILES)
    _write_serving(settings, RANKER, ranker, [])
    first = _register(settings, GLMIX, "2026-01-01", GLMIX_FILES)
    complete = _register(settings, GLMIX, "2026-01-02", GLMIX_FILES)
    yaml_only = _register(settings, GLMIX, "2026-01-03", GLMIX_FILES)
    no_yaml = _register(settings, GLMIX, "2026-01-04", GLMIX_FILES)
    meta = _register(settings, META, "2026-01-02", CHECKPOINT_FILES)
    truncated = _register(settings, META, "2026-01-03", CHECKPOINT_FILES,
                          metadata={"file_sizes": {"config.json": 64, "model.safetensors": 64}})
    _cut_short(settings, yaml_only, keep=("model.yaml",))            # random effects would silently be off
    _cut_short(settings, no_yaml, keep=("member.safetensors",))     # BentoML cannot even list the name
    # the meta-init's weights cut short after its model.yaml (which lists the sizes) was copied
    (_version_dir(settings, truncated) / "model.safetensors").write_bytes(b"x" * 10)
    latest = settings.paths.bentoml_home / "models" / GLMIX / "latest"
    assert latest.read_text() == no_yaml.split(":")[1]

    with caplog.at_level(logging.WARNING):
        tags = resolve_tags(settings)
    assert tags == {RANKER: ranker, GLMIX: complete, META: meta}
    aside = settings.paths.bentoml_home / "incomplete"
    for tag in (yaml_only, no_yaml, truncated):
        assert not _version_dir(settings, tag).exists()
        assert (aside / tag.replace(":", "/")).is_dir()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and all(tag in warnings[0] for tag in (yaml_only, no_yaml, truncated))
    assert "model.safetensors 10 of 64 bytes" in warnings[0]
    assert latest.read_text() == complete.split(":")[1]              # never a version that is gone
    assert str(model_store(settings).get(GLMIX).tag) == complete     # what BentoML answers for the bare name
    assert sorted(str(m.tag) for m in model_store(settings).list(GLMIX)) == sorted([first, complete])

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert resolve_tags(settings) == tags
    assert not caplog.records                                         # nothing left to move, nothing said

    # the next registration (a re-run of the stage that was killed) moves a new leftover aside before saving
    leftover = settings.paths.bentoml_home / "models" / META / "killedsave1234"
    leftover.mkdir()
    (leftover / "config.json").write_bytes(b"{")
    again = _register(settings, META, "2026-01-03", CHECKPOINT_FILES)
    assert not leftover.exists() and (aside / META / "killedsave1234").is_dir()
    assert str(model_store(settings).get(META).tag) == again


def test_a_version_being_saved_is_left_alone_but_not_served(tmp_path):
    """While another process holds the store lock (a save in progress), a reader moves nothing and skips it."""
    settings = load_settings(tmp_path)
    ranker = _register(settings, RANKER, "2026-01-02", CHECKPOINT_FILES)
    _write_serving(settings, RANKER, ranker, [])
    complete = _register(settings, GLMIX, "2026-01-01", GLMIX_FILES)
    in_progress = _register(settings, GLMIX, "2026-01-02", GLMIX_FILES)
    _cut_short(settings, in_progress, keep=("job.safetensors",))

    with (settings.paths.bentoml_home / "store.lock").open("a") as other_process:
        fcntl.flock(other_process, fcntl.LOCK_EX)
        assert resolve_tags(settings)[GLMIX] == complete
        assert _version_dir(settings, in_progress).is_dir()
        fcntl.flock(other_process, fcntl.LOCK_UN)
    assert resolve_tags(settings)[GLMIX] == complete
    assert not _version_dir(settings, in_progress).exists()


def test_an_incomplete_pinned_glmix_gives_way_and_an_incomplete_serving_ranker_is_an_error(tmp_path):
    import pytest

    from serving.models import NoServingModel

    settings = load_settings(tmp_path)
    ranker = _register(settings, RANKER, "2026-01-02", CHECKPOINT_FILES)
    older = _register(settings, GLMIX, "2026-01-01", GLMIX_FILES)
    pinned = _register(settings, GLMIX, "2026-01-02", GLMIX_FILES)
    _write_serving(settings, RANKER, ranker, [])
    _write_serving(settings, GLMIX, pinned, [])
    _cut_short(settings, pinned, keep=("model.yaml",))
    assert resolve_tags(settings)[GLMIX] == older

    shutil.rmtree(_version_dir(settings, ranker))
    with pytest.raises(NoServingModel, match="rollback"):
        resolve_tags(settings)


def test_a_daily_model_shares_its_files_with_the_state_folder_and_outlives_it(tmp_path, monkeypatch, caplog):
    """register_daily_model leaves the day's files in the store as hard links to the folder's (one copy on
    disk, not two), copies where a link cannot be made, and the stored model keeps its bytes when the folder
    goes."""
    import errno
    import os
    from datetime import date

    from rankflow.model_store import incomplete_reason, register_daily_model

    settings = load_settings(tmp_path / "data")
    folder = tmp_path / "data" / "models" / "glmix" / "dt=2026-01-02"
    folder.mkdir(parents=True)
    for index, file in enumerate(GLMIX_FILES):
        (folder / file).write_bytes(bytes([index]) * (1000 + index))
    tag = register_daily_model(settings, GLMIX, folder, date(2026, 1, 2), {"events_used": 3})
    stored = _version_dir(settings, tag)
    for file in GLMIX_FILES:
        assert (stored / file).stat().st_ino == (folder / file).stat().st_ino and (folder / file).stat().st_nlink == 2
    again = tmp_path / "rerun"  # the day re-run with the same answer: the stored model is reused, and shared
    shutil.copytree(folder, again)
    killed = stored / ".member.safetensors.tmp-4194305-0badc0de"  # staged by a process that is gone (pid > pid_max)
    os.link(folder / "member.safetensors", killed)
    assert register_daily_model(settings, GLMIX, again, date(2026, 1, 2), {"events_used": 3}) == tag
    assert all((stored / file).stat().st_ino == (again / file).stat().st_ino for file in GLMIX_FILES)
    assert not killed.exists()
    shutil.rmtree(folder)
    shutil.rmtree(again)
    assert [(stored / f).read_bytes() for f in GLMIX_FILES] == [bytes([i]) * (1000 + i) for i in range(3)]
    assert incomplete_reason(settings, tag) is None

    def no_links(source, target):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    other = tmp_path / "other"
    other.mkdir()
    for file in GLMIX_FILES:
        (other / file).write_bytes(b"y" * 100)
    with caplog.at_level(logging.WARNING, logger="rankflow.model_store"):
        copied = _version_dir(settings, register_daily_model(settings, GLMIX, other, date(2026, 1, 3),
                                                             {"events_used": 4}))
    assert "could not hard-link" in caplog.text and "keeps a copy" in caplog.text
    for file in GLMIX_FILES:
        assert (copied / file).read_bytes() == b"y" * 100 and (other / file).stat().st_nlink == 1
    assert incomplete_reason(settings, f"{GLMIX}:{copied.name}") is None
    assert not [item for item in copied.iterdir() if item.name.startswith(".")]
