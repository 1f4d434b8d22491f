"""The raw-events suite: a good day passes; each bad input fails with a summary that names the
expectation, the column and what was observed."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.validation.frames import DAY, EVENT_COLUMNS, ITEMS, MEMBERS, good_events
from validation import ValidationFailed, check_raw_events


def run(events, reports_dir, **overrides):
    arguments = dict(expected_columns=EVENT_COLUMNS, known_member_ids=set(MEMBERS.tolist()),
                     known_item_ids=ITEMS, reports_dir=reports_dir)
    return check_raw_events(events, DAY, **{**arguments, **overrides})


def test_good_day_passes_and_keeps_its_result(reports_dir):
    result = run(good_events(), reports_dir)
    assert result.success and result.failures == []
    assert result.statistics["unsuccessful_expectations"] == 0
    assert result.statistics["evaluated_expectations"] >= 15
    assert result.report_path == reports_dir / "validation" / "raw_events" / f"dt={DAY}" / "result.json"
    stored = json.loads(result.report_path.read_text())
    assert stored["success"] is True and stored["day"] == DAY.isoformat()
    assert stored["gx_result"]["statistics"]["success_percent"] == 100.0
    assert result.data_docs_page.is_file() and result.data_docs_page.suffix == ".html"


def _with_null_member(events):
    events["member_id"] = events["member_id"].astype("Int64")
    events.loc[3, "member_id"] = pd.NA
    return events


def _with_duplicate_event_id(events):
    events.loc[5, "event_id"] = events.loc[4, "event_id"]
    return events


def _with_ts_next_day(events):
    events.loc[7, "ts"] = pd.Timestamp("2026-01-06 00:00:00", tz="UTC")  # the first instant after the day
    return events


def _with_label_two(events):
    events.loc[9, "label"] = 2
    return events


def _with_unknown_members(events):
    events.loc[:9, "member_id"] = 999_999  # 10 of 200 rows: 5 %
    return events


# (how to break the day, expectation that must fail, column it names, text the summary must show)
BAD_INPUTS = {
    "null member id": (_with_null_member, "expect_column_values_to_not_be_null", "member_id", "null at rows [3]"),
    "duplicate event id": (_with_duplicate_event_id, "expect_column_values_to_be_unique", "event_id", "2 of 200 rows"),
    "timestamp outside the day": (_with_ts_next_day, "expect_column_values_to_be_between", "ts",
                                  "examples [2026-01-06 00:00:00+00:00]"),
    "label of 2": (_with_label_two, "expect_column_values_to_be_in_set", "label", "examples [2]"),
    "unknown members": (_with_unknown_members, "expect_column_values_to_be_in_set", "member_id:known",
                        "10 of 200 rows (5.0000%) unexpected"),
    "extra column": (lambda events: events.assign(surprise=1), "expect_table_columns_to_match_set", "<table>",
                     "unexpected columns [surprise]"),
    "missing column": (lambda events: events.drop(columns="weight"), "expect_table_columns_to_match_set",
                       "<table>", "missing columns [weight]"),
    "renamed column": (lambda events: events.rename(columns={"position": "rank"}), "expect_table_columns_to_match_set",
                       "<table>", "missing columns [position], unexpected columns [rank]"),
    "label widened to int64": (lambda events: events.astype({"label": "int64"}), "expect_column_values_to_be_of_type",
                               "label", "observed int64, expected type int8"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_fails_naming_expectation_column_and_observation(case, reports_dir):
    breaker, expectation, column, observed = BAD_INPUTS[case]
    with pytest.raises(ValidationFailed) as caught:
        run(breaker(good_events()), reports_dir)
    failure = caught.value
    assert failure.suite == "raw_events" and failure.day == DAY
    line = next(line for line in failure.result.failures if line.startswith(f"{expectation} on {column}"))
    assert observed in line, failure.summary
    assert str(failure.report_path) in failure.summary
    assert json.loads(failure.report_path.read_text())["success"] is False


def test_unknown_member_examples_show_the_ids(reports_dir):
    result = run(_with_unknown_members(good_events()), reports_dir, raise_on_failure=False)
    assert not result.success
    assert "example member_id values [999999, 999999, 999999, 999999, 999999] at rows [0, 1, 2, 3, 4]" in result.summary


def test_unknown_share_within_the_bound_passes(reports_dir):
    result = run(_with_unknown_members(good_events()), reports_dir, max_unknown_share=0.06)
    assert result.success
    assert not run(_with_unknown_members(good_events()), reports_dir, max_unknown_share=0.04,
                   raise_on_failure=False).success


def test_empty_day_fails(reports_dir):
    result = run(good_events().iloc[:0], reports_dir, raise_on_failure=False)
    assert any(line.startswith("expect_table_row_count_to_be_between") and "observed 0" in line
               for line in result.failures)


def test_generated_raw_day_obeys_the_contract(tiny_data_dir, tmp_path):
    """The embedded generator's events pass the suite as written to the raw zone."""
    from rankflow.paths import DataPaths

    paths = DataPaths(tiny_data_dir)
    day_dirs = sorted(paths.raw_table("events").glob("dt=*"))
    day = pd.Timestamp(day_dirs[1].name.removeprefix("dt=")).date()
    events = pd.read_parquet(day_dirs[1])
    members = pd.concat(pd.read_parquet(part) for part in paths.raw_table("members").glob("dt=*")
                        if part.name <= day_dirs[1].name)
    items = pd.concat(pd.read_parquet(part) for part in paths.raw_table("items").glob("dt=*")
                      if part.name <= day_dirs[1].name)
    result = check_raw_events(events, day, expected_columns=list(events.columns),
                              known_member_ids=members["member_id"], known_item_ids=items["item_id"],
                              reports_dir=tmp_path, raise_on_failure=False)
    assert result.success, result.summary
    assert result.statistics["rows"] == len(events) > 0
