"""The training-set suite: one day of ranker training rows before any model reads them.

Passes when the set is non-empty; the key (one row per event) is non-null and unique; the label is
0 or 1 and the day's label rate (mean of the label) lies within `label_rate_bounds` (a rate of 0 or
one far off the usual apply rate means a broken join, not a real day); and every dense feature value
is finite (NaN or inf would poison a gradient step).
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Sequence

import pandas as pd

from validation.checkpoint import gx_modules, run_suite
from validation.flags import finite_scalar_flag
from validation.result import ValidationResult

SUITE = "training_set"


def dense_columns_of(frame: pd.DataFrame, exclude: Sequence[str]) -> list[str]:
    """Float columns: the dense model inputs when the caller does not name them (spec.json's `dense`)."""
    return [column for column in frame.columns
            if column not in exclude and pd.api.types.is_float_dtype(frame[column])]


def check_training_set(
    frame: pd.DataFrame,
    day: date,
    *,
    reports_dir: Path,
    label_column: str = "label",
    key_column: str = "event_id",
    label_rate_bounds: tuple[float, float] = (0.001, 0.5),
    dense_columns: Sequence[str] | None = None,
    raise_on_failure: bool = True,
) -> ValidationResult:
    """Validate day `day` of the training set. `dense_columns`: default every float column except the
    label and the `weight` column (pass spec.json's `dense` list to be exact)."""
    _, gxe = gx_modules()
    low, high = label_rate_bounds
    if dense_columns is None:
        dense_columns = dense_columns_of(frame, exclude=(label_column, key_column, "weight"))
    expectations = [
        gxe.ExpectTableRowCountToBeBetween(min_value=1, meta={"rule": "the day has training rows"}),
        gxe.ExpectColumnValuesToNotBeNull(column=key_column, meta={"rule": "key"}),
        gxe.ExpectColumnValuesToBeUnique(column=key_column, meta={"rule": "key: no duplicate rows"}),
        gxe.ExpectColumnValuesToNotBeNull(column=label_column),
        gxe.ExpectColumnValuesToBeInSet(column=label_column, value_set=[0, 1]),
        gxe.ExpectColumnMeanToBeBetween(column=label_column, min_value=low, max_value=high,
                                        meta={"rule": "label rate"}),
    ]
    flags = [finite_scalar_flag(frame, column) for column in dense_columns if column in frame.columns]
    expectations += [gxe.ExpectColumnValuesToBeInSet(column=flag.column, value_set=[True],
                                                     meta={"rule": "dense feature is finite"})
                     for flag in flags]
    # A named dense column that is absent is a contract break: GX reports it as not evaluable.
    expectations += [gxe.ExpectColumnToExist(column=column) for column in dense_columns if column not in frame.columns]
    return run_suite(SUITE, day, frame, expectations, reports_dir=reports_dir, flags=flags,
                     raise_on_failure=raise_on_failure)
