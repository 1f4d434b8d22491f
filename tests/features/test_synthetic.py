"""The synthetic marketplace: deterministic, consistent with its ground truth, with cold start and drift."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from tiny_marketplace import TINY_GENERATOR, generate_tiny
from features.contract import load_raw_schema, read_partitions, read_raw
from features.synthetic import BASIS, MarketplaceTruth
from rankflow.paths import DataPaths

START = TINY_GENERATOR["start_date"]
DAYS = [START + timedelta(days=i) for i in range(TINY_GENERATOR["days"])]


def file_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files_and_another_seed_does_not(tiny_data_dir, tmp_path):
    again = generate_tiny(tmp_path / "again")
    first, second = file_bytes(tiny_data_dir), file_bytes(again)
    assert sorted(first) == sorted(second)
    assert len([name for name in first if name.endswith(".parquet")]) > 3 * TINY_GENERATOR["days"]
    assert [name for name in first if first[name] != second[name]] == []

    other = file_bytes(generate_tiny(tmp_path / "other", seed=8))
    events = f"raw/events/dt={START}/part-0.parquet"
    assert other[events] != first[events]


def test_mean_true_probability_matches_apply_rate_each_day(tiny_data_dir):
    paths = DataPaths(tiny_data_dir)
    for day in DAYS:
        events = read_raw(paths, "events", day=day)
        truth = read_partitions(paths.truth / "events", day=day)
        assert events.event_id.tolist() == truth.event_id.tolist()
        p = truth.true_prob.to_numpy()
        standard_error = np.sqrt((p * (1 - p)).sum()) / len(p)
        assert abs(events.label.mean() - p.mean()) < 4 * standard_error, day


def test_overall_apply_rate_and_position_bias(tiny_data_dir):
    events = read_raw(DataPaths(tiny_data_dir), "events")
    assert 0.05 <= events.label.mean() <= 0.10
    by_position = events.groupby("position").label.mean()
    assert sorted(by_position.index) == list(range(1, 11))
    assert by_position.loc[1] > 1.5 * by_position.loc[10]


def test_events_follow_the_raw_contract(tiny_data_dir):
    paths = DataPaths(tiny_data_dir)
    schema = load_raw_schema(paths)
    assert schema.events.context == ("position",)
    assert schema.members.multi_valued == {"skills": "|"}
    arrow = pq.read_schema(paths.raw_partition("events", START) / "part-0.parquet")
    assert [f"{f.name}:{f.type}" for f in arrow] == [
        "event_id:int64", "member_id:int64", "item_id:int64", "ts:timestamp[us, tz=UTC]", "label:int8",
        "weight:float", "position:int64"]
    members, items = read_raw(paths, "members"), read_raw(paths, "items")
    for day in DAYS:
        events = read_raw(paths, "events", day=day)
        assert len(events) == TINY_GENERATOR["impressions_per_day"]
        assert (events.ts.dt.date == day).all()
        assert events.event_id.is_unique
        assert events.sort_values(["ts", "event_id"]).index.tolist() == events.index.tolist()
        joined = events.merge(members, on="member_id").merge(items, on="item_id")
        assert len(joined) == len(events)  # every event's member and job exist
        assert (joined.ts >= joined.signup_ts).all() and (joined.ts >= joined.posted_ts).all()
        # jobs are open for 30 days
        assert ((joined.ts - joined.posted_ts) < pd.Timedelta(days=30)).all()
    assert members.skills.map(len).between(3, 6).all() and items.skills.map(len).between(3, 6).all()
    assert members.industry.nunique() == 8 and members.seniority.nunique() == 4 and members.region.nunique() == 6
    assert items.company.nunique() > 1


def test_new_members_and_jobs_arrive_every_day_and_are_shown(tiny_data_dir):
    paths = DataPaths(tiny_data_dir)
    for day in DAYS:
        new_members = read_raw(paths, "members", day=day)
        new_jobs = read_raw(paths, "items", day=day)
        assert len(new_members) == 3 and len(new_jobs) == 3  # 1% of 300 members, 100 jobs / 30 days
        assert (new_members.signup_ts.dt.date == day).all()
        events = read_raw(paths, "events", day=day)
        assert events.item_id.isin(new_jobs.item_id).any() or events.member_id.isin(new_members.member_id).any()
    # the starting population arrived over the 30 days before the first day
    assert read_raw(paths, "members", end=START - timedelta(days=1)).shape[0] == TINY_GENERATOR["members"]


def test_member_weights_drift_slowly_and_job_weights_do_not(tiny_data_dir):
    paths = DataPaths(tiny_data_dir)
    truth = MarketplaceTruth()
    first = read_partitions(paths.truth / "member_weights", day=DAYS[0]).set_index("member_id")
    last = read_partitions(paths.truth / "member_weights", day=DAYS[-1]).set_index("member_id")
    assert list(first.columns) == list(BASIS)
    assert len(last) == len(first) + 3 * (len(DAYS) - 1)
    step = (last.loc[first.index] - first).to_numpy()
    expected = truth.drift_std * np.sqrt(len(DAYS) - 1)
    assert 0.9 * expected < step.std() < 1.1 * expected
    assert 0.9 * truth.member_weight_std < first.to_numpy().std() < 1.1 * truth.member_weight_std

    jobs_first = read_partitions(paths.truth / "job_weights", day=DAYS[0]).set_index("item_id")
    jobs_last = read_partitions(paths.truth / "job_weights", day=DAYS[-1]).set_index("item_id")
    both = jobs_first.index.intersection(jobs_last.index)
    assert len(both) > 50
    np.testing.assert_array_equal(jobs_first.loc[both].to_numpy(), jobs_last.loc[both].to_numpy())


def test_params_json_names_flags_seed_and_basis(tiny_data_dir):
    params = json.loads((tiny_data_dir / "truth" / "params.json").read_text())
    assert params["seed"] == 7 and params["generator"]["members"] == 300
    assert params["member_basis"]["names"] == list(BASIS) and params["job_basis"]["names"] == list(BASIS)
    assert params["truth"]["position_bias"] == MarketplaceTruth().position_bias


def test_regenerating_fewer_days_removes_stale_partitions(tmp_path):
    root = generate_tiny(tmp_path / "data", days=3)
    generate_tiny(root, days=2)
    paths = DataPaths(root)
    assert [d.isoformat() for d in pd.to_datetime(read_raw(paths, "events").ts).dt.date.unique()] == [
        "2026-01-01", "2026-01-02"]
    assert not (root / "truth" / "member_weights" / "dt=2026-01-03").exists()


def test_cli_generate_writes_the_data_dir_and_prints_a_summary(tmp_path):
    from rankflow.cli import app

    result = CliRunner().invoke(app, ["generate", "--data-dir", str(tmp_path), "--members", "50", "--jobs", "30",
                                      "--days", "2", "--impressions-per-day", "300", "--seed", "3",
                                      "--start-date", "2026-03-01"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert summary["events"] == 600 and summary["start"] == "2026-03-01" and summary["end"] == "2026-03-02"
    assert (tmp_path / "raw" / "events" / "dt=2026-03-02" / "part-0.parquet").exists()
    assert json.loads((tmp_path / "truth" / "params.json").read_text())["seed"] == 3
