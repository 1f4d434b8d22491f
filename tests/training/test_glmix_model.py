"""GLMix on the synthetic marketplace: recovery of the true member weights and next-day AUC; a day's bad rows."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
import torch
from glmix_reference import one_torch_thread  # noqa: F401 (autouse fixture)
from scipy.stats import rankdata

from features.contract import read_partitions, read_raw
from features.synthetic import BASIS, generate
from rankflow.config import GeneratorSettings
from rankflow.paths import DataPaths
from training.glmix.design import CategoricalBasis
from training.glmix.fixed_effect import FixedEffectModel, fit_fixed_effect
from training.glmix.model import (
    GLMixConfig,
    GLMixEvents,
    GLMixState,
    random_effect_logit,
    update_day,
    usable_rows,
)
from training.glmix.random_effects import EntityEvents, RandomEffectConfig, RandomEffectState, update_random_effects

DENSE = ["industry_match", "seniority_match", "region_match", "skill_overlap", "log_position"]
# Few members, many impressions: most members pass 1,000 events in the 7 training days.
MARKET = GeneratorSettings(members=60, jobs=300, days=8, impressions_per_day=30_000, seed=3)


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    ranks = rankdata(scores)
    positives = labels == 1
    n1, n0 = positives.sum(), (~positives).sum()
    return float((ranks[positives].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    """Per day: GLMix events built straight from raw + attributes, and the global model's dense features."""
    paths = DataPaths(tmp_path_factory.mktemp("market"))
    generate(MARKET, paths)
    members = read_raw(paths, "members").set_index("member_id")
    items = read_raw(paths, "items").set_index("item_id")
    basis = CategoricalBasis.from_names(BASIS)
    days = []
    for index in range(MARKET.days):
        day = MARKET.start_date + timedelta(days=index)
        events = read_raw(paths, "events", day=day)
        m, j = members.loc[events.member_id.values], items.loc[events.item_id.values]
        overlap = [len(set(a) & set(b)) for a, b in zip(m.skills.values, j.skills.values)]
        dense = np.stack([m.industry.values == j.industry.values, m.seniority.values == j.seniority.values,
                          m.region.values == j.region.values, overlap, np.log(events.position.values)], 1)
        days.append((day, GLMixEvents(
            torch.tensor(events.member_id.values), torch.tensor(events.item_id.values),
            torch.tensor(basis.design({"industry": j.industry.values, "seniority": j.seniority.values})),
            torch.tensor(basis.design({"industry": m.industry.values, "seniority": m.seniority.values})),
            torch.tensor(events.label.values.astype(np.float64))), dense.astype(np.float64)))
    return paths, basis, days


