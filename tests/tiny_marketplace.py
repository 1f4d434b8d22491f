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


TRAINING_SET_SPEC = {"label": "label", "weight": "weight", "member": "member_id", "item": "item_id",
                     "categorical": ["m_industry", "m_seniority", "j_industry", "j_seniority"], "multi_valued": [],
                     "dense": ["industry_match", "seniority_match"], "embeddings": {}}


def write_training_set_from_raw(root: Path, days: list[date]) -> Path:
    """A training set (docs/contracts.md, "Training set") for `days` of the marketplace in `root`, built from its
    raw zone without Spark: event ids (so truth/ matches them), labels, logged positions, member and job
    attributes and two match features. Returns root/features/training_set."""
    import json

    import numpy as np
    import pandas as pd

    from features.contract import read_raw
    from rankflow.paths import DataPaths, atomic_directory

    paths = DataPaths(root)
    for day in days:
        events = read_raw(paths, "events", day=day)
        members = read_raw(paths, "members", end=day).set_index("member_id").loc[events.member_id]
        items = read_raw(paths, "items", end=day).set_index("item_id").loc[events.item_id]
        frame = pd.DataFrame({"event_id": events.event_id.values, "member_id": events.member_id.values,
                              "item_id": events.item_id.values, "label": events.label.values,
                              "weight": events.weight.values, "position": events.position.values})
        for attribute in ("industry", "seniority"):
            frame[f"m_{attribute}"] = members[attribute].values
            frame[f"j_{attribute}"] = items[attribute].values
            frame[f"{attribute}_match"] = (members[attribute].values == items[attribute].values).astype(np.float32)
        with atomic_directory(paths.feature_partition("training_set", day)) as staging:
            frame.to_parquet(staging / "part-0.parquet", index=False)
    folder = paths.feature_table("training_set")
    (folder / "spec.json").write_text(json.dumps(TRAINING_SET_SPEC, indent=1))
    return folder
