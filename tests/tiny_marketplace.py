"""The tiny synthetic marketplace tests share (a module with a unique name, importable from any test folder;
`conftest` itself is not importable by name once several test folders have one)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import yaml

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
