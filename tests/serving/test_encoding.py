"""serving.encoding gives the reference path's tensors bit for bit (assemble_rows + encode_table + offsets)."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from serving.encoding import EncodedRequest, RequestEncoder, score_requests
from serving.scoring import (MetaInit, RandomEffects, ServingModels, candidate_frame, model_inputs,
                             random_effect_offset, score_candidates)
from training.glmix.design import CategoricalBasis

SPEC = {
    "label": "label", "weight": "weight", "member": "member_id", "item": "item_id",
    "categorical": ["m_industry", "m_seniority", "j_company", "j_industry", "j_seniority", "m_absent"],
    "multi_valued": ["m_skills", "j_skills"],
    "dense": ["m_years", "m_impressions_7d", "m_rate_28d", "j_salary", "j_impressions_7d", "j_rate_7d", "m_known",
              "j_known", "x_affinity_industry", "x_affinity_seniority", "x_affinity_skills_mean",
              "x_affinity_skills_max", "x_industry_match", "x_seniority_match", "x_skills_overlap", "x_not_served"],
    "embeddings": {"meta_embedding": 4},
}
MEMBER_COLUMNS = ["m_industry", "m_seniority", "m_skills", "m_years", "m_impressions_7d", "m_rate_28d",
                  "a_industry_values", "a_industry_rates", "a_seniority_values", "a_seniority_rates",
                  "a_skills_values", "a_skills_rates", "member_re_mean", "member_re_variance", "meta_embedding"]
JOB_COLUMNS = ["j_company", "j_industry", "j_seniority", "j_skills", "j_salary", "j_impressions_7d", "j_rate_7d",
               "job_re_mean", "job_re_variance"]
SKILLS = [f"s{i}" for i in range(12)]
EMPTY_JOB = dict.fromkeys(JOB_COLUMNS)


def serving_models(with_effects: bool = True, with_meta: bool = True) -> ServingModels:
    import torch

    from training.ranker.model import Ranker, RankerConfig

    torch.manual_seed(0)
    config = RankerConfig.from_spec(SPEC, id_buckets=1 << 10, categorical_buckets=1 << 8, embedding_dim=4,
                                    cross_layers=1, cross_rank=4, mlp_widths=(8,))
    ranker = Ranker(config, sparse_gradients=False).eval()
    effects = None
    if with_effects:
        member_basis = CategoricalBasis.from_vocabularies({"industry": ["energy", "retail", "tech"]})
        job_basis = CategoricalBasis.from_vocabularies({"seniority": ["entry", "senior"]})
        effects = RandomEffects(member_basis, job_basis, np.array([0.1, -0.2, 0.05, 0.3]),
                                np.array([-0.1, 0.2, 0.4]), "rankflow-glmix:t")
    meta = MetaInit(np.array([0.5, -1.0, 0.25, 2.0], np.float32), "rankflow-meta:t") if with_meta else None
    return ServingModels(ranker, SPEC, "rankflow-ranker:t", effects, meta)


def random_member(rng: np.random.Generator) -> dict | None:
    if rng.random() < 0.15:
        return None  # unknown member (cold start) or a degraded read
    maybe = lambda value, p=0.2: None if rng.random() < p else value  # noqa: E731
    industries = ["energy", "retail", "tech", "food"]
    values = list(rng.choice(industries + ["tech"], size=int(rng.integers(0, 6))))  # duplicates on purpose
    skills = list(rng.choice(SKILLS, size=int(rng.integers(0, 10))))
    return {
        "m_industry": maybe(str(rng.choice(industries))), "m_seniority": maybe(str(rng.choice(["entry", "senior"]))),
        "m_skills": maybe(list(rng.choice(SKILLS, size=int(rng.integers(0, 5))))),
        # the first numeric m_ column decides m_known: sometimes null, sometimes NaN
        "m_years": maybe(float(rng.choice([3.5, math.nan])), 0.3),
        "m_impressions_7d": maybe(int(rng.integers(0, 50))),
        "m_rate_28d": maybe(float(np.float32(rng.random()))),
        "a_industry_values": maybe(values), "a_industry_rates": [float(np.float32(r)) for r in rng.random(len(values))],
        "a_seniority_values": maybe(["entry", "senior"]), "a_seniority_rates": [0.25, 0.75],
        "a_skills_values": maybe(skills), "a_skills_rates": [float(np.float32(r)) for r in rng.random(len(skills))],
        "member_re_mean": maybe([float(v) for v in rng.normal(size=4)] if rng.random() < 0.8 else [1.0, 2.0]),
        "member_re_variance": None,
        "meta_embedding": maybe([float(np.float32(v)) for v in rng.normal(size=4)] if rng.random() < 0.8 else [], 0.4),
    }


def random_job(rng: np.random.Generator) -> dict:
    if rng.random() < 0.1:
        return dict.fromkeys(JOB_COLUMNS)  # unknown candidate
    maybe = lambda value, p=0.2: None if rng.random() < p else value  # noqa: E731
    return {
        "j_company": maybe(f"c{int(rng.integers(0, 5))}"), "j_industry": maybe(str(rng.choice(["energy", "tech", "x"]))),
        "j_seniority": maybe(str(rng.choice(["entry", "senior"]))),
        "j_skills": maybe(list(rng.choice(SKILLS, size=int(rng.integers(0, 11))))),  # >= 8 values: pairwise sums
        "j_salary": maybe(float(np.float32(rng.normal(50, 10))), 0.5),  # the first numeric j_ column, often null
        "j_impressions_7d": maybe(int(rng.integers(0, 100))),
        "j_rate_7d": maybe(float(rng.choice([0.1, math.inf, math.nan]))),
        "job_re_mean": maybe([float(v) for v in rng.normal(size=3)]), "job_re_variance": None,
    }


def reference(models: ServingModels, member_id: int, member: dict | None, item_ids: list[int], rows: list[dict]):
    """serving.scoring's offline path: candidate_frame -> model_inputs -> encode_table, random_effect_offset."""
    import pandas as pd

    from training.ranker.data import encode_table

    jobs = pd.DataFrame(rows, columns=JOB_COLUMNS)
    jobs.insert(0, "item_id", np.asarray(item_ids, np.int64))
    frame = candidate_frame(member_id, member, jobs)
    inputs = model_inputs(frame, models)
    extra = {"label": np.zeros(len(inputs), np.int8), "weight": np.ones(len(inputs), np.float32)}
    table = pa.Table.from_pandas(inputs.assign(**extra), preserve_index=False)
    batch = encode_table(table, models.spec, models.ranker.config, source="serving request")
    return batch, random_effect_offset(frame, models.random_effects)


