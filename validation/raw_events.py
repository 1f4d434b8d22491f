"""The raw-events suite: the gate between a landed raw partition and every feature job.

A day's events pass when the frame is non-empty; has exactly the expected columns with the contract's
types; `event_id`, `member_id`, `item_id`, `ts`, `label` are never null; every `ts` lies in the
logical day [D 00:00, D+1 00:00) UTC; `label` is 0 or 1; `event_id` is unique; and the share of
events whose member (or item) is unknown to the members (items) table is at most `max_unknown_share`.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from collections.abc import Collection, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from validation.checkpoint import Flag, gx_modules, run_suite
from validation.result import ValidationResult

SUITE = "raw_events"
REQUIRED = ("event_id", "member_id", "item_id", "ts", "label")

# The raw-zone contract (docs/contracts.md). GX reports a tz-aware datetime column as "Timestamp"
# (a naive one as "datetime64"), so "Timestamp" is how "timestamp with a time zone" is checked;
# the time zone itself is pinned by the inside-the-day check, which compares UTC instants.
EVENT_TYPES: Mapping[str, str] = {
    "event_id": "int64",
    "member_id": "int64",
    "item_id": "int64",
    "ts": "Timestamp",
    "label": "int8",
    "weight": "float32",
}


def _as_lookup(ids: Iterable[int]) -> np.ndarray:
    """Known ids as an array `Series.isin` handles fast (a set is not array-like to pandas)."""
    if isinstance(ids, (pd.Series, pd.Index, np.ndarray)):
        return np.asarray(ids)
    return np.fromiter(ids, dtype=np.int64)


def check_raw_events(
    events: pd.DataFrame,
    day: date,
    *,
    expected_columns: Sequence[str],
    known_member_ids: Collection[int],
    known_item_ids: Collection[int],
    reports_dir: Path,
    max_unknown_share: float = 0.0,
    expected_types: Mapping[str, str] = EVENT_TYPES,
    raise_on_failure: bool = True,
) -> ValidationResult:
    """Validate one day of raw events; raise `ValidationFailed` (unless told not to) when any rule fails.

    `known_member_ids` / `known_item_ids`: every id the members / items tables hold up to and including
    `day`. `expected_types` maps column -> GX type name for the columns whose type is pinned (the
    contract's by default; context columns are free).
    """
    _, gxe = gx_modules()
    present = set(events.columns)
    start = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
    flags = [Flag(source=column, rule="known", passed=events[column].isin(_as_lookup(known)))
             for column, known in (("member_id", known_member_ids), ("item_id", known_item_ids))
             if column in present]
    expectations = [
        gxe.ExpectTableRowCountToBeBetween(min_value=1, meta={"rule": "the day has events"}),
        # The flag columns ride along in the validated frame; the summary leaves them out of the schema.
        gxe.ExpectTableColumnsToMatchSet(column_set=[*expected_columns, *(flag.column for flag in flags)],
                                        exact_match=True, meta={"rule": "schema: exactly the expected columns"}),
    ]
    expectations += [gxe.ExpectColumnValuesToBeOfType(column=column, type_=type_name)
                     for column, type_name in expected_types.items() if column in present]
    expectations += [gxe.ExpectColumnValuesToNotBeNull(column=column) for column in REQUIRED if column in present]
    if "ts" in present:
        expectations.append(gxe.ExpectColumnValuesToBeBetween(
            column="ts", min_value=start, max_value=start + timedelta(days=1), strict_max=True,
            meta={"rule": f"inside the logical day {day.isoformat()} UTC"}))
    if "label" in present:
        expectations.append(gxe.ExpectColumnValuesToBeInSet(column="label", value_set=[0, 1]))
    if "event_id" in present:
        expectations.append(gxe.ExpectColumnValuesToBeUnique(column="event_id"))

    expectations += [gxe.ExpectColumnValuesToBeInSet(
        column=flag.column, value_set=[True], mostly=1.0 - max_unknown_share,
        meta={"rule": f"share of unknown {flag.source}s at most {max_unknown_share:g}"}) for flag in flags]
    return run_suite(SUITE, day, events, expectations, reports_dir=reports_dir, flags=flags,
                     raise_on_failure=raise_on_failure)