def test_recovers_member_weights_and_beats_global_and_last_day_models(market):
    """Acceptance 3, on 7 days of 30,000 impressions (60 members, ~3,500 events each; the 8th day held out).

    Weights are compared as functions, beta_m . phi(job) over all 32 (industry, seniority) job types: phi has
    an intercept plus full one-hot blocks, so the coefficients themselves are only identified up to moving
    mass between the intercept and a block (the prior picks one split; the truth's split is arbitrary).
    Measured here: correlation 0.91 over members with >= 50 events (0.93 for >= 1,000 events); per raw
    coefficient 0.80. On a wider market (100 members, 40,000 impressions/day) the same model measures
    0.72 / 0.78 / 0.87 / 0.95 for members with 50-150 / 150-400 / 400-1,000 / >= 1,000 events: recovery is
    limited by events (a 7% apply rate), not by the solver.
    """
    paths, basis, days = market
    config = GLMixConfig(member=RandomEffectConfig(dim=basis.dim, prior_variance=1.0),
                         job=RandomEffectConfig(dim=basis.dim, prior_variance=0.25), passes=2)
    state, fixed_effect = GLMixState.empty(config, torch.float64), None
    for _, events, dense in days[:-1]:
        state, fixed_effect, summary = update_day(state, events, config, dense, DENSE, fixed_effect)
        assert summary["member"]["not_converged"] == 0 and summary["job"]["not_converged"] == 0

    # Correlation with truth/member_weights on the last training day, members with >= 50 events.
    last_day = days[-2][0]
    member_ids, counts = torch.unique(torch.cat([events.member_ids for _, events, _ in days[:-1]]), return_counts=True)
    active = member_ids[counts >= 50]
    assert active.numel() >= 50
    truth = read_partitions(paths.truth / "member_weights", day=last_day).set_index("member_id")
    rows, found = state.member.locate(active)
    assert bool(found.all())
    job_types = basis.design({"industry": np.repeat(basis.columns[0][1], 4), "seniority": np.tile(basis.columns[1][1], 8)})
    learned = state.member.mean[rows].numpy() @ job_types.T
    true = truth.loc[active.numpy(), BASIS].to_numpy() @ job_types.T
    correlation = np.corrcoef(learned.ravel(), true.ravel())[0, 1]
    assert correlation >= 0.9, correlation

    # Next-day AUC: GLMix > global model alone, and > per-member models fitted from scratch on the last day.
    _, test_events, test_dense = days[-1]
    labels = test_events.labels.numpy()
    global_logit = fixed_effect.logit(test_dense)

    def glmix_logit(glmix_state):
        return global_logit + random_effect_logit(glmix_state, config, test_events.member_ids, test_events.item_ids,
                                                  test_events.member_design, test_events.job_design).numpy()

    _, last_events, last_dense = days[-2]
    scratch, _, _ = update_day(GLMixState.empty(config, torch.float64), last_events, config, last_dense, DENSE,
                               fixed_effect)
    auc_global, auc_glmix, auc_scratch = _auc(global_logit, labels), _auc(glmix_logit(state), labels), _auc(
        glmix_logit(scratch), labels)
    assert auc_glmix > auc_global + 0.1, (auc_glmix, auc_global)
    assert auc_glmix > auc_scratch + 0.01, (auc_glmix, auc_scratch)


# Members with 50-150 events are the hard case of acceptance 3: about 4-12 applies each (7-8% apply rate).
BOUND_MARKET = GeneratorSettings(members=1_500, jobs=400, days=6, impressions_per_day=25_000, seed=11)


