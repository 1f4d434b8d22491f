"""The daily GLMix stage on bad input, and what it publishes read back from the online store.

Unusable rows (training.glmix.random_effects.unusable_events) are dropped as if they had never been in
the training set, counted per reason and column; a day without a usable row carries the prior state
forward and publishes nothing; a state that is not finite is never written anywhere. The online test
writes through the embedded SQLite Feast store and reads back through Feast's online read path.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import sqlite3

import numpy as np
import pandas as pd
import pytest
import torch
from glmix_reference import one_torch_thread  # noqa: F401 (autouse fixture)
from test_glmix_stage import DAYS, _glmix_models, stage_data  # noqa: F401 (stage_data: module fixture)

from rankflow.config import load_settings
from rankflow.paths import atomic_directory
from rankflow.stages import personalise
from rankflow.stages.personalise import (
    GlobalPart,
    PersonaliseConfig,
    glmix_config_for,
    load_state,
    training_events,
    update_random_effects,
)
from training.glmix.design import CategoricalBasis
from training.glmix.model import daily_update

DAY_ONE, DAY_TWO, DAY_THREE = DAYS
BAD = slice(7, None, 53)  # the rows of day 2 made unusable: 38 of 2,000, spread over members and jobs


def _training_rows(settings, day) -> pd.DataFrame:
    return pd.read_parquet(settings.paths.feature_partition("training_set", day) / "part-0.parquet")


def _rewrite_training_rows(settings, day, frame: pd.DataFrame) -> None:
    with atomic_directory(settings.paths.feature_partition("training_set", day)) as staging:
        frame.to_parquet(staging / "part-0.parquet", index=False)


def _copy(root, tmp_path):
    return load_settings(shutil.copytree(root, tmp_path / "data"))


@pytest.fixture(scope="module")
def day_one_done(stage_data, tmp_path_factory):
    """The stage data with day 1's state written (no online store)."""
    root = shutil.copytree(stage_data, tmp_path_factory.mktemp("glmix_day_one") / "data")
    update_random_effects(load_settings(root), DAY_ONE, write_online=False)
    return root


@pytest.fixture(scope="module")
def clean_day_two(day_one_done, tmp_path_factory):
    """(result, state, fixed effect) of day 2 run on its training set WITHOUT the BAD rows."""
    settings = load_settings(shutil.copytree(day_one_done, tmp_path_factory.mktemp("glmix_clean") / "data"))
    rows = _training_rows(settings, DAY_TWO)
    _rewrite_training_rows(settings, DAY_TWO, rows.drop(index=rows.index[BAD]))
    result = update_random_effects(settings, DAY_TWO, write_online=False)
    state, fixed_effect, _ = load_state(settings, DAY_TWO)
    return result, state, fixed_effect


@pytest.fixture(scope="module")
def published_day_one(stage_data, tmp_path_factory):
    """The stage data with day 1 written everywhere: state, BentoML model, offline and SQLite online store."""
    root = shutil.copytree(stage_data, tmp_path_factory.mktemp("glmix_online") / "data")
    result = update_random_effects(load_settings(root), DAY_ONE, write_online=True)
    assert result["written"]["glmix_member"]["written"] == result["members_updated"] > 0
    return root


def _set(column, value):
    def corrupt(frame: pd.DataFrame) -> pd.DataFrame:
        frame[column] = frame[column].astype(np.float64)
        frame.loc[frame.index[BAD], column] = value
        return frame
    return corrupt


