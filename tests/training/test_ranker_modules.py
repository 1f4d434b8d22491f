"""Each ranker module against the equation in its docstring, plus the loader, metrics and checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
import torch

from ranker_testdata import one_thread  # noqa: F401 (fixture)
from training.ranker import data
from training.ranker.calibration import IsotonicCalibration, pool_adjacent_violators
from training.ranker.checkpoint import load_checkpoint, save_checkpoint
from training.ranker.cross import ResidualCrossLayer
from training.ranker.embeddings import EmbeddingBags, HashedEmbeddings
from training.ranker.evaluate import auc, evaluate_predictions, expected_calibration_error, normalized_entropy
from training.ranker.gate import DenseGate
from training.ranker.model import Ranker, RankerConfig
from training.ranker.optim import RowWiseAdagrad
from training.ranker.transformer import FeatureTransformer


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("attention", [False, True])
def test_residual_cross_layer_is_its_equation(attention):
    torch.manual_seed(0)
    layer = ResidualCrossLayer(dim=12, rank=5, attention=attention, temperature=2.0)
    with torch.no_grad():
        layer.bias.normal_()
    x0, x = torch.randn(7, 12), torch.randn(7, 12)
    low = x @ layer.down.weight.T
    v = low[:, :5]
    if attention:
        q, k = low[:, 5:10], low[:, 10:15]
        scores = torch.softmax(q.unsqueeze(2) * k.unsqueeze(1) / 2.0, dim=-1)   # [B, r, r] explicitly
        z = v + (scores @ v.unsqueeze(2)).squeeze(2)
    else:
        z = v
    expected = x0 * (z @ layer.up.weight.T + layer.bias) + x
    torch.testing.assert_close(layer(x0, x), expected, rtol=1e-5, atol=1e-5)


def test_dense_gate_is_its_equation():
    torch.manual_seed(0)
    gate = DenseGate(6, 4)
    h = torch.randn(5, 6)
    w, g = gate.linear.weight[:4], gate.linear.weight[4:]
    b, c = gate.linear.bias[:4], gate.linear.bias[4:]
    expected = torch.relu(h @ w.T + b) * torch.sigmoid(h @ g.T + c)
    torch.testing.assert_close(gate(h), expected)


def _pre_norm_layer_by_hand(layer: torch.nn.TransformerEncoderLayer, e: torch.Tensor, heads: int) -> torch.Tensor:
    """h = e + MultiHeadAttention(LN(e)), out = h + W_2 relu(W_1 LN(h)) from the layer's parameters alone."""
    batch, tokens, dim = e.shape
    head_dim = dim // heads

    def layer_norm(x, norm):
        mean = x.mean(-1, keepdim=True)
        variance = ((x - mean) ** 2).mean(-1, keepdim=True)
        return (x - mean) / torch.sqrt(variance + norm.eps) * norm.weight + norm.bias

    attention = layer.self_attn
    q, k, v = (layer_norm(e, layer.norm1) @ attention.in_proj_weight.T + attention.in_proj_bias).split(dim, dim=-1)
    q, k, v = (t.reshape(batch, tokens, heads, head_dim).transpose(1, 2) for t in (q, k, v))   # [B, heads, F, d_h]
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head_dim), dim=-1)             # [B, heads, F, F]
    mixed = (weights @ v).transpose(1, 2).reshape(batch, tokens, dim)
    h = e + mixed @ attention.out_proj.weight.T + attention.out_proj.bias
    hidden = torch.relu(layer_norm(h, layer.norm2) @ layer.linear1.weight.T + layer.linear1.bias)
    return h + hidden @ layer.linear2.weight.T + layer.linear2.bias


@pytest.mark.parametrize("grad_enabled", [True, False])
def test_feature_transformer_is_its_equation(grad_enabled):
    """Each of the `layers` layers is the docstring's pre-norm equation; without gradients torch takes its fused
    encoder fast path, which must compute the same thing."""
    torch.manual_seed(0)
    heads, dim = 2, 8
    transformer = FeatureTransformer(dim, heads=heads, layers=2).eval()
    with torch.no_grad():  # non-trivial norms and biases (they start at 1 and 0)
        for layer in transformer.encoder.layers:
            for norm in (layer.norm1, layer.norm2):
                norm.weight.normal_(1.0, 0.3)
                norm.bias.normal_(0.0, 0.3)
            layer.self_attn.in_proj_bias.normal_(0.0, 0.3)
    e = torch.randn(5, 4, dim)   # 5 rows of F = 4 feature tokens
    expected = e
    with torch.no_grad():
        for layer in transformer.encoder.layers:
            expected = _pre_norm_layer_by_hand(layer, expected, heads)
    assert transformer.encoder.layers[0].self_attn.num_heads == heads and transformer.encoder.norm is None
    with torch.set_grad_enabled(grad_enabled):
        out = transformer(e)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    # Attention mixes tokens: changing one feature's embedding changes the other features' outputs.
    moved = e.clone()
    moved[:, 0] = torch.randn(5, dim)
    with torch.no_grad():
        assert (transformer(moved)[:, 1:] - out[:, 1:]).abs().max() > 1e-3


