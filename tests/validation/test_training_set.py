"""The training-set suite: label rate bounds, no duplicate rows, finite dense features."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.validation.frames import DAY, good_events
from validation import ValidationFailed, check_training_set


def training_rows(seed: int = 0) -> pd.DataFrame:
    events = good_events(seed=seed)
    rng = np.random.default_rng(seed)
    return events.assign(m_rate_7d=rng.random(len(events)).astype(np.float32),
                         j_age_days=rng.integers(0, 30, len(events)).astype(np.float32),
                         m_industry="tech")


def test_good_training_day_passes(reports_dir):
    result = check_training_set(training_rows(), DAY, reports_dir=reports_dir)
    assert result.success, result.summary
    assert result.report_path.parent.parent.name == "training_set"


def test_label_rate_outside_bounds_fails_with_the_observed_rate(reports_dir):
    rows = training_rows()
    rows["label"] = np.int8(0)  # no applies at all: a broken join, not a quiet day
    with pytest.raises(ValidationFailed) as caught:
        check_training_set(rows, DAY, reports_dir=reports_dir)
    assert any(line.startswith("expect_column_mean_to_be_between on label (label rate): observed 0, "
                               "expected within [0.001, 0.5]") for line in caught.value.result.failures)


def test_duplicate_rows_fail(reports_dir):
    rows = training_rows()
    rows = pd.concat([rows, rows.iloc[[10]]], ignore_index=True)
    result = check_training_set(rows, DAY, reports_dir=reports_dir, raise_on_failure=False)
    assert any(line.startswith("expect_column_values_to_be_unique on event_id") and "2 of 201 rows" in line
               for line in result.failures)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_dense_value_fails(bad, reports_dir):
    rows = training_rows()
    rows.loc[17, "m_rate_7d"] = bad
    result = check_training_set(rows, DAY, reports_dir=reports_dir, raise_on_failure=False)
    assert result.failures == [line for line in result.failures if "m_rate_7d:finite" in line]
    assert len(result.failures) == 1 and f"example m_rate_7d values [{bad}]" in result.failures[0]


def test_named_dense_column_missing_fails(reports_dir):
    result = check_training_set(training_rows(), DAY, reports_dir=reports_dir, dense_columns=["m_rate_7d", "gone"],
                                raise_on_failure=False)
    assert [line.split(":")[0] for line in result.failures] == ["expect_column_to_exist on gone"]
