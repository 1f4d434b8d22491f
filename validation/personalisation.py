"""The personalisation suite: GLMix random effects and MAML meta-embeddings before they are written to
the offline table and the online store.

Passes when the view's frame is non-empty; the entity key is non-null and unique (one posterior or
embedding per member / job); and every vector column holds, on every row, a vector of the column's
single length whose every element is finite; float
columns beside the vectors must be finite too. A NaN coefficient must never reach the store: serving
would score every candidate of that member as NaN.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Sequence

import pandas as pd

from validation.checkpoint import gx_modules, run_suite
from validation.flags import finite_scalar_flag, vector_flags
from validation.result import ValidationResult


def suite_name(view: str) -> str:
    return f"personalisation.{view}"


def check_personalisation(
    view: str,
    frame: pd.DataFrame,
    day: date,
    *,
    reports_dir: Path,
    key_column: str,
    vector_columns: Sequence[str],
    raise_on_failure: bool = True,
) -> ValidationResult:
    """Validate day `day` of personalisation view `view` (suite `personalisation.<view>`)."""
    _, gxe = gx_modules()
    expectations = [
        gxe.ExpectTableRowCountToBeBetween(min_value=1, meta={"rule": "the view has rows"}),
        gxe.ExpectColumnValuesToNotBeNull(column=key_column, meta={"rule": "key"}),
        gxe.ExpectColumnValuesToBeUnique(column=key_column, meta={"rule": "key"}),
    ]
    flags = []
    for column in vector_columns:
        if column not in frame.columns:
            expectations.append(gxe.ExpectColumnToExist(column=column))
            continue
        finite, length, expected_length = vector_flags(frame, column)
        flags += [finite, length]
        expectations += [
            gxe.ExpectColumnValuesToBeInSet(column=finite.column, value_set=[True],
                                            meta={"rule": "every element of the vector is finite"}),
            gxe.ExpectColumnValuesToBeInSet(column=length.column, value_set=[True],
                                            meta={"rule": f"every vector has the column's length {expected_length}"}),
        ]
    # Scalar coefficients (e.g. a random-effect intercept stored as its own column) obey the same rule.
    for column in frame.columns:
        if column not in vector_columns and pd.api.types.is_float_dtype(frame[column]):
            flag = finite_scalar_flag(frame, column)
            flags.append(flag)
            expectations.append(gxe.ExpectColumnValuesToBeInSet(column=flag.column, value_set=[True],
                                                                meta={"rule": "value is finite"}))
    return run_suite(suite_name(view), day, frame, expectations, reports_dir=reports_dir, flags=flags,
                     raise_on_failure=raise_on_failure)
