"""The daily GLMix stage when a day fails part-way or is skipped: no day is silently built upon.

The state models/glmix/dt=D (what later days start from) is written last, after the feature views and the
BentoML model: a day that fails before it has no state, its re-run repeats the same writes, and a later day
is refused (naming the day and the command to run) until it is run.
"""

from __future__ import annotations

from datetime import date

import pytest
from glmix_reference import one_torch_thread  # noqa: F401 (autouse fixture)
from test_glmix_stage import DAYS, stage_data  # noqa: F401 (stage_data: module fixture)
from test_glmix_stage_bad_input import _copy, _stores, published_day_one  # noqa: F401 (module fixture)

from rankflow.errors import MissingInput
from rankflow.stages.personalise import prior_day, run_first, skipped_days, update_random_effects

DAY_ONE, DAY_TWO, DAY_THREE = DAYS


def _comparable(stores: dict) -> dict:
    """_stores without the BentoML tags, which are random per model: the logical days of the models instead."""
    return {**stores, "bentoml": sorted(stores["bentoml"].values())}


def test_a_failure_in_the_second_view_leaves_no_state_and_the_rerun_equals_an_uninterrupted_run(
        published_day_one, tmp_path, monkeypatch):
    import features.store

    uninterrupted = _copy(published_day_one, tmp_path / "uninterrupted")
    update_random_effects(uninterrupted, DAY_TWO)

    settings = _copy(published_day_one, tmp_path / "failed")
    real_online_write = features.store.online_write

    def online_write_failing_for_jobs(store, view, frame, *args, **kwargs):
        if view == "glmix_job":  # after glmix_member and glmix_job's offline partition were written
            raise ConnectionError("online store went away")
        return real_online_write(store, view, frame, *args, **kwargs)

    monkeypatch.setattr(features.store, "online_write", online_write_failing_for_jobs)
    with pytest.raises(ConnectionError):
        update_random_effects(settings, DAY_TWO)
    monkeypatch.undo()

    # No state of day 2, and no model of it: day 3 would start from day 1, so it is refused.
    assert not (settings.paths.models / "glmix" / f"dt={DAY_TWO}").exists()
    assert prior_day(settings, DAY_THREE) == DAY_ONE
    half_published = _stores(settings)
    assert half_published["bentoml"] and DAY_TWO.isoformat() not in half_published["bentoml"].values()
    with pytest.raises(MissingInput, match=f"{DAY_TWO} has a training set but no state.*"
                                           f"`rankflow personalise --date {DAY_TWO}` first, then {DAY_THREE}"):
        update_random_effects(settings, DAY_THREE)
    assert _stores(settings) == half_published

    # Re-running day 2 writes what an uninterrupted run wrote, byte for byte, online store included.
    update_random_effects(settings, DAY_TWO)
    assert _comparable(_stores(settings)) == _comparable(_stores(uninterrupted))
    assert update_random_effects(settings, DAY_THREE, write_online=False)["prior_date"] == DAY_TWO.isoformat()


def test_a_day_after_a_skipped_day_is_refused_before_any_write(stage_data, tmp_path):
    settings = _copy(stage_data, tmp_path)
    # Day 1 is before the first personalised day: not a gap, day 2 starts from the population prior.
    assert update_random_effects(settings, DAY_TWO, write_online=False)["prior_date"] is None
    update_random_effects(settings, DAY_THREE, write_online=False)
    assert update_random_effects(settings, DAY_ONE, write_online=False)["prior_date"] is None  # a backfill

    settings = _copy(stage_data, tmp_path / "skipped")
    update_random_effects(settings, DAY_ONE)
    before = _stores(settings)
    with pytest.raises(MissingInput, match=f"glmix {DAY_THREE}: {DAY_TWO} has a training set but no state .*"
                                           f"{DAY_THREE} would start from {DAY_ONE}'s state.*nothing was written.*"
                                           f"`rankflow personalise --date {DAY_TWO}` first"):
        update_random_effects(settings, DAY_THREE)
    assert _stores(settings) == before


def test_skipped_days_are_those_with_input_after_the_newest_output():
    days = [date(2026, 1, d) for d in range(1, 9)]
    assert skipped_days(days, [days[0]], days[4]) == days[1:4]
    assert skipped_days(days, [days[0], days[2]], days[4]) == [days[3]]    # only after the newest output
    assert skipped_days(days, [], days[4]) == []                           # nothing ran yet: no gap
    assert skipped_days(days, [days[5]], days[4]) == []                    # a backfill before the first output
    assert skipped_days([days[0], days[1], days[3]], [days[0]], days[4]) == [days[1], days[3]]  # no input, no gap
    assert run_first("rankflow personalise", days[1:4]) == "`rankflow personalise --start 2026-01-02 --end 2026-01-04`"
    assert run_first("rankflow personalise", [days[1], days[3]]) == \
        "`rankflow personalise --date 2026-01-02`, then `rankflow personalise --date 2026-01-04`"


def test_a_broken_online_store_stops_the_day_before_its_update(published_day_one, tmp_path, monkeypatch):
    import rankflow.stages.personalise as personalise
    from rankflow.errors import UnreadableInput

    settings = _copy(published_day_one, tmp_path / "broken")
    before, online = _stores(settings), settings.paths.feast / "online_store.db"
    good = online.read_bytes()
    online.write_bytes(b"not a database" * 100)
    monkeypatch.setattr(personalise, "_prior", lambda *args: pytest.fail("the update ran"))
    with pytest.raises(UnreadableInput, match="online_store.db: not a readable SQLite database"):
        update_random_effects(settings, DAY_TWO)
    online.write_bytes(good)  # _stores reads it
    assert _stores(settings) == before
