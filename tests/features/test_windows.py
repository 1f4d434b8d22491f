"""Sliding windows: D-1's state + the entering day - the leaving days == the window summed from dailies.

Windows of 1, 2 and 3 days over the tiny marketplace's 4 event days make every window lose a day
(day 1 leaves the 3-day window on day 4, the 2-day window on day 3, ...), the path a 28-day window
only takes after four weeks.
"""

from __future__ import annotations

import shutil

import pandas as pd
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

from features.contract import raw_days
from features.spark.raw import events_of_day
from features.spark.session import spark_session
from features.spark.windows import WindowSpec, WindowStore, applies_col, daily_counts, impressions_col
from rankflow.config import Settings

SHORT = WindowSpec(name="member_short", keys=("member_id",), windows=(1, 2, 3))


@pytest.fixture(scope="module")
def short_windows(tmp_path_factory, tiny_data_dir):
    """Daily aggregates of the 4 tiny days and the states built in order (incrementally after day 1)."""
    root = tmp_path_factory.mktemp("windows") / "data"
    shutil.copytree(tiny_data_dir, root, ignore=shutil.ignore_patterns("features", "feast"))
    settings = Settings(data_dir=root)
    spark = spark_session(settings)
    store = WindowStore(spark, settings.paths, SHORT)
    days = raw_days(settings.paths)
    dailies = {}
    for day in days:
        events = events_of_day(spark, settings.paths, day).select(
            "member_id", "item_id", "ts", F.col("label").cast("int").alias("label"))
        store.write_daily(day, daily_counts(events, SHORT))
        dailies[day] = store.read_daily(day).toPandas()
    states, modes = {}, []
    for day in days:
        state, mode = store.build_state(day, days[0])
        states[day] = _sorted(state.toPandas())
        modes.append(mode)
    return store, days, dailies, states, modes


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values("member_id").reset_index(drop=True)


def test_running_state_equals_state_recomputed_from_dailies(short_windows):
    store, days, _, states, modes = short_windows
    assert len(days) == 4
    assert modes == ["from_dailies", "incremental", "incremental", "incremental"]
    for day in days[1:]:
        recomputed = _sorted(store._from_dailies(day, days[0]).toPandas())
        pd.testing.assert_frame_equal(states[day], recomputed, check_dtype=True)


def test_windows_hold_exactly_their_last_days(short_windows):
    """Against pandas sums of the daily aggregates: day 1 has left the 3-day window on day 4."""
    _, days, dailies, states, _ = short_windows
    last = days[-1]
    state = states[last].set_index("member_id")
    for window in SHORT.windows:
        inside = pd.concat([dailies[d] for d in days[-window:]]).groupby("member_id")[["impressions", "applies"]].sum()
        expected = inside.reindex(state.index, fill_value=0)
        assert (state[impressions_col(window)] == expected["impressions"]).all(), window
        assert (state[applies_col(window)] == expected["applies"]).all(), window
    # Leaving really happened: members active on day 1 count fewer impressions in 3 days than in all 4.
    everything = pd.concat(dailies.values()).groupby("member_id")["impressions"].sum()
    assert (state[impressions_col(3)] < everything.reindex(state.index, fill_value=0)).sum() > 10
    # A member whose only events were on day 1 has left every window by day 4: it keeps a state row (its last
    # apply) if it applied, and has none if it never did.
    first = dailies[days[0]].set_index("member_id")
    only_day1 = set(first.index) - set(pd.concat([dailies[d] for d in days[1:]])["member_id"])
    applied = {m for m in only_day1 if first.loc[m, "applies"] > 0}
    assert applied and only_day1 - applied, (len(applied), len(only_day1))
    assert not (only_day1 - applied) & set(state.index)
    for member_id in applied:
        assert state.loc[member_id, impressions_col(3)] == 0 and pd.notna(state.loc[member_id, "last_apply_ts"])


def test_window_files_are_sorted_by_key_and_read_with_the_schema_spark_infers(short_windows):
    """`_read` takes the schema from the footer Spark wrote (no inference job), and it is the inferred one."""
    store, days, _, _, _ = short_windows
    for folder in (store._daily_path(days[-1]), store._state_path(days[-1])):
        ours = store.read_state(days[-1]) if "state" in str(folder) else store.read_daily(days[-1])
        inferred = store.spark.read.parquet(str(folder))
        assert ours.schema == inferred.schema, folder
        files = sorted(folder.glob("*.parquet"))  # one per partition of the aggregation, each sorted by key
        assert len(files) > 1, folder  # not coalesced into one task
        keys = [pq.read_table(f, columns=["member_id"]).column("member_id").to_pylist() for f in files]
        assert all(part == sorted(part) for part in keys), folder
        everything = [key for part in keys for key in part]
        assert len(everything) == len(set(everything)) == ours.count() > 0, folder
