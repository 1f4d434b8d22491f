"""Training: deterministic by seed, beats logistic regression, warm start, and torchrun DDP = one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from ranker_testdata import SMALL, days, one_thread, write_training_set  # noqa: F401 (fixture)
from training.ranker import data
from training.ranker.evaluate import auc
from training.ranker.logistic import LogisticRegression
from training.ranker.model import RankerConfig
from training.ranker.model import Ranker
from training.ranker.train import TrainConfig, bag_capacities, fixed_shape, predict_logits, train_ranker, weighted_bce

REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def training_set(tmp_path_factory) -> Path:
    return write_training_set(tmp_path_factory.mktemp("ranker"), days=4, rows_per_day=3000)


def _config(training_set: Path, **overrides) -> RankerConfig:
    return RankerConfig.from_spec(data.read_spec(training_set), **{**SMALL, **overrides})


def _next_day_auc(model, training_set: Path) -> float:
    spec = data.read_spec(training_set)
    rows = data.load_rows(data.day_files(training_set, days(4)[3:]), spec, model.config)
    return auc(predict_logits(model, rows).numpy(), rows.label.numpy())


def test_same_seed_same_model_other_seed_differs(training_set):
    config = TrainConfig(epochs=1, seed=3, log_every=1)
    first = train_ranker(training_set, days(2), _config(training_set), config)
    second = train_ranker(training_set, days(2), _config(training_set), config)
    other = train_ranker(training_set, days(2), _config(training_set), TrainConfig(epochs=1, seed=4, log_every=1))
    assert [h["loss"] for h in first.history] == [h["loss"] for h in second.history]
    assert [h["loss"] for h in first.history] != [h["loss"] for h in other.history]
    assert first.history[-1]["loss"] < first.history[0]["loss"]


def test_ranker_beats_logistic_regression_next_day(training_set):
    config = TrainConfig(epochs=3)
    ranker = train_ranker(training_set, days(3), _config(training_set), config).model
    logistic = train_ranker(training_set, days(3), _config(training_set), config, model_factory=LogisticRegression).model
    ranker_auc, logistic_auc = _next_day_auc(ranker, training_set), _next_day_auc(logistic, training_set)
    assert ranker_auc > 0.74
    assert ranker_auc > logistic_auc


def test_warm_start_continues_from_the_previous_model(training_set):
    config = TrainConfig(epochs=2)
    base = train_ranker(training_set, days(2), _config(training_set), config).model
    before = _next_day_auc(base, training_set)
    normalizer = base.normalizer.mean.clone()
    warm = train_ranker(training_set, [days(3)[2]], None, config, warm_start=base)
    assert warm.model is base and torch.equal(base.normalizer.mean, normalizer)   # statistics kept
    assert warm.rows < 3000                                                        # one day only
    assert _next_day_auc(warm.model, training_set) > before - 0.01


def test_a_ranker_with_a_transformer_layer_trains(training_set):
    """transformer_layers=1: the loss falls, every transformer weight moves (gradients reach it through the
    tower), and the model ranks the next day."""
    config = _config(training_set, transformer_layers=1)
    torch.manual_seed(0)  # train_ranker seeds the same way: these are the weights it starts from
    initial = {k: v.clone() for k, v in Ranker(config).transformer.state_dict().items()}
    result = train_ranker(training_set, days(2), config, TrainConfig(epochs=1, log_every=1))
    losses = [h["loss"] for h in result.history]
    assert result.model.transformer is not None and len(losses) > 8
    assert sum(losses[-3:]) / 3 < losses[0] - 0.05
    for name, value in result.model.transformer.state_dict().items():
        assert (value.cpu() - initial[name]).abs().max() > 1e-3, name
    assert _next_day_auc(result.model, training_set) > 0.68


def _distances(model, reference: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(embedding tables, dense parameters): Euclidean distance of `model`'s weights from `reference`."""
    tables = {id(p) for p in model.embedding_parameters()}
    squares = [0.0, 0.0]
    for name, parameter in model.named_parameters():
        squares[id(parameter) not in tables] += float((parameter.detach() - reference[name]).pow(2).sum())
    return squares[0] ** 0.5, squares[1] ** 0.5


