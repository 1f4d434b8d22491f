"""One readable line per failed expectation: which expectation, which column, observed vs expected,
and a few example values (for derived flag columns, examples of the source column's values)."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd

EXAMPLES = 5


def _short(value: Any, limit: int = 8) -> str:
    """Readable, bounded rendering of a value or a list of values."""
    if isinstance(value, (list, tuple, set, np.ndarray)):
        items = list(value)
        text = ", ".join(_short(item) for item in items[:limit])
        return f"[{text}{', ...' if len(items) > limit else ''}]"
    if isinstance(value, float):
        return f"{value:.6g}"
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:  # numpy scalars
            return _short(value.item())
        except (ValueError, AttributeError):
            pass
    return str(value)


def _expected(kwargs: Mapping[str, Any]) -> str:  # noqa: C901 (one branch per kind of bound)
    """The expectation's own bounds, phrased the way a person would state them."""
    parts = []
    if "column_set" in kwargs:
        parts.append(f"exactly the columns {_short(sorted(kwargs['column_set']), 50)}")
    if "value_set" in kwargs:
        parts.append(f"values in {_short(kwargs['value_set'])}")
    if "type_" in kwargs:
        parts.append(f"type {kwargs['type_']}")
    if "type_list" in kwargs:
        parts.append(f"type in {_short(kwargs['type_list'])}")
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    if low is not None or high is not None:
        left = "(" if kwargs.get("strict_min") else "["
        right = ")" if kwargs.get("strict_max") else "]"
        parts.append(f"within {left}{_short(low) if low is not None else '-inf'}, "
                     f"{_short(high) if high is not None else 'inf'}{right}")
    mostly = kwargs.get("mostly")
    if mostly is not None and mostly < 1.0:
        parts.append(f"for at least {mostly:.4%} of rows")
    return "; ".join(parts) or "the expectation to hold"


def _example(value: Any, rule: str) -> Any:
    """An offending value as a person wants to see it: for a vector that is not finite, where it is not."""
    if rule == "finite" and isinstance(value, (list, tuple, np.ndarray)):
        elements = np.asarray(value, dtype=np.float64)
        positions = np.flatnonzero(~np.isfinite(elements))[:3]
        return "{" + ", ".join(f"[{position}]={elements[position]}" for position in positions) + "}"
    return value


def describe_failure(outcome: Any, frame: pd.DataFrame, flags: Mapping[str, Any]) -> str:
    """Render one failed GX `ExpectationValidationResult` as a line.

    `frame` is the caller's frame (not the one GX saw); `flags` maps a flag column (e.g.
    `member_id:known`) to its `Flag`, so the examples show offending member ids rather than `False`.
    """
    config = outcome.expectation_config
    kwargs = dict(config.kwargs)
    column = kwargs.get("column") or ", ".join(kwargs.get("column_list", []) or []) or "<table>"
    rule = (config.meta or {}).get("rule")
    head = f"{config.type} on {column}" + (f" ({rule})" if rule else "")
    info = outcome.exception_info or {}
    if info.get("raised_exception"):
        return f"{head}: could not be evaluated: {info.get('exception_message')}"

    result = outcome.result or {}
    if "column_set" in kwargs:  # flag columns are ours, not the data's: keep them out of the schema
        kwargs["column_set"] = [column for column in kwargs["column_set"] if column not in flags]
    expected = _expected(kwargs)
    if config.type.endswith("_to_be_unique"):
        expected = "no duplicates"
    elif config.type.endswith("_to_not_be_null") and (kwargs.get("mostly") or 1.0) >= 1.0:
        expected = "no nulls"
    details = result.get("details") or {}
    mismatched = details.get("mismatched") if isinstance(details, dict) else None
    if mismatched:
        missing = [column for column in mismatched.get("missing", []) if column not in flags]
        extra = [column for column in mismatched.get("unexpected", []) if column not in flags]
        return (f"{head}: schema changed: missing columns {_short(missing, 50)}, "
                f"unexpected columns {_short(extra, 50)}; expected {expected}")
    if "observed_value" in result:
        return f"{head}: observed {_short(result['observed_value'], 50)}, expected {expected}"

    unexpected = result.get("unexpected_count", 0)
    total = result.get("element_count", len(frame))
    share = unexpected / total if total else 0.0
    flag = flags.get(kwargs.get("column", ""))
    if flag is not None and flag.source in frame.columns:
        examples = frame.loc[~flag.passed.to_numpy(), flag.source].head(EXAMPLES)
        shown = [_example(value, flag.rule) for value in examples]
        example_text = f"example {flag.source} values {_short(shown)} at rows {_short(examples.index.tolist())}"
    elif config.type == "expect_column_values_to_not_be_null":
        rows = result.get("partial_unexpected_index_list") or []
        example_text = f"null at rows {_short(rows[:EXAMPLES])}"
    else:
        examples = result.get("partial_unexpected_list") or []
        example_text = f"examples {_short(examples[:EXAMPLES])}"
    return (f"{head}: {unexpected} of {total} rows ({share:.4%}) unexpected, expected {expected}; "
            f"{example_text}")
