"""A tiny training set in the features zone's layout (docs/contracts.md "Training set"), written by the
ranker tests so they do not depend on Spark: features/training_set/dt=D/part-0.parquet + spec.json.

The click probability has a known logit: member and job biases, an industry match, a skill overlap
and one dense feature, so a working ranker must beat chance by a wide margin. With `position_bias` a,
each row also gets a display position p uniform in 1..POSITIONS (a `position` column) and the logit
-a log(p), as in the synthetic marketplace.
"""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

INDUSTRIES = ["tech", "health", "finance", "retail"]
SKILLS = [f"s{i}" for i in range(12)]
SPEC = {
    "label": "label", "weight": "weight", "member": "member_id", "item": "item_id",
    "categorical": ["m_industry", "j_industry", "j_company"],
    "multi_valued": ["m_skills", "j_skills"],
    "dense": ["m_rate_7d", "j_count_7d"],
    "embeddings": {"meta_embedding": 4},
}
START = date(2026, 1, 1)
POSITIONS = 10
SMALL = {"cross_layers": 1, "cross_rank": 8, "mlp_widths": (32, 16), "embedding_dim": 8}   # a ranker that trains in seconds


@pytest.fixture
def one_thread():
    """torch on one thread for the test (2 shared cores: oversubscribed OpenMP threads are 20x slower here)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def write_training_set(root: Path, days: int = 3, rows_per_day: int = 3000, members: int = 200,
                       items: int = 80, seed: int = 0, position_bias: float | None = None) -> Path:
    """Write `days` partitions under root/features/training_set and return that folder."""
    rng = np.random.default_rng(seed)
    member_industry = rng.integers(0, len(INDUSTRIES), members)
    item_industry = rng.integers(0, len(INDUSTRIES), items)
    member_bias, item_bias = rng.normal(0, 1.0, members), rng.normal(0, 1.0, items)
    member_skills = [sorted(rng.choice(SKILLS, rng.integers(0, 4), replace=False).tolist()) for _ in range(members)]
    item_skills = [sorted(rng.choice(SKILLS, rng.integers(1, 4), replace=False).tolist()) for _ in range(items)]
    meta = rng.normal(0, 1, (members, 4)).astype(np.float32)
    folder = Path(root) / "features" / "training_set"
    event_id = 0
    for d in range(days):
        day = START + timedelta(days=d)
        m = rng.integers(0, members, rows_per_day)
        j = rng.integers(0, items, rows_per_day)
        rate = rng.uniform(0, 0.5, rows_per_day).astype(np.float32)
        count = rng.poisson(20, rows_per_day).astype(np.float32)
        overlap = np.array([len(set(member_skills[a]) & set(item_skills[b])) for a, b in zip(m, j)])
        logit = (member_bias[m] + item_bias[j] + 1.5 * (member_industry[m] == item_industry[j])
                 + 0.6 * overlap + 3.0 * (rate - 0.25) - 1.5)
        if position_bias is not None:  # drawn only then: the other tests' data stay as they were
            position = rng.integers(1, POSITIONS + 1, rows_per_day)
            logit = logit - position_bias * np.log(position)
        true_prob = 1 / (1 + np.exp(-logit))
        label = (rng.uniform(size=rows_per_day) < true_prob).astype(np.int8)
        has_meta = rng.uniform(size=rows_per_day) < 0.8
        table = pa.table({
            "event_id": pa.array(np.arange(event_id, event_id + rows_per_day), pa.int64()),
            "member_id": pa.array(m.astype(np.int64) + 1000, pa.int64()),
            "item_id": pa.array(j.astype(np.int64) + 5000, pa.int64()),
            "label": pa.array(label, pa.int8()),
            "weight": pa.array(np.ones(rows_per_day, np.float32), pa.float32()),
            "m_industry": pa.array([INDUSTRIES[i] for i in member_industry[m]], pa.string()),
            "j_industry": pa.array([INDUSTRIES[i] for i in item_industry[j]], pa.string()),
            "j_company": pa.array([None if b % 17 == 0 else f"c{b % 9}" for b in j], pa.string()),
            "m_skills": pa.array([member_skills[a] for a in m], pa.list_(pa.string())),
            "j_skills": pa.array([item_skills[b] for b in j], pa.list_(pa.string())),
            "m_rate_7d": pa.array(rate, pa.float32()),
            "j_count_7d": pa.array(count, pa.float32()),
            "meta_embedding": pa.array([meta[a].tolist() if h else None for a, h in zip(m, has_meta)],
                                       pa.list_(pa.float32())),
            "true_prob": pa.array(true_prob, pa.float64()),
        })
        if position_bias is not None:
            table = table.append_column("position", pa.array(position, pa.int64()))
        event_id += rows_per_day
        partition = folder / f"dt={day.isoformat()}"
        partition.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, partition / "part-0.parquet")
    (folder / "spec.json").write_text(json.dumps(SPEC, indent=1))
    return folder


def days(n: int) -> list[date]:
    return [START + timedelta(days=i) for i in range(n)]
