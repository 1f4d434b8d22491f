"""rankflow.stages.personalise: the daily GLMix stage over a (hand-built) training set, without Feast."""

from __future__ import annotations

import json
import shutil
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest
import torch
from glmix_reference import one_torch_thread  # noqa: F401 (autouse fixture)

from features.contract import read_raw
from rankflow.config import load_settings
from rankflow.paths import atomic_directory
from rankflow.stages.personalise import PersonaliseConfig, load_state, prior_day, update_random_effects

DAYS = [date(2026, 1, 1) + timedelta(days=i) for i in range(3)]


def _write_training_set(settings, day, first_day: bool):
    """The training-set contract's columns for day D, from raw + attributes (the Spark build stands aside)."""
    events = read_raw(settings.paths, "events", day=day)
    members = read_raw(settings.paths, "members", end=day).set_index("member_id")
    items = read_raw(settings.paths, "items", end=day).set_index("item_id")
    m, j = members.loc[events.member_id], items.loc[events.item_id]
    frame = pd.DataFrame({"member_id": events.member_id.values, "item_id": events.item_id.values,
                          "label": events.label.values, "weight": events.weight.values})
    for attribute in ("industry", "seniority"):
        # Day one is cold in the real training set: no features before D, placeholders instead.
        frame[f"m_{attribute}"] = "__unknown__" if first_day else m[attribute].values
        frame[f"j_{attribute}"] = "__unknown__" if first_day else j[attribute].values
    frame["industry_match"] = (m.industry.values == j.industry.values).astype(np.float32)
    frame["log_position"] = np.log(events.position.values).astype(np.float32)
    target = settings.paths.feature_partition("training_set", day)
    with atomic_directory(target) as staging:
        frame.to_parquet(staging / "part-0.parquet", index=False)
    spec = {"label": "label", "weight": "weight", "member": "member_id", "item": "item_id",
            "categorical": ["m_industry", "m_seniority", "j_industry", "j_seniority"], "multi_valued": [],
            "dense": ["industry_match", "log_position"], "embeddings": {}}
    (settings.paths.feature_table("training_set") / "spec.json").write_text(json.dumps(spec))


def test_daily_stage_chains_posteriors_and_rerunning_a_day_is_idempotent(tiny_data_dir, tmp_path):
    root = shutil.copytree(tiny_data_dir, tmp_path / "data")
    settings = load_settings(root)
    for index, day in enumerate(DAYS):
        _write_training_set(settings, day, first_day=index == 0)
    config = PersonaliseConfig()
    results = [update_random_effects(settings, day, config, write_online=False) for day in DAYS]

    assert [r["prior_date"] for r in results] == [None, "2026-01-01", "2026-01-02"]
    assert results[0]["global_part"] == "fixed_effect"
    # Basis from the raw zone, not the cold first-day placeholders: 1 + 8 industries + 4 seniorities.
    state, fixed_effect, meta = load_state(settings, DAYS[2])
    assert state.member.dim == 13 and "industry=software" in _names(meta["member_basis"])
    assert fixed_effect.feature_names == ["industry_match", "log_position"]
    assert fixed_effect.weights[1] < 0  # position bias: lower positions, fewer applies
    assert results[2]["summary"]["member"]["not_converged"] == 0
    assert all(v["success"] for v in results[2]["validation"].values())

    # Re-running day 2 after day 3 exists uses day 1's state as its prior and reproduces day 2 exactly.
    before, _, _ = load_state(settings, DAYS[1])
    again = update_random_effects(settings, DAYS[1], config, write_online=False)
    after, _, _ = load_state(settings, DAYS[1])
    assert again["prior_date"] == "2026-01-01" and prior_day(settings, DAYS[1]) == DAYS[0]
    torch.testing.assert_close(after.member.mean, before.member.mean, rtol=0, atol=0)
    torch.testing.assert_close(after.job.precision, before.job.precision, rtol=0, atol=0)


def test_missing_training_set_names_the_partition(tiny_data_dir, tmp_path):
    settings = load_settings(shutil.copytree(tiny_data_dir, tmp_path / "data"))
    with pytest.raises(FileNotFoundError, match="training_set"):
        update_random_effects(settings, DAYS[0], write_online=False)


def _names(basis_json):
    return ["intercept"] + [f"{c}={v}" for c, vocab in basis_json["columns"] for v in vocab]
