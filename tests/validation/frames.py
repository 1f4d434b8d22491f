"""Tiny frames for the validation tests: a good day of raw events that obeys the raw-zone contract."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd

DAY = date(2026, 1, 5)
EVENT_COLUMNS = ["event_id", "member_id", "item_id", "ts", "label", "weight", "position"]
MEMBERS = np.arange(100, 140, dtype=np.int64)
ITEMS = np.arange(500, 520, dtype=np.int64)


def good_events(rows: int = 200, seed: int = 0) -> pd.DataFrame:
    """A day of events that obeys the raw-zone contract (docs/contracts.md)."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp(DAY.isoformat(), tz="UTC")
    return pd.DataFrame({
        "event_id": np.arange(1, rows + 1, dtype=np.int64) * 7,
        "member_id": rng.choice(MEMBERS, rows),
        "item_id": rng.choice(ITEMS, rows),
        "ts": (start + pd.to_timedelta(np.sort(rng.integers(0, 86_400_000_000, rows)), unit="us")).as_unit("us"),
        "label": (rng.random(rows) < 0.2).astype(np.int8),
        "weight": np.ones(rows, dtype=np.float32),
        "position": rng.integers(0, 10, rows),
    })
