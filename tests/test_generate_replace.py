"""`rankflow generate` into a data directory that already holds data: refused unless --force, and --force
replaces the whole data set (raw/, truth/ and every zone derived from the old raw data) or nothing at all.
Also: `rankflow generate --help` shows the defaults the code uses."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
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


def test_a_rename_failing_during_the_swap_is_undone(used_data_dir, monkeypatch):
    import features.synthetic as synthetic

    before = tree_digest(used_data_dir)
    real_replace = synthetic.os.replace

    def replace(source, target):
        if Path(source).parent.name.startswith(".generate-") and Path(source).name == "truth":
            raise OSError("rename failed")
        return real_replace(source, target)

    monkeypatch.setattr(synthetic.os, "replace", replace)
    with pytest.raises(OSError, match="rename failed"):
        synthetic.generate_data_set(GeneratorSettings(members=40, jobs=20, days=2, impressions_per_day=200, seed=4),
                                    DataPaths(used_data_dir), replace=True)
    assert tree_digest(used_data_dir) == before
    assert not [p.name for p in used_data_dir.iterdir() if p.name.startswith(".")], "staging left behind"
