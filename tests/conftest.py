"""Shared fixtures for every area's tests.

`tiny_data_dir`: one small generated marketplace per test session (~300 members, 100 jobs, 4 days,
2,000 impressions a day; about a second to build). Treat it as read-only: copy it (`shutil.copytree`)
before writing into it. `load_settings(tiny_data_dir)` returns Settings whose `generator` matches it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # the packages import even without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))

from tiny_marketplace import TINY_GENERATOR, generate_tiny  # noqa: E402  (re-exported for fixtures)


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a generated tiny data directory, shared by the whole session (do not modify it)."""
    return generate_tiny(tmp_path_factory.mktemp("tiny_data"))