def test_warm_start_l2_pulls_every_weight_towards_the_serving_model(training_set):
    """loss + lambda ||theta - theta_serving||^2: with a large lambda the warm-started tables and dense weights
    stay much closer to the serving model's than with lambda = 0, with either embedding optimiser.

    The fused table optimiser steps inside the lookup's backward and never reads .grad, where the pull's gradient
    lands: the tables moved as far with lambda = 100 as with 0 until a pulled warm start trained them by row gradients."""
    import copy

    serving = train_ranker(training_set, days(2), _config(training_set), TrainConfig(epochs=1)).model
    weights = {name: p.detach().clone() for name, p in serving.named_parameters()}

    def warm(**settings):
        model = copy.deepcopy(serving)
        train_ranker(training_set, [days(3)[2]], None, TrainConfig(**settings), warm_start=model)
        return model

    assert TrainConfig().warm_start_l2 == 0.0
    for optimizer in ("fused", "rowwise"):
        free = warm(embedding_optimizer=optimizer)
        pulled = warm(embedding_optimizer=optimizer, warm_start_l2=1.0)
        (free_tables, free_dense), (pulled_tables, pulled_dense) = _distances(free, weights), _distances(pulled, weights)
        assert free_tables > 0.5 and free_dense > 0.1, optimizer          # one day does move the model
        assert pulled_tables < 0.2 * free_tables, (optimizer, pulled_tables, free_tables)
        assert pulled_dense < 0.5 * free_dense, (optimizer, pulled_dense, free_dense)

    # lambda = 0 is the plain warm start, bit for bit (the fused tables, no gradient tensor for them).
    plain, zero = warm(), warm(warm_start_l2=0.0)
    for (name, value), other in zip(plain.state_dict().items(), zero.state_dict().values()):
        assert torch.equal(value, other), name
    assert all(p.grad is None for p in zero.embedding_parameters())


