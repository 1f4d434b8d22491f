"""Fixtures for the validation tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def reports_dir(tmp_path: Path) -> Path:
    return tmp_path / "reports"
