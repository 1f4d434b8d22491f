"""Shared fixtures for every area's tests.

`tiny_data_dir`: one small generated marketplace per test session (~300 members, 100 jobs, 4 days,
2,000 impressions a day; about a second to build). Treat it as read-only: copy it (`shutil.copytree`)
before writing into it. `load_settings(tiny_data_dir)` returns Settings whose `generator` matches it.
"""

from __future__ import annotations

import sys
from datetime import date
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # the packages import even without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))

TINY_GENERATOR = {"members": 300, "jobs": 100, "days": 4, "impressions_per_day": 2_000, "seed": 7,
                  "start_date": date(2026, 1, 1)}


def generate_tiny(root: Path, **overrides) -> Path:
    """Generate a tiny marketplace into `root` (and its rankflow.yaml) and return `root`."""
    from features.synthetic import generate
    from rankflow.config import GeneratorSettings
    from rankflow.paths import DataPaths

    values = {**TINY_GENERATOR, **overrides}
    root.mkdir(parents=True, exist_ok=True)
    (root / "rankflow.yaml").write_text(yaml.safe_dump({"generator": values}, sort_keys=False))
    generate(GeneratorSettings(**values), DataPaths(root))
    return root


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a generated tiny data directory, shared by the whole session (do not modify it)."""
    return generate_tiny(tmp_path_factory.mktemp("tiny_data"))