def test_hashed_embeddings_use_one_block_per_feature_and_bags_average():
    table = HashedEmbeddings([4, 3], dim=2)
    ids = torch.tensor([[1, 2], [0, 0]])
    out = table(ids)
    torch.testing.assert_close(out[0, 1], table.weight[4 + 2])
    torch.testing.assert_close(out[1, 0], table.weight[0])
    bags = EmbeddingBags([5], dim=3)
    values, offsets = torch.tensor([1, 2, 4]), torch.tensor([0, 2, 3])   # bags {1,2}, {4}, {}
    pooled = bags([values], [offsets])
    weight = bags.tables[0].weight
    torch.testing.assert_close(pooled[0, 0], (weight[1] + weight[2]) / 2)
    assert torch.equal(pooled[2, 0], torch.zeros(3))


@pytest.mark.parametrize("weight_decay", [0.0, 0.5])
def test_fused_table_update_equals_rowwise_adagrad(weight_decay):
    torch.manual_seed(0)
    ids = torch.tensor([[1, 0], [1, 2], [3, 2]])
    upstream = torch.randn(3, 2, 4)
    fused, plain = HashedEmbeddings([5, 5], 4), HashedEmbeddings([5, 5], 4)
    plain.weight.data.copy_(fused.weight.data)
    before = fused.weight.data.clone()
    fused.enable_fused_optimizer(lr=0.1, weight_decay=weight_decay)
    (fused(ids) * upstream).sum().backward()
    optimizer = RowWiseAdagrad([plain.weight], lr=0.1, weight_decay=weight_decay)
    (plain(ids) * upstream).sum().backward()
    optimizer.step()
    torch.testing.assert_close(fused.weight.data, plain.weight.data)
    assert not torch.equal(fused.weight.data[1], HashedEmbeddings([5, 5], 4).weight.data[1])
    assert torch.equal(fused.weight.data[4], before[4])  # untouched rows do not decay


def test_bag_tables_fused_with_decay_equal_rowwise_adagrad():
    torch.manual_seed(0)
    values, offsets = [torch.tensor([1, 2, 2, 4, 0])], [torch.tensor([0, 2, 2])]
    upstream = torch.randn(3, 1, 4)
    fused, plain = EmbeddingBags([6], 4), EmbeddingBags([6], 4)
    plain.load_state_dict(fused.state_dict())
    fused.enable_fused_optimizer(lr=0.2, weight_decay=0.3)
    (fused(values, offsets) * upstream).sum().backward()
    optimizer = RowWiseAdagrad([plain.tables[0].weight], lr=0.2, weight_decay=0.3)
    (plain(values, offsets) * upstream).sum().backward()
    optimizer.step()
    torch.testing.assert_close(fused.tables[0].weight.data, plain.tables[0].weight.data)


def test_rowwise_adagrad_dense_and_sparse_gradients_agree():
    torch.manual_seed(0)
    weight_sparse = torch.nn.Parameter(torch.randn(6, 3))
    weight_dense = torch.nn.Parameter(weight_sparse.detach().clone())
    ids, upstream = torch.tensor([0, 4, 4]), torch.randn(3, 3)
    for weight, sparse in ((weight_sparse, True), (weight_dense, False)):
        (torch.nn.functional.embedding(ids, weight, sparse=sparse) * upstream).sum().backward()
        RowWiseAdagrad([weight], lr=0.2).step()
    torch.testing.assert_close(weight_sparse, weight_dense)


def test_pool_adjacent_violators_gives_the_weighted_isotonic_fit():
    values, _, index = pool_adjacent_violators(np.array([1.0, 3.0, 2.0, 4.0]), np.array([1.0, 1.0, 3.0, 1.0]))
    assert values.tolist() == [1.0, 2.25, 4.0] and index.tolist() == [0, 1, 1, 2]


