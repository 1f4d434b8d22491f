"""`rankflow generate` into a data directory that already holds data: refused unless --force, and --force
replaces the whole data set (raw/, truth/ and every zone derived from the old raw data) or nothing at all,
also when it is killed while swapping (the next generate rolls the swap back or completes it).
Also: `rankflow generate --help` shows the defaults the code uses."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from features.contract import raw_days
from rankflow.config import GeneratorSettings
from rankflow.paths import DataPaths

SMALL = ["--members", "40", "--jobs", "20", "--days", "2", "--impressions-per-day", "200", "--seed", "3"]
DERIVED = ("features/member_features/dt=2026-01-01/part-0.parquet", "feast/feature_store.yaml",
           "models/serving.json", "reports/ranker/report.json", "quarantine/raw_events/dt=2026-01-01/report.json")


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def invoke(*args: str):
    from rankflow.cli import app

    return CliRunner().invoke(app, list(args), env={"COLUMNS": "250"})


@pytest.fixture()
def used_data_dir(tmp_path) -> Path:
    """A data directory with generated raw data and (stand-ins for) everything derived from it."""
    root = tmp_path / "data"
    result = invoke("generate", "--data-dir", str(root), *SMALL)
    assert result.exit_code == 0, result.output
    for relative in DERIVED:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text("derived from the first data set")
    (root / "rankflow.yaml").write_text("spark_master: local[1]\n")
    return root


def test_generate_into_a_data_dir_with_raw_data_is_refused_and_changes_nothing(used_data_dir):
    before = tree_digest(used_data_dir)
    result = invoke("generate", "--data-dir", str(used_data_dir), *SMALL[:-1], "4")
    assert result.exit_code == 2, result.output
    assert "already holds" in result.output and "--force" in result.output, result.output
    assert tree_digest(used_data_dir) == before


def test_force_replaces_the_data_set_and_clears_the_zones_derived_from_the_old_one(used_data_dir):
    result = invoke("generate", "--data-dir", str(used_data_dir), "--force", *SMALL[:-1], "4",
                    "--days", "3", "--start-date", "2026-02-01")
    assert result.exit_code == 0, result.output
    for zone in ("features", "feast", "models", "reports", "quarantine"):
        assert not (used_data_dir / zone).exists(), zone
        assert f"{zone}/" in result.output, result.output  # says what it deleted
    paths = DataPaths(used_data_dir)
    assert [d.isoformat() for d in raw_days(paths)] == ["2026-02-01", "2026-02-02", "2026-02-03"]
    assert raw_days(paths, "members")[-1].isoformat() == "2026-02-03"
    assert json.loads((used_data_dir / "truth" / "params.json").read_text())["seed"] == 4
    assert not (used_data_dir / "raw/events/dt=2026-01-01").exists()  # the old days are gone, not mixed in
    assert (used_data_dir / "rankflow.yaml").read_text() == "spark_master: local[1]\n"
    assert not [p.name for p in used_data_dir.iterdir() if p.name.startswith(".")], "staging left behind"
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert summary["data_dir"] == str(used_data_dir) and summary["start"] == "2026-02-01"


def test_a_forced_generate_that_fails_midway_leaves_the_old_data_set_whole(used_data_dir, monkeypatch):
    import features.synthetic as synthetic

    before = tree_digest(used_data_dir)
    calls = []
    original = synthetic._impressions

    def fail_on_day_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return original(*args, **kwargs)

    monkeypatch.setattr(synthetic, "_impressions", fail_on_day_two)
    result = invoke("generate", "--data-dir", str(used_data_dir), "--force", *SMALL[:-1], "4")
    assert result.exit_code != 0 and isinstance(result.exception, OSError)
    assert tree_digest(used_data_dir) == before
    assert not [p.name for p in used_data_dir.iterdir() if p.name.startswith(".")], "staging left behind"


def test_a_data_dir_with_only_its_configuration_needs_no_force(tmp_path):
    (tmp_path / "rankflow.yaml").write_text("spark_master: local[1]\n")
    result = invoke("generate", "--data-dir", str(tmp_path), *SMALL)
    assert result.exit_code == 0, result.output
    assert raw_days(DataPaths(tmp_path))


def test_help_shows_the_defaults_the_code_uses():
    result = invoke("generate", "--help")
    assert result.exit_code == 0
    defaults = GeneratorSettings()
    text = " ".join(result.output.split())
    for flag in ("members", "jobs", "days", "impressions_per_day", "seed", "start_date"):
        value = getattr(defaults, flag)
        shown = value.isoformat() if hasattr(value, "isoformat") else str(value)
        option = "--" + flag.replace("_", "-")
        after = text[text.index(option):]
        # click puts a default given as text in parentheses: "[default: (4000)]"
        assert re.search(rf"\[default: \(?{re.escape(shown)}\)?\]", after[:300]), (option, after[:300])
    assert "--force" in text
    assert dataclasses.asdict(defaults)["members"] == 4_000  # the README's number


class Killed(BaseException):
    """Stands for SIGKILL: no rename after it happens, so nothing is undone."""


def die(*args) -> None:
    raise Killed()


def break_zone_renames(monkeypatch, root: Path, position: int = 0, error: BaseException | None = None,
                       every_later: bool = False) -> list[int]:
    """Count the renames into or out of `root` itself (whole zones, the swap's journal); the position-th (from 1)
    raises `error`, and every later one too if asked. Returns the counter."""
    count = [0]
    real_replace = os.replace

    def replace(source, target):
        if root in (Path(source).parent, Path(target).parent):
            count[0] += 1
            if count[0] == position or (every_later and count[0] > position):
                raise error
        return real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    return count


FORCED = GeneratorSettings(members=40, jobs=20, days=2, impressions_per_day=200, seed=4)


@pytest.fixture()
def forced_clean(used_data_dir, tmp_path, monkeypatch) -> tuple[dict[str, str], int]:
    """The data directory after a forced generate that nothing interrupts, and how many zone renames it does."""
    import features.synthetic as synthetic

    clean = tmp_path / "clean"
    shutil.copytree(used_data_dir, clean)
    count = break_zone_renames(monkeypatch, clean)
    synthetic.generate_data_set(FORCED, DataPaths(clean), replace=True)
    monkeypatch.undo()
    return tree_digest(clean), count[0]


def test_a_rename_failing_at_any_point_of_the_swap_is_undone(used_data_dir, monkeypatch, forced_clean):
    import features.synthetic as synthetic

    before, (_, renames) = tree_digest(used_data_dir), forced_clean
    for position in range(1, renames + 1):
        break_zone_renames(monkeypatch, used_data_dir, position, OSError(28, "No space left on device"))
        with pytest.raises(OSError, match="No space left"):
            synthetic.generate_data_set(FORCED, DataPaths(used_data_dir), replace=True)
        monkeypatch.undo()
        assert tree_digest(used_data_dir) == before, f"rename {position} of {renames} failed"
        assert not [p.name for p in used_data_dir.iterdir() if p.name.startswith(".")], "staging left behind"


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", ""])
    process.wait()
    return process.pid


def test_a_forced_generate_killed_at_any_point_of_the_swap_is_undone_or_completed_by_the_next_generate(
        used_data_dir, tmp_path, monkeypatch, forced_clean):
    import features.synthetic as synthetic
    import rankflow.paths

    before, (after, renames) = tree_digest(used_data_dir), forced_clean
    for position in range(1, renames + 2):  # renames + 1: killed after the last one, before deleting the old zones
        root = tmp_path / f"run{position}"
        shutil.copytree(used_data_dir, root)
        if position <= renames:
            break_zone_renames(monkeypatch, root, position, Killed(), every_later=True)
        else:
            monkeypatch.setattr(rankflow.paths, "_finish", die, raising=False)
        with pytest.raises(Killed):
            synthetic.generate_data_set(FORCED, DataPaths(root), replace=True)
        monkeypatch.undo()
        # what a SIGKILL while generating leaves besides: the half-generated data set
        (root / f".data-set.tmp-{dead_pid()}-0a1b2c3d" / "raw").mkdir(parents=True)

        result = invoke("generate", "--data-dir", str(root), *SMALL)  # without --force: refused, after recovery
        assert result.exit_code == 2, result.output
        expected = after if position > renames else before
        assert tree_digest(root) == expected, f"killed at rename {position} of {renames}"
        assert not [p.name for p in root.iterdir() if p.name.startswith(".")], "leftovers not removed"


def test_a_command_that_reads_the_raw_zone_first_rolls_back_a_killed_generate(used_data_dir, tmp_path, monkeypatch,
                                                                              forced_clean):
    import features.synthetic as synthetic
    from rankflow.commands.common import settings_from

    before, (_, renames) = tree_digest(used_data_dir), forced_clean
    for position in range(1, renames + 1):
        root = tmp_path / f"run{position}"
        shutil.copytree(used_data_dir, root)
        break_zone_renames(monkeypatch, root, position, Killed(), every_later=True)
        with pytest.raises(Killed):
            synthetic.generate_data_set(FORCED, DataPaths(root), replace=True)
        monkeypatch.undo()
        settings_from(root, reads=("raw",))  # `rankflow features build` etc.: raw/ may be moved aside right now
        assert tree_digest(root) == before, f"killed at rename {position} of {renames}"
