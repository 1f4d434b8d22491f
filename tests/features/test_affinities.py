"""The affinity daily aggregate's input: one row per (event, job attribute, value), a bag's repeated values once,
equal to the same rows made from the raw tables in pandas."""

from __future__ import annotations

import numpy as np
import pandas as pd
from pyspark.sql import functions as F

from features.contract import load_raw_schema, raw_days, read_raw
from features.spark.affinities import AFFINITY_SPEC, affinity_attributes, attribute_events
from features.spark.raw import events_of_day, known_by
from features.spark.session import spark_session
from features.spark.windows import daily_counts
from rankflow.config import Settings

KEYS = ["member_id", "attribute", "value"]


def _expected_counts(events: pd.DataFrame, items: pd.DataFrame, attributes, multi_valued) -> pd.DataFrame:
    rows = []
    joined = events.merge(items, on="item_id", how="inner")
    for event in joined.itertuples(index=False):
        for attribute in attributes:
            cell = getattr(event, attribute)
            if attribute in multi_valued:
                values = {v for v in cell if v is not None} if isinstance(cell, (list, tuple, np.ndarray)) else set()
            else:
                values = set() if cell is None or cell != cell else {cell}
            rows += [(event.member_id, attribute, value, int(event.label)) for value in values]
    frame = pd.DataFrame(rows, columns=[*KEYS, "label"])
    return (frame.groupby(KEYS).agg(impressions=("label", "size"), applies=("label", "sum")).reset_index()
            .sort_values(KEYS, ignore_index=True))


def test_attribute_rows_count_each_events_distinct_values_of_its_job(tiny_data_dir):
    settings = Settings(data_dir=tiny_data_dir)
    spark = spark_session(settings)
    schema = load_raw_schema(settings.paths)
    attributes = affinity_attributes(schema.items, ("industry", "seniority", "skills"))
    assert "skills" in schema.items.multi_valued and set(attributes) == {"industry", "seniority", "skills"}
    day = raw_days(settings.paths)[-1]
    events = events_of_day(spark, settings.paths, day).select(
        "member_id", "item_id", "ts", F.col("label").cast("int").alias("label"))
    items = known_by(spark, settings.paths, "items", day)
    got = daily_counts(attribute_events(events, items, schema.items, attributes), AFFINITY_SPEC).toPandas()
    got = got.sort_values(KEYS, ignore_index=True)
    raw_items = read_raw(settings.paths, "items", end=day)
    expected = _expected_counts(read_raw(settings.paths, "events", day=day), raw_items, attributes,
                                set(schema.items.multi_valued))
    assert len(expected) > 100 and (expected["impressions"] > 1).any()
    pd.testing.assert_frame_equal(got[[*KEYS, "impressions", "applies"]].astype({"impressions": "int64",
                                                                                   "applies": "int64"}),
                                  expected.astype({"impressions": "int64", "applies": "int64"}), check_dtype=False)
