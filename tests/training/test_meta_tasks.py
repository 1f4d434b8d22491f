"""Support/query sets: capped, seeded, newest events kept, padded per member."""

from __future__ import annotations

import numpy as np

from training.meta.tasks import PAD, Interactions, TaskConfig, _grouped_order, query_day_tasks, support_sets


def _interactions(member_id, day, time=None):
    n = len(member_id)
    return Interactions(member_id=np.asarray(member_id, np.int64), time=np.asarray(time if time is not None
                        else np.arange(n), np.int64), day=np.asarray(day, np.int64),
                        categorical=np.zeros((n, 1), np.int64), multi_valued=np.zeros((n, 1, 1), np.int64),
                        dense=np.zeros((n, 0), np.float32), label=np.zeros(n, np.float32),
                        weight=np.ones(n, np.float32))


def test_huge_history_is_capped_to_recent_plus_seeded_sample() -> None:
    # Member 7 has 10,000 events over 10 days, member 9 has two.
    huge = 10_000
    member = np.r_[np.full(huge, 7), [9, 9]]
    day = np.r_[np.repeat(np.arange(100, 110), huge // 10), [105, 109]]
    events = _interactions(member, day)
    config = TaskConfig(window_days=14, recent_events=5, sampled_events=3, seed=1)
    tasks = support_sets(events, np.array([9, 7, 42]), until_day=109, config=config)
    assert tasks.member_id.tolist() == [7, 9, 42]
    assert tasks.support_count.tolist() == [8, 2, 0]
    rows = tasks.support[0]
    assert set(range(huge - 5, huge)) <= set(rows.tolist())          # the 5 newest are always in
    assert (rows[:3] < huge - 5).all()                                # plus 3 sampled from the older rest
    assert (np.diff(events.time[rows]) > 0).all()                      # oldest first
    again = support_sets(events, np.array([7, 9, 42]), until_day=109, config=config)
    assert np.array_equal(again.support, tasks.support)               # seeded: same day -> same sample
    other_day = support_sets(events, np.array([7]), until_day=110, config=config)
    assert not np.array_equal(other_day.support[0, :3], rows[:3])     # another day draws another sample
    assert tasks.support[2].tolist() == [PAD] * 8                      # cold start: no rows


def test_query_day_tasks_split_support_before_query_day() -> None:
    member = [1, 1, 1, 2, 2, 3]
    day = [10, 11, 12, 12, 12, 11]
    tasks = query_day_tasks(_interactions(member, day), query_day=12, config=TaskConfig(window_days=2))
    assert tasks.member_id.tolist() == [1, 2]                          # only members active on the query day
    assert sorted(tasks.support[0][tasks.support[0] != PAD].tolist()) == [0, 1]
    assert tasks.query[0][tasks.query[0] != PAD].tolist() == [2]
    assert (tasks.support[1] == PAD).all() and sorted(tasks.query[1][tasks.query[1] != PAD]) == [3, 4]


def test_grouped_order_is_lexsorts_order_with_ties_and_negative_keys() -> None:
    rng = np.random.default_rng(3)
    group = rng.integers(0, 50, 5_000)
    for key in (rng.integers(-20, 20, 5_000),                 # many ties: broken by position, as lexsort does
                -rng.integers(0, 1 << 50, 5_000),             # negated epoch-like times
                rng.random(5_000)):                            # float priorities
        assert np.array_equal(_grouped_order(group, key), np.lexsort((key, group)))
    assert _grouped_order(np.zeros(0, np.int64), np.zeros(0, np.int64)).size == 0


def test_sets_of_shuffled_events_with_unknown_members_and_equal_times() -> None:
    """Rows in any order, members outside the list ignored, equal timestamps kept in row order."""
    member = np.array([5, 3, 5, 8, 3, 5, 5, 3])
    time = np.array([40, 10, 20, 99, 10, 20, 30, 5])
    tasks = support_sets(_interactions(member, np.full(8, 100), time), np.array([3, 5, 6]), until_day=100,
                         config=TaskConfig(recent_events=2, sampled_events=0))
    # Member 3: newest two are rows 1 and 4 (time 10, tie: row order), oldest first.
    # Member 5: newest two are rows 0 (40) and 6 (30). Member 6 has none; member 8 is not asked for.
    assert tasks.support.tolist() == [[1, 4], [6, 0], [PAD, PAD]]