def test_isotonic_calibration_fixes_miscalibrated_scores_and_keeps_order():
    rng = np.random.default_rng(0)
    true_logit = rng.normal(-1.5, 1.2, 40_000)
    labels = (rng.uniform(size=true_logit.size) < 1 / (1 + np.exp(-true_logit))).astype(np.float32)
    model_logit = torch.tensor(2.0 * true_logit + 1.0)          # overconfident and shifted
    raw = torch.sigmoid(model_logit).numpy()
    calibration = IsotonicCalibration(32).fit(model_logit[:20_000], torch.tensor(labels[:20_000]))
    calibrated = calibration(model_logit[20_000:]).numpy()
    truth = 1 / (1 + np.exp(-true_logit[20_000:]))
    noise_floor = expected_calibration_error(truth, labels[20_000:])   # ECE of the true probabilities
    assert expected_calibration_error(raw[20_000:], labels[20_000:]) > 0.05
    assert expected_calibration_error(calibrated, labels[20_000:]) < noise_floor + 0.006
    grid = torch.linspace(-8, 8, 500)
    assert (torch.diff(calibration(grid)) >= 0).all()            # monotone: ranking never reversed


def test_auc_matches_pairwise_count_and_entropy_metrics():
    rng = np.random.default_rng(1)
    scores, labels = rng.integers(0, 5, 300).astype(float), rng.integers(0, 2, 300)
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairwise = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean()
    assert auc(scores, labels) == pytest.approx(pairwise)
    base = labels.mean()
    assert normalized_entropy(np.full(300, base), labels) == pytest.approx(1.0, abs=1e-9)


