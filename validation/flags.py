"""Per-row finiteness flags for numeric and vector columns (NaN and +-inf must never reach a model or
the online store); GX states them as `<column>:<rule> in {True}`."""

from __future__ import annotations

import numpy as np
import pandas as pd

from validation.checkpoint import SEQUENCE_TYPES, Flag


def vector_lengths(values: pd.Series) -> np.ndarray:
    """Length of each row's vector; -1 where the row holds no vector (null, NaN, a scalar)."""
    return np.fromiter((len(value) if isinstance(value, SEQUENCE_TYPES) else -1 for value in values),
                       dtype=np.int64, count=len(values))


def finite_scalar_flag(frame: pd.DataFrame, column: str) -> Flag:
    """True where the value is a finite number (null, NaN and +-inf are not)."""
    values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    return Flag(source=column, rule="finite", passed=pd.Series(np.isfinite(values), index=frame.index))


def vector_flags(frame: pd.DataFrame, column: str) -> tuple[Flag, Flag, int]:
    """Two flags for a vector column and the length they expect.

    `<column>:finite`: the row holds a non-empty vector whose every element is finite.
    `<column>:length_<L>`: the row's vector has L elements, L being the column's most common length.
    """
    vectors = frame[column]
    lengths = vector_lengths(vectors)
    expected = int(pd.Series(lengths).mode().iloc[0]) if len(lengths) else 0
    finite = np.zeros(len(frame), dtype=bool)
    if len(frame) and expected > 0 and (lengths == expected).all():
        # One length (the normal case): stack once and test every element in one vectorised pass.
        finite = np.isfinite(np.stack(vectors.to_numpy())).all(axis=1)
    else:
        for row, vector in enumerate(vectors):
            if lengths[row] > 0:
                finite[row] = bool(np.isfinite(np.asarray(vector, dtype=np.float64)).all())
    index = frame.index
    return (Flag(source=column, rule="finite", passed=pd.Series(finite, index=index)),
            Flag(source=column, rule=f"length_{expected}", passed=pd.Series(lengths == expected, index=index)),
            expected)
