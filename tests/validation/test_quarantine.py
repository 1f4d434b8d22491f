"""A failing partition leaves its zone in one rename and keeps its report beside it."""

from __future__ import annotations

import json

import pytest

from tests.validation.frames import DAY, EVENT_COLUMNS, ITEMS, MEMBERS, good_events
from validation import ValidationFailed, check_raw_events, quarantine


def land(events, root):
    partition = root / "raw" / "events" / f"dt={DAY}"
    partition.mkdir(parents=True)
    events.to_parquet(partition / "part-0.parquet")
    return partition


def failing(events, reports_dir):
    with pytest.raises(ValidationFailed) as caught:
        check_raw_events(events, DAY, expected_columns=EVENT_COLUMNS, known_member_ids=MEMBERS,
                         known_item_ids=ITEMS, reports_dir=reports_dir)
    return caught.value


def test_quarantine_moves_the_partition_and_leaves_the_report(tmp_path):
    events = good_events()
    events.loc[5, "event_id"] = events.loc[6, "event_id"]
    partition = land(events, tmp_path)
    failure = failing(events, tmp_path / "reports")
    target = tmp_path / "quarantine" / "events" / f"dt={DAY}"

    assert quarantine(partition, target, failure) == target
    assert not partition.exists()
    assert sorted(path.name for path in target.iterdir()) == ["partition", "result.json", "summary.txt"]
    assert (target / "partition" / "part-0.parquet").stat().st_size > 0
    assert "expect_column_values_to_be_unique on event_id" in (target / "summary.txt").read_text()
    assert json.loads((target / "result.json").read_text())["success"] is False
    assert sorted(path.name for path in target.parent.iterdir()) == [f"dt={DAY}"]  # no staging left behind


def test_quarantining_the_day_again_replaces_the_earlier_quarantine(tmp_path):
    first = good_events()
    first.loc[0, "label"] = 2
    target = tmp_path / "quarantine" / "events" / f"dt={DAY}"
    quarantine(land(first, tmp_path), target, failing(first, tmp_path / "reports"))
    second = good_events().drop(columns="weight")
    quarantine(land(second, tmp_path), target, failing(second, tmp_path / "reports"))
    summary = (target / "summary.txt").read_text()
    assert "missing columns [weight]" in summary
    assert "expect_column_values_to_be_in_set on label" not in summary  # the first failure's report is gone


def test_missing_partition_is_a_clear_error(tmp_path):
    events = good_events()
    events.loc[0, "label"] = 2
    with pytest.raises(FileNotFoundError, match="no such partition"):
        quarantine(tmp_path / "nowhere", tmp_path / "q", failing(events, tmp_path / "reports"))
