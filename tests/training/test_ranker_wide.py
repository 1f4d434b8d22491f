"""The wide part (wide.py), the held-out row draw (data.split_holdout) and warm starts that continue the
optimiser (embeddings.py accumulators, train.py warm_start_* settings)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from ranker_testdata import SMALL, days, one_thread, write_training_set  # noqa: F401 (fixture)
from training.ranker import data
from training.ranker.checkpoint import CONFIG_FILE, WEIGHTS_FILE, load_checkpoint, save_checkpoint
from training.ranker.embeddings import adagrad_accumulators
from training.ranker.logistic import LogisticRegression
from training.ranker.model import Ranker, RankerConfig
from training.ranker.train import TrainConfig, train_ranker

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def training_set(tmp_path_factory) -> Path:
    return write_training_set(tmp_path_factory.mktemp("wide"), days=3, rows_per_day=2000, position_bias=0.6)


def _config(training_set: Path, **overrides) -> RankerConfig:
    return RankerConfig.from_spec(data.read_spec(training_set), **{**SMALL, **overrides})


def _batch(training_set: Path, config: RankerConfig, rows: int = 64) -> data.Batch:
    batch = data.load_rows(data.day_files(training_set, days(1)), data.read_spec(training_set), config)
    return batch.take(torch.arange(rows))


def test_ranker_logit_is_the_tower_plus_the_wide_part(training_set):
    torch.manual_seed(0)
    config = _config(training_set)
    model = Ranker(config, sparse_gradients=False).eval()
    with torch.no_grad():
        for parameter in model.wide.parameters():
            parameter.normal_()
    batch = _batch(training_set, config)
    standardised = model.normalizer(batch.dense)
    wide = (model.wide.embeddings.weight[batch.sparse + model.wide.embeddings.row_offsets].sum((1, 2))
            + standardised @ model.wide.dense.weight[0] + model.wide.dense.bias)
    for values, offsets, table in zip(batch.bag_values, batch.bag_offsets, model.wide.bags.tables):
        wide = wide + torch.nn.functional.embedding_bag(values, table.weight, offsets, mode="mean")[:, 0]
    tokens = torch.cat([model.embeddings(batch.sparse), model.bags(batch.bag_values, batch.bag_offsets)], dim=1)
    tower = model.tower(torch.cat([tokens.flatten(1), standardised], dim=1))
    expected = tower + wide + model.position(batch.position)
    torch.testing.assert_close(model(*batch.inputs), expected, rtol=1e-5, atol=1e-5)
    # Without the wide part the logit is the tower's alone (and logistic regression is the wide part alone).
    assert Ranker(_config(training_set, wide=False)).wide is None
    logistic = LogisticRegression(config, sparse_gradients=False)
    logistic.load_state_dict({**{k: v for k, v in model.wide.state_dict().items()},
                              **{f"normalizer.{k}": v for k, v in model.normalizer.state_dict().items()},
                              **{f"position.{k}": v for k, v in model.position.state_dict().items()},
                              **{f"calibration.{k}": v for k, v in model.calibration.state_dict().items()}})
    torch.testing.assert_close(logistic(*batch.inputs), wide + model.position(batch.position), rtol=1e-5, atol=1e-5)


def test_held_out_rows_are_a_fixed_random_part_of_every_chosen_day(training_set):
    files = data.day_files(training_set, days(3))
    train, holdout = data.split_holdout(files, 0.1, 2)
    assert train[0] == files[0] and len(holdout) == 2                    # day 1 whole, days 2-3 split
    spec = data.read_spec(training_set)
    config = _config(training_set)
    for train_part, held_part in zip(train[1:], holdout):
        held = data.load_rows([held_part], spec, config).event_id
        kept = data.load_rows([train_part], spec, config).event_id
        everything = pq.read_table(held_part.path, columns=["event_id"]).column("event_id").to_numpy()
        assert set(held.tolist()).isdisjoint(kept.tolist())
        assert sorted([*held.tolist(), *kept.tolist()]) == sorted(everything.tolist())
        assert 150 < len(held) < 250                                      # ~10 % of 2,000
        # Spread over the day, not its last slice: rows from each fifth of the file are held out.
        assert np.all(np.diff(everything) > 0)                           # the test data's ids follow the rows
        positions = np.searchsorted(everything, held.numpy())
        assert len(np.unique(positions * 5 // len(everything))) == 5
    streamed = torch.cat([b.event_id for b in data.stream_batches(train, spec, config, data.StreamConfig(batch_size=256))])
    assert len(streamed) == sum(len(data.load_rows([part], spec, config)) for part in train)
    assert data.split_holdout(files, 0.1, 2) == (train, holdout)          # the same rows on every call


def test_warm_start_continues_the_row_wise_adagrad_of_the_serving_model(training_set, tmp_path):
    config = TrainConfig(epochs=1)
    serving = train_ranker(training_set, days(2), _config(training_set), config).model
    accumulators = {id(w): a.clone() for w, a in adagrad_accumulators(serving).items()}
    assert all(a.sum() > 0 for a in accumulators.values())               # the optimiser's state is in the model
    save_checkpoint(serving, tmp_path / "serving")
    loaded = load_checkpoint(tmp_path / "serving")
    for (_, kept), (_, read) in zip(adagrad_accumulators(serving).items(), adagrad_accumulators(loaded).items()):
        assert torch.equal(kept, read)

    def moved(scale: float) -> float:
        """How far one day of warm start moves the embedding rows the serving model had trained."""
        model = load_checkpoint(tmp_path / "serving")
        before = model.embeddings.weight.detach().clone()
        trained = model.embeddings.accumulator > 0
        train_ranker(training_set, [days(3)[2]], None, TrainConfig(epochs=1, warm_start_accumulator_scale=scale),
                     warm_start=model)
        return float((model.embeddings.weight.detach() - before)[trained].norm(dim=1).mean())

    # Continued, a row's step shrinks with what it has already learned; a fresh optimiser's first steps
    # are a full lr in every coordinate (the warm start that undid the serving model's embeddings).
    continued, fresh = moved(1.0), moved(0.0)
    assert continued < 0.75 * fresh                                       # measured 0.105 vs 0.217


def test_checkpoints_from_before_the_wide_part_and_the_accumulators_load_as_they_were(training_set, tmp_path):
    from safetensors.torch import load_file, save_file

    old = Ranker(_config(training_set, wide=False)).eval()
    save_checkpoint(old, tmp_path)
    description = json.loads((tmp_path / CONFIG_FILE).read_text())
    del description["config"]["wide"]                                     # written before the field existed
    (tmp_path / CONFIG_FILE).write_text(json.dumps(description))
    tensors = {k: v for k, v in load_file(str(tmp_path / WEIGHTS_FILE)).items() if not k.endswith("accumulator")}
    save_file(tensors, str(tmp_path / WEIGHTS_FILE), metadata={"format": "1"})
    loaded = load_checkpoint(tmp_path)
    assert loaded.wide is None and loaded.config == old.config
    assert all(a.sum() == 0 for a in adagrad_accumulators(loaded).values())
    batch = _batch(training_set, old.config, rows=16)
    torch.testing.assert_close(loaded(*batch.inputs), old(*batch.inputs))