REASONS = ("features_not_finite", "offset_not_finite", "label_not_0_or_1", "weight_not_finite_positive")
# case: (how day 2's BAD rows are spoiled, the reason they are dropped for, rows per non-finite column)
CASES = {
    "nan dense feature": (_set("log_position", np.nan), "features_not_finite", {"log_position": 38}),
    "inf dense feature": (_set("industry_match", np.inf), "features_not_finite", {"industry_match": 38}),
    "nan label": (_set("label", np.nan), "label_not_0_or_1", {}),
    "label 2": (_set("label", 2.0), "label_not_0_or_1", {}),
    "negative weight": (_set("weight", -1.0), "weight_not_finite_positive", {}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_unusable_rows_are_dropped_counted_and_the_day_is_as_if_they_were_never_there(
        case, day_one_done, clean_day_two, tmp_path, caplog):
    corrupt, reason, columns = CASES[case]
    settings = _copy(day_one_done, tmp_path)
    _rewrite_training_rows(settings, DAY_TWO, corrupt(_training_rows(settings, DAY_TWO)))
    with caplog.at_level(logging.WARNING, logger=personalise.__name__):
        result = update_random_effects(settings, DAY_TWO, write_online=False)

    assert result["rows"] == {"read": 2000, "used": 1962, "dropped": 38,
                              "dropped_by_reason": {**dict.fromkeys(REASONS, 0), reason: 38},
                              "non_finite_by_column": columns}
    assert result["summary"]["member"]["events_dropped"] == result["summary"]["job"]["events_dropped"] == 38
    assert f"38 of 2000 rows dropped: {reason} 38" in caplog.text
    assert all(column in caplog.text for column in columns)
    assert not result["carried_forward"] and all(v["success"] for v in result["validation"].values())

    clean_result, clean_state, clean_fixed = clean_day_two
    state, fixed_effect, meta = load_state(settings, DAY_TWO)
    assert meta["rows"] == result["rows"]
    assert (result["members_updated"], result["jobs_updated"]) == (clean_result["members_updated"],
                                                                    clean_result["jobs_updated"])
    for side in ("member", "job"):
        mine, clean = getattr(state, side), getattr(clean_state, side)
        assert torch.equal(mine.entity_ids, clean.entity_ids)
        assert torch.isfinite(mine.mean).all() and torch.isfinite(mine.precision).all()
        torch.testing.assert_close(mine.mean, clean.mean, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(mine.precision, clean.precision, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(fixed_effect.weights, clean_fixed.weights, rtol=1e-10, atol=1e-12)


def test_non_finite_offsets_of_the_ranker_are_dropped_and_the_rest_updated_with_theirs(day_one_done, tmp_path,
                                                                                       monkeypatch):
    """The global part is the serving ranker's logit here (stubbed): an inf / NaN logit drops its row."""
    settings = _copy(day_one_done, tmp_path)
    frame = _training_rows(settings, DAY_TWO)
    offsets = -2.5 + 0.8 * frame["industry_match"].to_numpy(np.float64) - 0.3 * frame["log_position"].to_numpy()
    spoiled = offsets.copy()
    spoiled[BAD] = np.resize([np.inf, -np.inf, np.nan], len(spoiled[BAD]))
    monkeypatch.setattr(personalise, "ranker_logit",
                        lambda settings_, day, frame_: GlobalPart(spoiled.copy(), "rankflow-ranker:stub", "stub"))
    result = update_random_effects(settings, DAY_TWO, write_online=False)
    assert result["global_part"] == "ranker"
    assert result["rows"]["dropped"] == 38 and result["rows"]["dropped_by_reason"]["offset_not_finite"] == 38

    state, _, meta = load_state(settings, DAY_TWO)
    prior, _, _ = load_state(settings, DAY_ONE)
    member_basis, job_basis = (CategoricalBasis.from_json(meta[f"{side}_basis"]) for side in ("member", "job"))
    spec = {"label": "label", "weight": "weight", "member": "member_id", "item": "item_id"}
    keep = np.isfinite(spoiled)
    expected, _ = daily_update(prior, training_events(frame[keep], spec, member_basis, job_basis, offsets[keep]),
                               glmix_config_for(PersonaliseConfig(), member_basis, job_basis))
    torch.testing.assert_close(state.member.mean, expected.member.mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(state.job.precision, expected.job.precision, rtol=1e-10, atol=1e-12)


def _stores(settings) -> dict:
    """Everything the stage writes, comparable: state files, BentoML models, feature partitions, online rows."""
    def digests(folder):
        return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file()} if folder.exists() else {}

    with sqlite3.connect(settings.paths.feast / "online_store.db") as connection:
        online = {view: connection.execute(f'SELECT entity_key, feature_name, value, event_ts FROM "rankflow_{view}" '
                                           "ORDER BY entity_key, feature_name").fetchall()
                  for view in ("glmix_member", "glmix_job")}
    return {"state": digests(settings.paths.models / "glmix"), "bentoml": _glmix_models(settings),
            "offline": {view: digests(settings.paths.feature_table(view)) for view in ("glmix_member", "glmix_job")},
            "online": online}


def test_a_day_without_usable_rows_carries_the_state_forward_and_publishes_nothing(published_day_one, tmp_path,
                                                                                   caplog):
    settings = _copy(published_day_one, tmp_path)
    frame = _training_rows(settings, DAY_TWO)
    frame["label"] = frame["label"].astype(np.float64)
    frame.loc[frame.index[::2], "label"] = np.nan
    frame.loc[frame.index[1::2], "log_position"] = np.inf
    _rewrite_training_rows(settings, DAY_TWO, frame)
    before = _stores(settings)
    with caplog.at_level(logging.WARNING, logger=personalise.__name__):
        result = update_random_effects(settings, DAY_TWO)  # the online write on

    assert result["carried_forward"] and result["rows"]["used"] == 0 and result["rows"]["dropped"] == 2000
    assert result["rows"]["dropped_by_reason"]["label_not_0_or_1"] == 1000
    assert result["rows"]["non_finite_by_column"] == {"log_position": 1000}
    assert (result["members_updated"], result["jobs_updated"], result["written"]) == (0, 0, {})
    assert result["summary"]["member"]["events_used"] == 0 and result["summary"]["job"]["entities_updated"] == 0
    assert "no usable events (2000 rows read)" in caplog.text and "carried forward" in caplog.text

    # Every posterior and the fixed effect are day 1's, stored under day 2; nothing was published.
    (day_one, fixed_one, _), (day_two, fixed_two, meta) = load_state(settings, DAY_ONE), load_state(settings, DAY_TWO)
    for side in ("member", "job"):
        for name in ("entity_ids", "mean", "precision"):
            assert torch.equal(getattr(getattr(day_two, side), name), getattr(getattr(day_one, side), name))
    assert fixed_two.to_json() == fixed_one.to_json()
    assert meta["carried_forward"] and meta["prior_date"] == DAY_ONE.isoformat()
    after = _stores(settings)
    assert after["online"] == before["online"] and after["offline"] == before["offline"]
    assert sorted(after["bentoml"].values()) == [DAY_ONE.isoformat(), DAY_TWO.isoformat()]

    # The next day builds on the carried state as it would on day 1's.
    following = update_random_effects(settings, DAY_THREE, write_online=False)
    assert following["prior_date"] == DAY_TWO.isoformat() and following["rows"]["used"] == 2000


def test_a_first_day_without_usable_rows_stores_the_population_prior(stage_data, tmp_path):
    settings = _copy(stage_data, tmp_path)
    frame = _training_rows(settings, DAY_ONE)
    frame["weight"] = 0.0
    _rewrite_training_rows(settings, DAY_ONE, frame)
    result = update_random_effects(settings, DAY_ONE, write_online=False)
    assert result["carried_forward"] and result["prior_date"] is None
    assert result["rows"]["dropped_by_reason"]["weight_not_finite_positive"] == result["rows"]["read"] > 0
    state, fixed_effect, _ = load_state(settings, DAY_ONE)
    assert len(state.member) == len(state.job) == 0 and fixed_effect is None

    second = update_random_effects(settings, DAY_TWO, write_online=False)
    assert second["prior_date"] == DAY_ONE.isoformat() and second["members_updated"] > 0


@pytest.mark.parametrize("spoiled", ["a member updated today", "a member without events today"])
def test_a_state_with_a_nan_is_written_nowhere(spoiled, published_day_one, tmp_path, monkeypatch):
    """A NaN coefficient out of the update (injected here) stops the day before its first write.

    A member updated today is also caught by the published rows' validation; one without events today is
    not published, so only the check of the whole state stands between its NaN and the model store.
    """
    from training.glmix import model

    settings = _copy(published_day_one, tmp_path)
    today = set(_training_rows(settings, DAY_TWO)["member_id"])
    real_update_day = model.update_day

    def update_day_with_a_nan(*args, **kwargs):
        state, fixed_effect, summary = real_update_day(*args, **kwargs)
        ids = state.member.entity_ids.tolist()
        row = next(i for i, member in enumerate(ids) if (member in today) == (spoiled == "a member updated today"))
        state.member.mean[row, 1] = float("nan")
        return state, fixed_effect, summary

    monkeypatch.setattr(model, "update_day", update_day_with_a_nan)
    before = _stores(settings)
    with pytest.raises(ValueError, match="the member state has 1 entities with a non-finite mean; nothing was written"):
        update_random_effects(settings, DAY_TWO)
    assert _stores(settings) == before


def test_members_with_only_positives_a_single_event_or_duplicates_stay_finite_and_bounded(day_one_done, tmp_path):
    settings = _copy(day_one_done, tmp_path)
    prior, _, _ = load_state(settings, DAY_ONE)
    frame = _training_rows(settings, DAY_TWO)
    counts = frame["member_id"].value_counts()
    known = set(prior.member.entity_ids.tolist())
    positive, negative, single, duplicated = [m for m in counts.index[counts >= 6] if m in known][:4]
    frame.loc[frame.member_id == positive, "label"] = 1
    frame.loc[frame.member_id == negative, "label"] = 0
    frame = frame.drop(index=frame.index[frame.member_id == single][1:])
    one_row = frame[frame.member_id == duplicated].iloc[[0]].assign(label=1)
    frame = pd.concat([frame[frame.member_id != duplicated], pd.concat([one_row] * 300)], ignore_index=True)
    _rewrite_training_rows(settings, DAY_TWO, frame)

    result = update_random_effects(settings, DAY_TWO, write_online=False)
    assert result["rows"]["dropped"] == 0 and result["summary"]["member"]["not_converged"] == 0
    assert result["members_updated"] == frame.member_id.nunique()
    state, _, meta = load_state(settings, DAY_TWO)
    basis = CategoricalBasis.from_json(meta["member_basis"])
    direction = {positive: 1, duplicated: 1, negative: -1, single: 0}  # where the member's own score must go
    for member, sign in direction.items():
        rows = frame[frame.member_id == member]
        design = torch.as_tensor(basis.design({a: rows[f"j_{a}"].to_numpy(object) for a, _ in basis.columns}),
                                 dtype=torch.float64)
        (before,), _ = prior.member.locate(torch.tensor([member]))
        (after,), _ = state.member.locate(torch.tensor([member]))
        mean, prior_mean = state.member.mean[after], prior.member.mean[before]
        assert torch.isfinite(mean).all() and float(mean.abs().max()) < 5.0, member
        # The new events only add information: no coefficient's variance grows.
        variance = state.member.variance_diagonal()[after]
        assert bool((variance <= prior.member.variance_diagonal()[before] + 1e-12).all()), member
        assert float((variance - prior.member.variance_diagonal()[before]).sum()) < 0, member
        moved = float((design @ (mean - prior_mean)).sum())  # the member's score on its own rows
        if sign:
            assert sign * moved > 0, (member, moved)


def test_published_random_effects_read_back_from_the_online_store_equal_the_state(published_day_one, tmp_path):
    """member_re_mean / member_re_variance (job_re_* too) through Feast's online read against the stored state:
    the day's mean and RandomEffectState.variance_diagonal(), for every entity the state holds (those of day
    1 only still hold day 1's values, which day 2 kept)."""
    from feast import FeatureStore

    settings = _copy(published_day_one, tmp_path)
    result = update_random_effects(settings, DAY_TWO)
    assert result["written"]["glmix_member"]["written"] == result["members_updated"] > 0
    assert result["written"]["glmix_job"]["written"] == result["jobs_updated"] > 0
    state, _, _ = load_state(settings, DAY_TWO)
    store = FeatureStore(repo_path=str(settings.paths.feast))  # a fresh SDK object: no cache of the writer's
    for view, key, prefix, effects in (("glmix_member", "member_id", "member", state.member),
                                       ("glmix_job", "item_id", "job", state.job)):
        ids = effects.entity_ids.tolist() + [987_654_321]  # and one id never seen
        online = store.get_online_features(features=[f"{view}:{prefix}_re_mean", f"{view}:{prefix}_re_variance"],
                                           entity_rows=[{key: i} for i in ids]).to_dict()
        assert online[key] == ids
        assert online[f"{prefix}_re_mean"][-1] is None and online[f"{prefix}_re_variance"][-1] is None
        means = np.asarray(online[f"{prefix}_re_mean"][:-1], dtype=np.float32)
        variances = np.asarray(online[f"{prefix}_re_variance"][:-1], dtype=np.float32)
        # Served as float32: exactly the stored float64 values rounded once.
        np.testing.assert_array_equal(means, effects.mean.float().numpy(), err_msg=view)
        np.testing.assert_array_equal(variances, effects.variance_diagonal().float().numpy(), err_msg=view)
        assert (variances > 0).all()