def assert_same(encoded: EncodedRequest, batch, offset) -> None:
    np.testing.assert_array_equal(encoded.sparse, batch.sparse.numpy())
    np.testing.assert_array_equal(encoded.dense, batch.dense.numpy())
    assert len(encoded.bag_values) == len(batch.bag_values)
    for ours, theirs in zip(encoded.bag_values, batch.bag_values):
        np.testing.assert_array_equal(ours, theirs.numpy())
    for ours, theirs in zip(encoded.bag_offsets, batch.bag_offsets):
        np.testing.assert_array_equal(ours, theirs.numpy())
    if offset is None:
        assert encoded.offset is None
    else:
        np.testing.assert_array_equal(encoded.offset, offset)


@pytest.mark.parametrize(("with_effects", "with_meta"), [(True, True), (False, False)])
def test_encoded_inputs_equal_the_reference_bit_for_bit(with_effects, with_meta):
    rng = np.random.default_rng(7)
    models = serving_models(with_effects, with_meta)
    encoder = RequestEncoder(models, MEMBER_COLUMNS, JOB_COLUMNS)
    jobs = {item: random_job(rng) for item in range(100, 160)}
    members = {member: random_member(rng) for member in range(1, 30)}
    for request in range(80):
        member_id = int(rng.choice(list(members)))
        item_ids = [int(i) for i in rng.choice(list(jobs), size=int(rng.integers(1, 40)), replace=False)]
        if request % 10 == 9:  # new values for some jobs and the member: the caches must not serve the old ones
            for item in item_ids[:3]:
                jobs[item] = random_job(rng)
            members[member_id] = random_member(rng)
        rows = [jobs[i] for i in item_ids]
        if request % 7 == 3:  # a degraded read: the shared default row for every candidate, then back
            rows = [EMPTY_JOB] * len(item_ids)
        encoded = encoder.encode(member_id, members[member_id], item_ids, rows)
        assert_same(encoded, *reference(models, member_id, members[member_id], item_ids, rows))