def _one_and_two_processes(training_set, out: Path, device: str, backend: str, batch_size: int = 256):
    """The training script in one process and under torchrun with two, same flags: their history.json."""
    common = ["--training-set", str(training_set), "--first-day", days(2)[0].isoformat(), "--last-day", days(2)[1].isoformat(),
              "--epochs", "1", "--batch-size", str(batch_size), "--log-every", "1", "--device", device,
              "--model-config", json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in SMALL.items()})]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    single = subprocess.run([sys.executable, "-m", "training.ranker.train", *common, "--out", str(out / "one")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533"]
    double = subprocess.run([*torchrun, "-m", "training.ranker.train", *common, "--backend", backend,
                             "--out", str(out / "two")], env=env, capture_output=True, text=True, timeout=300)
    assert double.returncode == 0, double.stderr[-2000:]
    one = json.loads((out / "one" / "history.json").read_text())
    two = json.loads((out / "two" / "history.json").read_text())
    assert two["world_size"] == 2 and one["rows"] == two["rows"]
    losses_one = torch.tensor([h["loss"] for h in one["history"]])
    losses_two = torch.tensor([h["loss"] for h in two["history"]])
    assert losses_one.shape == losses_two.shape
    return one, two, losses_one, losses_two


@pytest.mark.slow
def test_torchrun_two_processes_follow_the_single_process_loss_curve(training_set, tmp_path):
    _, _, losses_one, losses_two = _one_and_two_processes(training_set, tmp_path, "cpu", "gloo")
    # Same global batches, gradients averaged over the two shards and the embedding rows gathered (one
    # row-wise Adagrad step on both shards): the curves coincide up to float32 summation order (1.2e-7
    # measured). Without the gather each rank's tables drift apart: 1.7e-2 by step 20 on this data.
    assert (losses_one - losses_two).abs().max() < 1e-5


@pytest.mark.slow
@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_torchrun_on_two_gpus_replays_cuda_graphs_and_follows_one_gpu(training_set, tmp_path):
    """Two GPUs under torchrun (NCCL gathers and all-reduce captured in the graphs) against one GPU."""
    one, two, losses_one, losses_two = _one_and_two_processes(training_set, tmp_path, "cuda", "nccl", 128)
    assert one["graphed_steps"] >= len(losses_one) - 8 and two["graphed_steps"] >= len(losses_two) - 8 > 10
    print("max |loss difference|", float((losses_one - losses_two).abs().max()))
    torch.testing.assert_close(losses_two, losses_one, rtol=2e-2, atol=2e-2)
    assert abs(float(losses_one[-10:].mean() - losses_two[-10:].mean())) < 5e-3


def test_days_written_before_the_meta_embedding_existed_read_it_as_zeros(tmp_path):
    """A training range that starts before personalisation wrote meta embeddings (as in `rankflow demo`)."""
    import pyarrow.parquet as pq

    folder = write_training_set(tmp_path, days=2, rows_per_day=200)
    first = folder / f"dt={days(1)[0].isoformat()}" / "part-0.parquet"
    pq.write_table(pq.read_table(first).drop(["meta_embedding"]), first)
    spec = data.read_spec(folder)
    config = _config(folder)
    width = dict(config.vector_features)["meta_embedding"]

    with pytest.warns(data.MissingColumnWarning, match="meta_embedding"):
        both = data.load_rows(data.day_files(folder, days(2)), spec, config)
    second = data.load_rows(data.day_files(folder, days(2)[1:]), spec, config)
    with warnings.catch_warnings():
        warnings.simplefilter("error", data.MissingColumnWarning)  # said once per file and process
        again = data.load_rows(data.day_files(folder, days(2)), spec, config)
    assert torch.equal(again.dense, both.dense)

    assert len(both) == 400
    assert torch.equal(both.dense[:200, -width:], torch.zeros(200, width))
    assert torch.equal(both.dense[200:], second.dense)
    assert second.dense[:, -width:].abs().sum() > 0


def test_padding_to_a_fixed_shape_changes_neither_the_loss_nor_the_step(tmp_path):
    """fixed_shape (the CUDA-graph path's batches): zero-weight rows, empty bags and -1 padding values leave one
    optimisation step (weighted loss, Adam on the dense parameters, the fused row-wise Adagrad inside the
    backward, its L2 on the touched rows included) as it is."""
    import copy

    training_set = write_training_set(tmp_path, days=1, rows_per_day=600, position_bias=0.5)
    spec = data.read_spec(training_set)
    config = _config(training_set)
    batch = data.load_rows(data.day_files(training_set, days(1)), spec, config).take(torch.arange(300))
    assert batch.bag_values and batch.position is not None
    torch.manual_seed(0)
    base = Ranker(config, sparse_gradients=False)
    base.normalizer.fit(batch.dense)
    capacities = bag_capacities(batch, 512)
    assert all(c >= max(v.numel(), 512) and c & (c - 1) == 0 for c, v in zip(capacities, batch.bag_values))
    padded = fixed_shape(batch, 512, capacities)
    assert len(padded) == 513 and float(padded.weight[300:].abs().sum()) == 0.0
    assert [v.numel() for v in padded.bag_values] == capacities

    def one_step(rows):
        model = copy.deepcopy(base).train()
        for table in model.modules():
            if hasattr(table, "enable_fused_optimizer"):
                table.enable_fused_optimizer(0.1, weight_decay=1e-2)
        optimizer = torch.optim.AdamW(model.dense_parameters(), lr=1e-2)
        loss = weighted_bce(model(*rows.inputs), rows.label, rows.weight)
        loss.backward()
        optimizer.step()
        return float(loss.detach()), model.state_dict()

    loss, state = one_step(batch)
    padded_loss, padded_state = one_step(padded)
    assert abs(loss - padded_loss) < 1e-6
    for name, value in state.items():
        assert torch.allclose(value.float(), padded_state[name].float(), rtol=1e-5, atol=1e-7), name
    with pytest.raises(ValueError, match="does not fit"):
        fixed_shape(batch, 299, capacities)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_training_follows_the_eager_loss_curve(training_set):
    """On a GPU the default loop replays its steps as CUDA graphs; the loss curve stays the eager loop's.

    Weights are not compared one by one: the padded batch's forward rounds differently in bf16 (an eager run
    on the padded batches repeats the graph run exactly; ranker-ddp-nvidia-h200-x2.md), and Adam and row-wise
    Adagrad turn a rounding-level change of a tiny gradient into a step of about lr (their first steps go by
    the gradient's sign). The model's quality is compared instead (next-day AUC), and the padding itself is
    checked exactly on the CPU (test_padding_to_a_fixed_shape_changes_neither_the_loss_nor_the_step).
    """
    def run(graphed: bool, epochs: int, batch_size: int, decay: float):
        config = TrainConfig(seed=1, log_every=1, device="cuda", cuda_graph=graphed, early_stopping=False,
                             epochs=epochs, batch_size=batch_size, embedding_weight_decay=decay)
        return train_ranker(training_set, days(1) if epochs == 1 else days(3), _config(training_set), config)

    # The last case has quality_config's L2 on embedding rows (applied by the fused kernel on a GPU).
    for epochs, batch_size, decay in ((1, 128, 0.0), (2, 512, 0.0), (2, 512, 1e-3)):
        eager, graph = run(False, epochs, batch_size, decay), run(True, epochs, batch_size, decay)
        assert eager.graphed_steps == 0 and graph.graphed_steps >= len(graph.history) - 8 > 10
        assert eager.rows == graph.rows
        losses = torch.tensor([h["loss"] for h in eager.history])
        torch.testing.assert_close(torch.tensor([h["loss"] for h in graph.history]), losses, rtol=2e-3, atol=2e-3)
        assert losses[-10:].mean() < losses[:10].mean()
        assert abs(_next_day_auc(graph.model, training_set) - _next_day_auc(eager.model, training_set)) < 0.01


@pytest.mark.parametrize("max_rows", [1 << 21, 1000])
def test_a_chunk_cache_gives_every_epoch_the_batches_streamed_from_the_files(training_set, max_rows):
    """Epochs after the first shuffle the cached encoded rows: the same batches as reading the files again
    (1000 rows: the cache overflows, empties itself, and every epoch streams)."""
    spec = data.read_spec(training_set)
    config = _config(training_set)
    files = data.day_files(training_set, days(2))
    stream = data.StreamConfig(batch_size=100, chunk_rows=2500, seed=5)
    cache = data.ChunkCache(max_rows)
    for epoch in range(3):
        streamed = list(data.stream_batches(files, spec, config, stream, epoch=epoch))
        cached = list(data.stream_batches(files, spec, config, stream, epoch=epoch, cache=cache))
        assert len(cached) == len(streamed) > 10
        for a, b in zip(streamed, cached):
            assert torch.equal(a.event_id, b.event_id) and torch.equal(a.dense, b.dense)
            assert all(torch.equal(x, y) for x, y in zip(a.bag_values + a.bag_offsets, b.bag_values + b.bag_offsets))
        assert cache.complete == (max_rows > 1000) and cache.overflowed == (max_rows == 1000)
    assert cache.rows == (sum(len(b) for b in streamed) if max_rows > 1000 else 0)


@pytest.mark.parametrize("world_size", [1, 2])
def test_gathering_on_several_threads_yields_the_batches_of_one_thread_in_order(training_set, world_size):
    spec = data.read_spec(training_set)
    config = _config(training_set)
    files = data.day_files(training_set, days(2))

    def batches(**threads):
        stream = data.StreamConfig(batch_size=64, chunk_rows=2500, seed=5, rank=world_size - 1,
                                   world_size=world_size, **threads)
        return list(data.stream_batches(files, spec, config, stream, epoch=1))

    inline, parallel = batches(), batches(batches_ahead=3, gather_threads=4)
    assert len(parallel) == len(inline) > 20
    for a, b in zip(inline, parallel):
        assert torch.equal(a.event_id, b.event_id) and torch.equal(a.dense, b.dense) and torch.equal(a.sparse, b.sparse)
        assert all(torch.equal(x, y) for x, y in zip(a.bag_values + a.bag_offsets, b.bag_values + b.bag_offsets))


def test_every_rank_counts_the_bag_values_of_every_shard_so_all_pad_to_one_shape(training_set):
    """Under torchrun the padded shape comes from the loader, with no collective: each rank draws the same global
    batch and counts every shard's bag values (Batch.shard_bag_values)."""
    spec = data.read_spec(training_set)
    config = _config(training_set)
    files = data.day_files(training_set, days(2))
    ranks = [list(data.stream_batches(files, spec, config, data.StreamConfig(batch_size=64, chunk_rows=2500, seed=5,
                                                                           rank=rank, world_size=2)))
             for rank in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) > 20
    differs = 0
    for first, second in zip(*ranks):
        own = [[v.numel() for v in b.bag_values] for b in (first, second)]
        assert first.shard_bag_values == second.shard_bag_values == [max(a, b) for a, b in zip(*own)]
        assert bag_capacities(first, 32) == bag_capacities(second, 32)
        differs += own[0] != own[1]
    assert differs > 0  # the shards' own counts differ, so the shared count matters
    alone = next(iter(data.stream_batches(files, spec, config, data.StreamConfig(batch_size=64, chunk_rows=2500))))
    assert alone.shard_bag_values is None


def _data_parallel_helpers(rank):
    from training.ranker.train import _average_gradients, _broadcast_from_rank_0

    torch.manual_seed(rank)  # every rank starts elsewhere
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    _broadcast_from_rank_0(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    params = list(model.parameters())
    for p in params:
        p.grad = torch.full_like(p, float(rank + 1))
    params[-1].grad = None  # a parameter without a gradient is left out on every rank
    _average_gradients(params, 2)
    return state, [None if p.grad is None else p.grad.clone() for p in params]


def test_ranks_start_from_rank_0_and_average_their_gradients(tmp_path):
    from process_group import run_ranks

    results = run_ranks(_data_parallel_helpers, 2, tmp_path)
    torch.manual_seed(0)
    expected = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2)).state_dict()
    for rank in (0, 1):
        state, grads = results[rank]
        assert all(torch.equal(state[k], expected[k]) for k in expected)  # rank 1 took rank 0's values
        assert all(torch.equal(g, torch.full_like(g, 1.5)) for g in grads[:-1]) and grads[-1] is None