def _pairwise_auc(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> float:
    """Weighted AUC by counting every (positive, negative) pair, ties as one half."""
    pos, neg = labels == 1, labels == 0
    above = (scores[pos][:, None] > scores[neg][None, :]) + 0.5 * (scores[pos][:, None] == scores[neg][None, :])
    pair_weight = weights[pos][:, None] * weights[neg][None, :]
    return float((above * pair_weight).sum() / pair_weight.sum())


def test_evaluation_splits_auc_by_members_with_and_without_training_rows():
    """`auc_cold`: rows of members absent from the training days (warm_members), `auc_warm`: the others."""
    rng = np.random.default_rng(4)
    rows = 400
    member_ids = rng.integers(1, 11, rows)                  # members 1..10 in the evaluation day
    warm_members = np.array([1, 2, 3, 4, 5, 99])            # trained on (99 has no evaluation row)
    labels = rng.integers(0, 2, rows).astype(np.float64)
    weights = rng.uniform(0.5, 2.0, rows)
    cold = member_ids > 5
    # Warm members ranked well, cold ones backwards; rounded so that there are ties.
    signal = np.where(cold, -1.0, 1.0) * (labels - 0.5)
    logits = np.round(signal + rng.normal(0, 0.8, rows), 1)
    probabilities = 1 / (1 + np.exp(-logits))
    true_probabilities = np.round(np.clip(0.5 + 0.3 * (labels - 0.5) + rng.normal(0, 0.2, rows), 0.01, 0.99), 2)

    result = evaluate_predictions(logits, probabilities, labels, weights, member_ids, warm_members, true_probabilities)

    assert result.cold_rows == int(cold.sum()) and 0 < result.cold_rows < rows
    assert result.auc_cold == pytest.approx(_pairwise_auc(logits[cold], labels[cold], weights[cold]), abs=1e-12)
    assert result.auc_warm == pytest.approx(_pairwise_auc(logits[~cold], labels[~cold], weights[~cold]), abs=1e-12)
    assert result.auc_cold < 0.4 and result.auc_warm > 0.6       # the buckets really differ
    assert result.auc == pytest.approx(_pairwise_auc(logits, labels, weights), abs=1e-12)
    assert result.oracle_auc == pytest.approx(_pairwise_auc(true_probabilities, labels, weights), abs=1e-12)
    assert result.summary()["auc_gap_to_oracle"] == pytest.approx(result.oracle_auc - result.auc)

    # Every evaluation member trained on: no cold bucket (NaN, reported as None); no truth: no oracle.
    all_warm = evaluate_predictions(logits, probabilities, labels, weights, member_ids, np.arange(1, 11))
    assert all_warm.cold_rows == 0 and math.isnan(all_warm.auc_cold)
    assert all_warm.auc_warm == pytest.approx(result.auc, abs=1e-12)
    assert all_warm.summary()["auc_cold"] is None and all_warm.summary()["oracle_auc"] is None


def _table() -> pa.Table:
    return pa.table({
        "member_id": pa.array([7, 8, None], pa.int64()), "item_id": pa.array([1, 1, 2], pa.int64()),
        "m_industry": pa.array(["tech", None, "tech"]), "j_skills": pa.array([["a", "b"], None, ["b"]], pa.list_(pa.string())),
        "rate": pa.array([0.5, None, 2.0], pa.float32()), "meta": pa.array([[1.0, 2.0], None, [3.0, 4.0]], pa.list_(pa.float32())),
        "label": pa.array([1, 0, 1], pa.int8()),
    })


SPEC = {"label": "label", "member": "member_id", "item": "item_id", "categorical": ["m_industry"],
        "multi_valued": ["j_skills"], "dense": ["rate"], "embeddings": {"meta": 2}}


def test_encode_table_hashes_deterministically_and_reads_nulls_as_missing():
    config = RankerConfig.from_spec(SPEC, id_buckets=1000, categorical_buckets=50)
    batch = data.encode_table(_table(), SPEC, config)
    assert batch.sparse[2, 0] == 0 and batch.sparse[1, 2] == 0            # null id / category -> row 0
    assert batch.sparse[0, 2] == batch.sparse[2, 2] != 0                 # same string, same row
    assert torch.equal(batch.sparse, data.encode_table(_table(), SPEC, config).sparse)
    assert batch.bag_offsets[0].tolist() == [0, 2, 2] and batch.bag_values[0][1] == batch.bag_values[0][2]
    assert batch.dense.tolist() == [[0.5, 1.0, 2.0], [0.0, 0.0, 0.0], [2.0, 3.0, 4.0]]
    assert batch.weight.tolist() == [1.0, 1.0, 1.0]
    picked = batch.take(torch.tensor([2, 0]))
    assert picked.bag_offsets[0].tolist() == [0, 1] and picked.bag_values[0].tolist() == [
        batch.bag_values[0][2].item(), *batch.bag_values[0][:2].tolist()]


def test_take_gathers_rows_and_their_bags_like_a_loop_over_rows():
    generator = torch.Generator().manual_seed(3)
    rows = 50
    lengths = [torch.randint(0, 4, (rows,), generator=generator) for _ in range(2)]
    lengths[0][-1], lengths[1][:5] = 3, 0      # the last row's bag ends at the values' end; empty bags
    values = [torch.randint(0, 1000, (int(n.sum()),), generator=generator) for n in lengths]
    offsets = [torch.cumsum(n, 0) - n for n in lengths]
    batch = data.Batch(torch.randint(0, 9, (rows, 3), generator=generator), torch.randn(rows, 4, generator=generator),
                       values, offsets, torch.randint(0, 2, (rows,), generator=generator).float(), torch.rand(rows),
                       torch.arange(rows) + 100, torch.arange(rows) + 500, torch.randint(1, 6, (rows,), generator=generator))
    index = torch.tensor([rows - 1, 0, 3, rows - 2, rows - 1, 17, 2, 4])  # repeats, any order, the last rows
    picked = batch.take(index)
    for name in ("sparse", "dense", "label", "weight", "member_id", "event_id", "position"):
        assert torch.equal(getattr(picked, name), getattr(batch, name)[index]), name
    for bag in range(2):
        expected = [values[bag][int(offsets[bag][i]):int(offsets[bag][i] + lengths[bag][i])] for i in index.tolist()]
        assert torch.equal(picked.bag_values[bag], torch.cat(expected))
        assert picked.bag_offsets[bag].tolist() == [sum(len(e) for e in expected[:k]) for k in range(len(expected))]
    assert len(batch.take(torch.tensor([], dtype=torch.int64))) == 0


def test_encode_table_names_the_missing_column():
    config = RankerConfig.from_spec({**SPEC, "dense": ["rate", "salary"]})
    with pytest.raises(KeyError, match="salary"):
        data.encode_table(_table(), SPEC, config, source="dt=2026-01-02/part-0.parquet")


def test_checkpoint_round_trip_without_pickle(tmp_path):
    torch.manual_seed(0)
    config = RankerConfig.from_spec(SPEC, id_buckets=100, categorical_buckets=20, transformer_layers=1)
    model = Ranker(config).eval()
    batch = data.encode_table(_table(), SPEC, config)
    model.calibration.fit(torch.randn(200), (torch.rand(200) < 0.3).float())
    save_checkpoint(model, tmp_path, {"note": "test"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    assert not (tmp_path / "model.safetensors").read_bytes().startswith(b"\x80")   # not a pickle stream
    loaded = load_checkpoint(tmp_path)
    torch.testing.assert_close(loaded.probability(*batch.inputs), model.probability(*batch.inputs))
    assert loaded.config == config
