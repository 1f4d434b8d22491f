"""Test data for the meta-learning tests: the synthetic marketplace as a training-set-shaped event frame.

The real training set (features/training_set) needs Spark and Feast; these tests need seconds. The frame
here has the same job-side columns the training set carries for the generator's schema (j_industry,
j_seniority, j_region, j_company categorical; j_skills multi-valued; j_salary dense), joined from the raw
zone, plus member attributes for the logistic-model test.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from tests.conftest import generate_tiny

MEMBERS_AND_EVENTS = {"members": 3000, "jobs": 750, "days": 8, "impressions_per_day": 15_000, "seed": 3}
JOB_CATEGORICAL = ("j_industry", "j_seniority", "j_region")


def generate_marketplace(root: Path, **overrides) -> Path:
    return generate_tiny(root, **{**MEMBERS_AND_EVENTS, **overrides})


def event_frame(root: Path) -> pd.DataFrame:
    """Every raw event joined to its job's attributes (j_*) and its member's attributes (m_*)."""
    from features.contract import read_raw
    from rankflow.paths import DataPaths

    paths = DataPaths(root)
    events = read_raw(paths, "events")
    items = read_raw(paths, "items").drop(columns=["posted_ts"])
    members = read_raw(paths, "members").drop(columns=["signup_ts"])
    items = items.rename(columns={c: f"j_{c}" for c in items.columns if c != "item_id"})
    members = members.rename(columns={c: f"m_{c}" for c in members.columns if c != "member_id"})
    frame = events.merge(items, on="item_id", how="left").merge(members, on="member_id", how="left")
    frame["j_salary"] = frame["j_salary"].astype(np.float32)
    return frame.sort_values(["ts", "event_id"], kind="stable").reset_index(drop=True)


def write_training_set(data_dir: Path, frame: pd.DataFrame) -> dict:
    """features/training_set/dt=D/part-0.parquet per event day + spec.json, as the features stage lays it out."""
    from rankflow.paths import DataPaths, dt_partition

    paths = DataPaths(data_dir)
    table = paths.feature_table("training_set")
    for day, part in frame.groupby(frame["ts"].dt.date):
        target = table / dt_partition(day)
        target.mkdir(parents=True, exist_ok=True)
        part.to_parquet(target / "part-0.parquet", index=False)
    spec = {"label": "label", "weight": "weight", "member": "member_id", "item": "item_id",
            "categorical": ["m_industry", "m_seniority", "m_region", "j_company", *JOB_CATEGORICAL],
            "multi_valued": ["m_skills", "j_skills"], "dense": ["m_years_experience", "j_salary"],
            "embeddings": {}}
    (table / "spec.json").write_text(json.dumps(spec))
    return spec
