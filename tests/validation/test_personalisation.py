"""The personalisation suite: a NaN (or inf) in a random-effect or meta-embedding vector never passes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.validation.frames import DAY
from validation import ValidationFailed, check_personalisation


def embeddings(rows: int = 50, dim: int = 8) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"member_id": np.arange(rows, dtype=np.int64),
                         "meta_embedding": list(rng.normal(size=(rows, dim)).astype(np.float32)),
                         "intercept": rng.normal(size=rows)})


def run(frame, reports_dir, **overrides):
    return check_personalisation("meta_embedding", frame, DAY, reports_dir=reports_dir, key_column="member_id",
                                 vector_columns=["meta_embedding"], **overrides)


def test_good_embeddings_pass(reports_dir):
    result = run(embeddings(), reports_dir)
    assert result.success, result.summary
    assert result.suite == "personalisation.meta_embedding"


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_one_non_finite_element_fails(bad, reports_dir):
    frame = embeddings()
    vector = frame.at[13, "meta_embedding"].copy()
    vector[5] = bad
    frame.at[13, "meta_embedding"] = vector
    with pytest.raises(ValidationFailed) as caught:
        run(frame, reports_dir)
    (line,) = caught.value.result.failures
    assert line.startswith("expect_column_values_to_be_in_set on meta_embedding:finite")
    assert "1 of 50 rows" in line and f"example meta_embedding values [{{[5]={bad}}}] at rows [13]" in line


def test_list_vectors_missing_vectors_and_length_mismatch(reports_dir):
    frame = embeddings()
    frame["meta_embedding"] = [list(map(float, vector)) for vector in frame["meta_embedding"]]  # lists, not arrays
    assert run(frame, reports_dir).success
    frame.at[3, "meta_embedding"] = None
    frame.at[4, "meta_embedding"] = [1.0, 2.0]
    result = run(frame, reports_dir, raise_on_failure=False)
    failures = "\n".join(result.failures)
    assert "meta_embedding:finite" in failures and "2 of 50 rows" in failures
    assert "every vector has the column's length 8" in failures


def test_nan_scalar_coefficient_and_duplicate_member_fail(reports_dir):
    frame = embeddings()
    frame.loc[2, "intercept"] = np.nan
    frame.loc[7, "member_id"] = 6
    result = run(frame, reports_dir, raise_on_failure=False)
    assert sorted(line.split(" (")[0] for line in result.failures) == [
        "expect_column_values_to_be_in_set on intercept:finite",
        "expect_column_values_to_be_unique on member_id",
    ]
