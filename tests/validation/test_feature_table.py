"""The feature-table suite: ranges, null shares, unique keys, and the day-over-day row count and
mean-drift checks against the previous day's partition."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.validation.frames import DAY
from validation import ValidationFailed, check_feature_table
from validation.feature_table import drift_interval


def member_table(rows: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "member_id": np.arange(rows, dtype=np.int64),
        "applies_7d": rng.poisson(2.0, rows).astype(np.float64),
        "apply_rate_7d": rng.beta(2, 8, rows),
        "days_since_apply": np.where(rng.random(rows) < 0.3, np.nan, rng.integers(0, 28, rows)),
        "m_skills": [["python", "sql"][: 1 + row % 2] for row in range(rows)],
    })


def run(frame, previous, reports_dir, **overrides):
    arguments = dict(previous=previous, reports_dir=reports_dir, key_columns=["member_id"],
                     drift_columns=["applies_7d", "apply_rate_7d"], ranges={"apply_rate_7d": (0.0, 1.0)},
                     max_null_share={"days_since_apply": 0.5})
    return check_feature_table("member_daily", frame, DAY, **{**arguments, **overrides})


def failure_line(caught, expectation, column):
    return next(line for line in caught.value.result.failures if line.startswith(f"{expectation} on {column}"))


def test_next_day_with_the_same_distribution_passes(reports_dir):
    result = run(member_table(seed=1), member_table(seed=0), reports_dir)
    assert result.success, result.summary
    assert result.suite == "features.member_daily"
    assert result.report_path.parent.name == f"dt={DAY}"


def test_first_day_without_previous_skips_the_day_over_day_checks(reports_dir):
    assert run(member_table(), None, reports_dir).success


def test_drifted_mean_fails_with_observed_and_allowed_interval(reports_dir):
    drifted = member_table(seed=1)
    drifted["apply_rate_7d"] *= 3.0  # mean ~0.2 -> ~0.6: a 200 % relative change
    previous = member_table(seed=0)
    with pytest.raises(ValidationFailed) as caught:
        run(drifted, previous, reports_dir)
    line = failure_line(caught, "expect_column_mean_to_be_between", "apply_rate_7d")
    previous_mean, observed = previous["apply_rate_7d"].mean(), drifted["apply_rate_7d"].mean()
    low, high = drift_interval(previous_mean, 0.5)
    assert f"observed {observed:.6g}" in line and f"[{low:.6g}, {high:.6g}]" in line
    assert "50% relative change" in line
    assert all("applies_7d" not in line for line in caught.value.result.failures)  # the other column did not drift


def test_drift_bound_is_a_relative_change():
    assert drift_interval(0.2, 0.5) == pytest.approx((0.1, 0.3))
    assert drift_interval(-4.0, 0.25) == pytest.approx((-5.0, -3.0))
    low, high = drift_interval(0.0, 0.5)  # floor: a column that was all zeros may not move at all
    assert -1e-8 < low < 0 < high < 1e-8


def test_row_count_collapse_fails(reports_dir):
    with pytest.raises(ValidationFailed) as caught:
        run(member_table(rows=100, seed=1), member_table(rows=300), reports_dir)
    line = failure_line(caught, "expect_table_row_count_to_be_between", "<table>")
    assert "observed 100, expected within [150, 600]" in line


def test_out_of_range_value_and_null_share_and_duplicate_key_fail(reports_dir):
    frame = member_table(seed=1)
    frame.loc[4, "apply_rate_7d"] = 1.5
    frame.loc[:200, "days_since_apply"] = np.nan  # 67 % null > 50 % allowed
    frame.loc[9, "member_id"] = 8
    frame.loc[11, "applies_7d"] = np.nan  # no nulls allowed in an unlisted column
    result = run(frame, None, reports_dir, raise_on_failure=False)
    failures = "\n".join(result.failures)
    assert "expect_column_values_to_be_between on apply_rate_7d: 1 of 300 rows" in failures
    assert "examples [1.5]" in failures
    assert "expect_column_values_to_not_be_null on days_since_apply (null share at most 0.5)" in failures
    assert "expect_column_values_to_be_unique on member_id (key): 2 of 300 rows" in failures
    assert "expect_column_values_to_not_be_null on applies_7d (null share at most 0): 1 of 300 rows" in failures
    assert len(result.failures) == 4


def test_compound_key(reports_dir):
    frame = pd.DataFrame({"member_id": [1, 1, 2], "industry": ["a", "b", "a"], "rate": [0.1, 0.2, 0.3]})
    assert check_feature_table("affinity", frame, DAY, previous=None, reports_dir=reports_dir,
                               key_columns=["member_id", "industry"]).success
    frame.loc[1, "industry"] = "a"
    result = check_feature_table("affinity", frame, DAY, previous=None, reports_dir=reports_dir,
                                 key_columns=["member_id", "industry"], raise_on_failure=False)
    assert [line.split(":")[0] for line in result.failures] == [
        "expect_compound_columns_to_be_unique on member_id, industry (key)"]
