"""`rankflow demo` end to end on the tiny marketplace: every stage runs and the summary names what it produced.

The README's `make demo` is this command on the default (10-day, 20k impressions a day) data set; here the
same code path runs on 3 tiny days so CI can afford it. Meta-training starts after 4 days of history
(`rankflow.stages.demo.META_TRAIN_AFTER_DAYS`), so its lines read "0 day(s)" here; tests/training covers it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tiny_marketplace import TINY_GENERATOR

pytestmark = pytest.mark.slow

STAGES = ("generate", "features", "random effects", "meta training", "meta embeddings", "ranker", "promote", "serve")


def test_demo_runs_every_stage_and_ends_with_a_summary(tmp_path: Path):
    from rankflow.cli import app

    data_dir = tmp_path / "demo"
    data_dir.mkdir()
    # Only the configuration: the demo generates the data set itself, as `make demo` does.
    (data_dir / "rankflow.yaml").write_text(yaml.safe_dump({"generator": {**TINY_GENERATOR, "days": 3}}))
    result = CliRunner().invoke(app, ["demo", "--data-dir", str(data_dir)], env={"COLUMNS": "200"})

    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    summary = result.output[result.output.index("rankflow demo"):]
    for stage in STAGES:
        assert f"│ {stage} " in summary, f"summary has no '{stage}' line:\n{summary}"
    assert "Total" in summary and "Reports:" in summary

    days = sorted(p.name for p in (data_dir / "features" / "training_set").glob("dt=*"))
    assert len(days) == 3, days
    serving = json.loads((data_dir / "models" / "serving.json").read_text())
    assert serving, "no promoted ranker in serving.json"
    assert "rank" in result.output and "candidates" in result.output
