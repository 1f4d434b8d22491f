"""spec.json follows the newest day of the training set, whatever order the days are (re)built in."""

import json
from datetime import date

import numpy as np
import pandas as pd

from features.assemble import input_spec
from features.training_set import TABLE, read_spec, write_training_set
from rankflow.config import Settings


def _day_rows(with_meta: bool) -> pd.DataFrame:
    frame = pd.DataFrame({"member_id": [1, 2], "item_id": [7, 8], "label": np.array([0, 1], "int8"),
                          "weight": np.array([1, 1], "float32"), "m_industry": ["a", "b"],
                          "m_rate_7d": np.array([0.1, 0.2], "float32")})
    if with_meta:
        frame["meta_embedding"] = [np.ones(3, "float32"), np.zeros(3, "float32")]
    return frame


def _write(settings: Settings, day: date, with_meta: bool) -> None:
    frame = _day_rows(with_meta)
    write_training_set(settings, day, frame, input_spec(frame))


def test_a_backfilled_older_day_keeps_the_newest_days_spec(tmp_path):
    settings = Settings(data_dir=tmp_path)
    _write(settings, date(2026, 1, 3), with_meta=False)
    _write(settings, date(2026, 1, 5), with_meta=True)
    assert read_spec(settings)["embeddings"] == {"meta_embedding": 3}

    _write(settings, date(2026, 1, 3), with_meta=False)  # a backfill of an older day, built before meta ran
    _write(settings, date(2026, 1, 4), with_meta=False)

    assert read_spec(settings)["embeddings"] == {"meta_embedding": 3}
    assert (settings.paths.feature_partition(TABLE, date(2026, 1, 4)) / "part-0.parquet").exists()


def test_the_newest_day_rebuilt_rewrites_the_spec(tmp_path):
    settings = Settings(data_dir=tmp_path)
    _write(settings, date(2026, 1, 5), with_meta=True)
    _write(settings, date(2026, 1, 5), with_meta=False)  # rebuilt without meta: its spec is the newest one
    assert json.loads((settings.paths.feature_table(TABLE) / "spec.json").read_text())["embeddings"] == {}