def test_batched_scores_equal_scoring_each_request_alone():
    rng = np.random.default_rng(3)
    models = serving_models()
    encoder = RequestEncoder(models, MEMBER_COLUMNS, JOB_COLUMNS)
    requests, expected = [], []
    import pandas as pd

    for member_id in range(1, 6):
        member = random_member(rng)
        item_ids = list(range(200, 200 + int(rng.integers(1, 30))))
        rows = [random_job(rng) for _ in item_ids]
        requests.append(encoder.encode(member_id, member, item_ids, rows))
        jobs = pd.DataFrame(rows, columns=JOB_COLUMNS)
        jobs.insert(0, "item_id", np.asarray(item_ids, np.int64))
        expected.append(score_candidates(member_id, member, jobs, models))
    for alone, batched, offline in zip((score_requests(models.ranker, [r])[0] for r in requests),
                                       score_requests(models.ranker, requests), expected):
        np.testing.assert_array_equal(alone, offline)  # one request: the very same computation
        np.testing.assert_allclose(batched, offline, rtol=1e-6, atol=1e-9)
        assert len(np.unique(offline)) > 1


def test_bad_stored_values_fail_like_encode_table():
    models = serving_models()
    encoder = RequestEncoder(models, MEMBER_COLUMNS, JOB_COLUMNS)
    member = random_member(np.random.default_rng(1)) or {}
    job = random_job(np.random.default_rng(2))
    job["j_industry"] = "tech"
    wrong_width = {**member, "meta_embedding": [1.0, 2.0, 3.0]}
    with pytest.raises(ValueError, match="vector column 'meta_embedding' row 0 has 3 values, expected 4"):
        reference(models, 1, wrong_width, [5], [job])
    with pytest.raises(ValueError, match="vector column 'meta_embedding' row 0 has 3 values, expected 4"):
        encoder.encode(1, wrong_width, [5], [job])
    infinite_rate = {**member, "a_industry_values": ["tech"], "a_industry_rates": [math.inf], "meta_embedding": None}
    with pytest.raises(ValueError, match="dense column 'x_affinity_industry' has a non-finite value inf at row 0"):
        reference(models, 1, infinite_rate, [5], [job])
    with pytest.raises(ValueError, match="dense column 'x_affinity_industry' has a non-finite value inf at row 0"):
        encoder.encode(1, infinite_rate, [5], [job])


def with_variances(row: dict | None, rng: np.random.Generator, prefix: str, width: int) -> dict | None:
    """The row with a posterior variance beside its mean most of the time (else none: the prior's)."""
    if row is None or row.get(f"{prefix}_re_mean") is None or rng.random() < 0.3:
        return row
    return {**row, f"{prefix}_re_variance": [float(v) for v in rng.uniform(0.01, 2.0, size=width)]}


def test_exploring_offsets_equal_the_reference_draws_bit_for_bit():
    rng = np.random.default_rng(11)
    models = serving_models()
    encoder = RequestEncoder(models, MEMBER_COLUMNS, JOB_COLUMNS)
    jobs = {item: with_variances(random_job(rng), rng, "job", 3) for item in range(100, 140)}
    for request in range(30):
        member_id = int(rng.integers(1, 10))
        member = with_variances(random_member(rng), rng, "member", 4)
        item_ids = [int(i) for i in rng.choice(list(jobs), size=int(rng.integers(1, 30)), replace=False)]
        rows = [jobs[i] for i in item_ids]
        draws = np.random.default_rng(request)
        encoded = encoder.encode(member_id, member, item_ids, rows, draws)
        offline = np.random.default_rng(request)
        batch, offset = reference(models, member_id, member, item_ids, rows)
        import pandas as pd

        frame_jobs = pd.DataFrame(rows, columns=JOB_COLUMNS)
        frame_jobs.insert(0, "item_id", np.asarray(item_ids, np.int64))
        explored = random_effect_offset(candidate_frame(member_id, member, frame_jobs), models.random_effects, offline)
        assert_same(encoded, batch, explored)
        assert not np.array_equal(explored, offset)  # the draws moved the offsets off the means
        # the same inputs without exploration: the means again (the caches hold no draw)
        np.testing.assert_array_equal(encoder.encode(member_id, member, item_ids, rows).offset, offset)


def test_read_only_arrays_from_the_scorers_pickle_buffers_score_without_warnings():
    import pickle
    import warnings

    models = serving_models()
    rng = np.random.default_rng(5)
    encoded = RequestEncoder(models, MEMBER_COLUMNS, JOB_COLUMNS).encode(3, random_member(rng), [1, 2],
                                                                         [random_job(rng), random_job(rng)])
    buffers = []
    payload = pickle.dumps(encoded.to_dict(), protocol=5, buffer_callback=buffers.append)
    arrived = EncodedRequest.from_dict(pickle.loads(payload, buffers=[bytes(b.raw()) for b in buffers]))
    assert not arrived.dense.flags.writeable  # as the scorer receives them
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = score_requests(models.ranker, [arrived])[0]
    np.testing.assert_array_equal(scores, score_requests(models.ranker, [encoded])[0])
