"""The feature-table suite: one day of a Spark feature table, checked alone and against the day before.

Alone: non-empty, unique non-null keys, values inside configured ranges, null share per column at most
the configured bound. Against the previous day's partition of the same table (when there is one):

- row count: n_D / n_{D-1} must lie within `row_count_bounds` (a collapse or an explosion of a day);
- drift of column means: for each drift column c, with m_D the mean of c on day D,

      relative_change(c) = |m_D - m_{D-1}| / max(|m_{D-1}|, DRIFT_FLOOR)

  must not exceed `drift_bound`. The floor keeps a column whose mean was exactly 0 yesterday from
  dividing by zero (any change of such a column then counts as drift, which is what we want to see).
  It is stated to GX as `expect_column_mean_to_be_between(m_{D-1} -/+ drift_bound * scale)`, so the
  report shows the observed mean against the allowed interval.
"""

from __future__ import annotations

import math
from datetime import date
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from validation.checkpoint import gx_modules, run_suite
from validation.result import ValidationResult

DRIFT_FLOOR = 1e-9


def suite_name(table: str) -> str:
    return f"features.{table}"


def drift_interval(previous_mean: float, drift_bound: float) -> tuple[float, float]:
    """The means of today that are within `drift_bound` relative change of `previous_mean`."""
    scale = max(abs(previous_mean), DRIFT_FLOOR)
    return previous_mean - drift_bound * scale, previous_mean + drift_bound * scale


def _null_share_bound(max_null_share: float | Mapping[str, float], column: str) -> float:
    if isinstance(max_null_share, Mapping):
        return float(max_null_share.get(column, 0.0))
    return float(max_null_share)


def check_feature_table(
    table: str,
    frame: pd.DataFrame,
    day: date,
    *,
    previous: pd.DataFrame | None,
    reports_dir: Path,
    key_columns: Sequence[str],
    drift_columns: Sequence[str] = (),
    drift_bound: float = 0.5,
    row_count_bounds: tuple[float, float] = (0.5, 2.0),
    ranges: Mapping[str, tuple[float | None, float | None]] | None = None,
    max_null_share: float | Mapping[str, float] = 0.0,
    raise_on_failure: bool = True,
) -> ValidationResult:
    """Validate day `day` of feature table `table` (suite `features.<table>`).

    `previous`: the same table's partition for the day before, or None on the first day (then the
    row-count and drift checks are skipped, and the result says so in its expectations list).
    `ranges`: column -> (low, high), either side None for open. `max_null_share`: one bound for every
    column, or column -> bound (unlisted columns: 0). Key columns must never be null whatever the bound.
    """
    _, gxe = gx_modules()
    ranges = ranges or {}
    low_ratio, high_ratio = row_count_bounds
    expectations = []

    if previous is not None and len(previous):
        expectations.append(gxe.ExpectTableRowCountToBeBetween(
            min_value=max(1, math.ceil(low_ratio * len(previous))), max_value=math.floor(high_ratio * len(previous)),
            meta={"rule": f"rows within {low_ratio:g}x..{high_ratio:g}x of the previous day's {len(previous)}"}))
    else:
        expectations.append(gxe.ExpectTableRowCountToBeBetween(min_value=1, meta={"rule": "the table has rows"}))

    for column in key_columns:
        expectations.append(gxe.ExpectColumnValuesToNotBeNull(column=column, meta={"rule": "key"}))
    if len(key_columns) == 1:
        expectations.append(gxe.ExpectColumnValuesToBeUnique(column=key_columns[0], meta={"rule": "key"}))
    elif key_columns:
        expectations.append(gxe.ExpectCompoundColumnsToBeUnique(column_list=list(key_columns), meta={"rule": "key"}))

    for column in frame.columns:
        bound = _null_share_bound(max_null_share, column)
        if column in key_columns or bound >= 1.0:
            continue
        expectations.append(gxe.ExpectColumnValuesToNotBeNull(
            column=column, mostly=1.0 - bound, meta={"rule": f"null share at most {bound:g}"}))

    for column, (low, high) in ranges.items():
        expectations.append(gxe.ExpectColumnValuesToBeBetween(column=column, min_value=low, max_value=high))

    if previous is not None and len(previous):
        for column in drift_columns:
            if column not in previous.columns:
                continue  # new today: nothing to drift from (a column missing today fails below)
            previous_mean = float(pd.to_numeric(previous[column], errors="coerce").mean())
            if math.isnan(previous_mean):
                continue
            low, high = drift_interval(previous_mean, drift_bound)
            expectations.append(gxe.ExpectColumnMeanToBeBetween(
                column=column, min_value=low, max_value=high,
                meta={"rule": f"mean within {drift_bound:.0%} relative change of the previous day's {previous_mean:.6g}"}))
    return run_suite(suite_name(table), day, frame, expectations, reports_dir=reports_dir,
                     raise_on_failure=raise_on_failure)
