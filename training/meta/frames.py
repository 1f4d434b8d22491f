"""Event frames (pandas) -> `Interactions` (numpy): hashed job attributes, skill bags, dense features.

Categorical values are hashed into `hash_buckets - 1` buckets (+1; bucket 0 = missing) with pandas'
`hash_array`, which is deterministic across processes and machines (fixed key), so the meta-init learned in
one week reads the codes of the next without storing a vocabulary; new values need no refit. Collisions are
harmless at the default 4096 buckets for attribute vocabularies of tens to thousands.

pandas is imported inside the functions: `training` must import with torch and numpy alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from training.meta.subnetwork import SubNetworkConfig
from training.meta.tasks import Interactions

MICROS_PER_DAY = 86_400_000_000


def hash_codes(values: Any, buckets: int) -> np.ndarray:
    """Deterministic bucket codes in [1, buckets - 1] for strings; 0 for missing (None/NaN/empty)."""
    import pandas as pd

    series = pd.Series(values, dtype=object)
    missing = series.isna().to_numpy() | (series.astype(str).to_numpy() == "")
    hashed = pd.util.hash_array(series.fillna("").astype(str).to_numpy(dtype=object))
    codes = (hashed % np.uint64(buckets - 1)).astype(np.int64) + 1
    codes[missing] = 0
    return codes


def bag_codes(values: Any, buckets: int, max_size: int) -> np.ndarray:
    """[E, max_size] codes of list-valued cells (first `max_size` entries), 0-padded; None = empty bag."""
    import pandas as pd

    series = pd.Series(values, dtype=object)
    lengths = np.fromiter((0 if cell is None or (np.ndim(cell) == 0 and pd.isna(cell)) else len(cell)
                           for cell in series), dtype=np.int64, count=len(series))
    out = np.zeros((len(series), max_size), dtype=np.int64)
    if lengths.sum() == 0:
        return out
    flat = np.concatenate([np.asarray(cell, dtype=object) for cell, n in zip(series, lengths) if n])
    row = np.repeat(np.arange(len(series)), lengths)
    slot = np.arange(flat.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    keep = slot < max_size
    out[row[keep], slot[keep]] = hash_codes(flat[keep], buckets)
    return out


def interactions_from_frame(
    frame: Any,
    config: SubNetworkConfig,
    member: str = "member_id",
    timestamp: str = "ts",
    label: str = "label",
    weight: str | None = "weight",
    max_bag_size: int = 16,
) -> Interactions:
    """One row per event with the job-side columns `config` names -> Interactions.

    Raises KeyError naming the missing columns, so a training set built without a job attribute fails here
    rather than training on zeros.
    """
    import pandas as pd

    needed = [member, timestamp, label, *config.categorical_columns, *config.multi_valued_columns,
              *config.dense_columns]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise KeyError(f"event frame lacks column(s) {missing}; it has {sorted(frame.columns)}")
    ts = pd.to_datetime(frame[timestamp], utc=True)
    micros = ts.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(dtype="datetime64[us]").astype(np.int64)
    n = len(frame)
    categorical = np.stack([hash_codes(frame[c].to_numpy(), config.hash_buckets)
                            for c in config.categorical_columns], axis=1) if config.categorical_columns \
        else np.zeros((n, 0), np.int64)
    bags = np.stack([bag_codes(frame[c].to_numpy(), config.hash_buckets, max_bag_size)
                     for c in config.multi_valued_columns], axis=1) if config.multi_valued_columns \
        else np.zeros((n, 0, max_bag_size), np.int64)
    dense = frame[list(config.dense_columns)].to_numpy(dtype=np.float32) if config.dense_columns \
        else np.zeros((n, 0), np.float32)
    weights = frame[weight].to_numpy(dtype=np.float32) if weight and weight in frame.columns \
        else np.ones(n, np.float32)
    return Interactions(
        member_id=frame[member].to_numpy(dtype=np.int64),
        time=micros,
        day=np.floor_divide(micros, MICROS_PER_DAY),
        categorical=categorical,
        multi_valued=bags,
        dense=dense,
        label=frame[label].to_numpy(dtype=np.float32),
        weight=weights,
    )