def test_recovery_of_members_with_50_to_150_events_is_at_the_bayes_oracle(tmp_path):
    """What bounds recovery: the data, not the estimator.

    The oracle knows everything but the member effect: its offset is the true logit minus the true member term
    (global part, job effects, latent affinity, position bias all exact), its prior is the generator's N(0, I),
    and it sees all days at once. Its posterior mean is the best estimate the events allow. GLMix, learning
    the global part and the job effects itself, day by day, must come within 0.02 of it. Measured on the
    default demo market (4,000 members, 20,000 impressions/day, 10 days): oracle 0.719 / GLMix 0.711 for
    50-150 events, 0.823 / 0.820 for 150-400, 0.880 / 0.871 for >= 400: correlation 0.9 needs several hundred
    events per member at this apply rate, whatever the estimator (prior variance 0.5 or 2 instead of the
    true 1: oracle 0.715 / 0.710, so an empirical-Bayes prior has nothing to gain here). On this test's market:
    451 members with 50-150 events, oracle 0.723, GLMix 0.717.
    """
    paths = DataPaths(tmp_path)
    generate(BOUND_MARKET, paths)
    members = read_raw(paths, "members").set_index("member_id")
    items = read_raw(paths, "items").set_index("item_id")
    basis = CategoricalBasis.from_names(BASIS)
    config = GLMixConfig(member=RandomEffectConfig(dim=basis.dim, prior_variance=1.0),
                         job=RandomEffectConfig(dim=basis.dim, prior_variance=0.25), passes=2)
    state, fixed_effect = GLMixState.empty(config, torch.float64), None
    oracle_parts = []
    last_day = BOUND_MARKET.start_date + timedelta(days=BOUND_MARKET.days - 1)
    truth = read_partitions(paths.truth / "member_weights", day=last_day).set_index("member_id")
    for index in range(BOUND_MARKET.days):
        day = BOUND_MARKET.start_date + timedelta(days=index)
        events = read_raw(paths, "events", day=day)
        true_prob = read_partitions(paths.truth / "events", day=day).set_index("event_id").loc[
            events.event_id.values, "true_prob"].to_numpy()
        m, j = members.loc[events.member_id.values], items.loc[events.item_id.values]
        overlap = [len(set(a) & set(b)) for a, b in zip(m.skills.values, j.skills.values)]
        dense = np.stack([m.industry.values == j.industry.values, m.seniority.values == j.seniority.values,
                          m.region.values == j.region.values, overlap, np.log(events.position.values)], 1)
        member_design = basis.design({"industry": j.industry.values, "seniority": j.seniority.values})
        day_events = GLMixEvents(
            torch.tensor(events.member_id.values), torch.tensor(events.item_id.values), torch.tensor(member_design),
            torch.tensor(basis.design({"industry": m.industry.values, "seniority": m.seniority.values})),
            torch.tensor(events.label.values.astype(np.float64)))
        state, fixed_effect, _ = update_day(state, day_events, config, dense.astype(np.float64), DENSE, fixed_effect)
        # Truth of the last day (the daily drift, 0.02 per coordinate, is small against the unit prior).
        member_term = (member_design * truth.loc[events.member_id.values, list(BASIS)].to_numpy()).sum(1)
        oracle_parts.append((events.member_id.values, member_design, events.label.values.astype(np.float64),
                             np.log(true_prob) - np.log1p(-true_prob) - member_term))

    ids, design, labels, offsets = (np.concatenate(parts) for parts in zip(*oracle_parts))
    oracle, _ = update_random_effects(RandomEffectState.empty(config.member, torch.float64), EntityEvents(
        torch.tensor(ids), torch.tensor(design), torch.tensor(labels), None, torch.tensor(offsets)), config.member)

    member_ids, counts = np.unique(ids, return_counts=True)
    hard = member_ids[(counts >= 50) & (counts < 150)]
    assert hard.size >= 300
    job_types = basis.design({"industry": np.repeat(basis.columns[0][1], 4), "seniority": np.tile(basis.columns[1][1], 8)})
    true = truth.loc[hard, list(BASIS)].to_numpy() @ job_types.T

    def correlation(effects):
        rows, found = effects.locate(torch.tensor(hard))
        assert bool(found.all())
        return float(np.corrcoef((effects.mean[rows].numpy() @ job_types.T).ravel(), true.ravel())[0, 1])

    ours, best = correlation(state.member), correlation(oracle)
    assert ours >= best - 0.02, (ours, best)
    assert best < 0.85, best  # the acceptance's 0.9 is out of reach of any estimator for these members


def _random_day(rng, rows: int = 600, dim: int = 4):
    """A day of events over 40 members and 15 jobs with random designs, labels, weights and 2 dense features."""
    design = np.concatenate([np.ones((rows, 1)), rng.normal(size=(rows, dim - 1))], 1)
    events = GLMixEvents(torch.tensor(rng.integers(0, 40, rows)), torch.tensor(rng.integers(100, 115, rows)),
                         torch.tensor(design), torch.tensor(design[rng.permutation(rows)]),
                         torch.tensor((rng.random(rows) < 0.3).astype(np.float64)),
                         torch.tensor(rng.uniform(0.5, 2.0, rows)))
    return events, rng.normal(size=(rows, 2))


def test_a_days_unusable_rows_are_dropped_for_both_parts_and_an_all_bad_day_changes_nothing():
    """update_day drops by random_effects.unusable_events before the fixed effect too (it used to raise on a NaN)."""
    rng = np.random.default_rng(5)
    events, dense = _random_day(rng)
    config = GLMixConfig(member=RandomEffectConfig(dim=4), job=RandomEffectConfig(dim=4), passes=2)
    names = ["first", "second"]
    bad = np.zeros(len(dense), dtype=bool)
    bad[[3, 50, 51, 400]] = True
    dirty_dense, labels, weights = dense.copy(), events.labels.clone(), events.weights.clone()
    dirty_dense[3, 1], dirty_dense[50, 0], labels[51], weights[400] = np.nan, -np.inf, 2.0, 0.0
    dirty = GLMixEvents(events.member_ids, events.item_ids, events.member_design, events.job_design, labels, weights)
    clean = GLMixEvents(*(t[torch.as_tensor(~bad)] for t in (events.member_ids, events.item_ids, events.member_design,
                                                              events.job_design, events.labels, events.weights)))
    empty = GLMixState.empty(config, torch.float64)

    state, fixed_effect, summary = update_day(empty, dirty, config, dirty_dense, names)
    expected, expected_fixed, _ = update_day(empty, clean, config, dense[~bad], names)
    assert summary["rows"] == {"read": 600, "used": 596, "dropped": 4,
                               "dropped_by_reason": {"features_not_finite": 2, "offset_not_finite": 0,
                                                     "label_not_0_or_1": 1, "weight_not_finite_positive": 1},
                               "non_finite_by_column": {"first": 1, "second": 1}}
    assert summary["member"]["events_dropped"] == summary["job"]["events_dropped"] == 4
    assert summary["member"]["events_used"] == 596
    torch.testing.assert_close(state.member.mean, expected.member.mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state.job.precision, expected.job.precision, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(fixed_effect.weights, expected_fixed.weights, rtol=1e-12)
    assert "4 of 600 rows dropped: features_not_finite 2 (first 1, second 1)" in usable_rows(
        dirty, dirty_dense, names).describe()

    nothing = GLMixEvents(*(getattr(dirty, f) for f in ("member_ids", "item_ids", "member_design", "job_design")),
                          torch.full((600,), float("nan")), weights)
    same, same_fixed, summary = update_day(state, nothing, config, dense, names, fixed_effect)
    assert same is state and same_fixed is fixed_effect
    assert summary["rows"]["used"] == 0 and summary["member"]["events_used"] == 0 and summary["passes"] == 0


def test_the_fixed_effect_refuses_non_finite_input_naming_each_column_and_field():
    features, labels = np.ones((5, 2)), np.array([0.0, 1.0, 0.0, 1.0, 1.0])
    features[2, 1], labels[4] = np.inf, np.nan
    with pytest.raises(ValueError, match=r"non-finite values in feature 'second' \(1 rows\), labels \(1 rows\)"):
        fit_fixed_effect(features, labels, ["first", "second"])


@pytest.mark.parametrize("rows", [0, 1, 1003])
def test_the_fixed_effect_logit_a_chunk_at_a_time_is_the_whole_frames_formula_bit_for_bit(rows):
    """35 features, as a demo day's dense columns (with 5, any chunk size passes). 1,003 rows: too few for
    BLAS to split the whole-array reference between threads."""
    rng = np.random.default_rng(rows)
    k = 35
    model = FixedEffectModel([f"x{i}" for i in range(k)], rng.normal(size=k), rng.uniform(0.5, 2, size=k),
                             rng.normal(size=k), 0.25)
    features = rng.normal(size=(rows, k)).astype(np.float32)  # float32 as the training set holds them
    whole = (features.astype(np.float64) - model.center) / model.scale @ model.weights + model.bias
    for chunk_rows in (8, 64, 1 << 15):
        got = model.logit(features, chunk_rows=chunk_rows)
        assert got.dtype == np.float64 and got.shape == (rows,)
        np.testing.assert_array_equal(got, whole)
    for bad in (0, -8, 7):
        with pytest.raises(ValueError, match="chunk_rows must be a positive multiple of 8"):
            model.logit(features, chunk_rows=bad)
