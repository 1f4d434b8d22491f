"""The position term (training/ranker/position.py): learned from a planted position effect, position 1 when absent,
old checkpoints without it still load."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from ranker_testdata import POSITIONS, SMALL, days, one_thread, write_training_set  # noqa: F401 (fixture)
from training.ranker import data
from training.ranker.checkpoint import CONFIG_FILE, load_checkpoint, save_checkpoint
from training.ranker.logistic import LogisticRegression
from training.ranker.model import Ranker, RankerConfig
from training.ranker.train import TrainConfig, predict_logits, train_ranker

PLANTED = 1.0   # logit -PLANTED * log(position)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def training_set(tmp_path_factory):
    return write_training_set(tmp_path_factory.mktemp("position"), days=3, rows_per_day=6000, position_bias=PLANTED)


@pytest.fixture(scope="module")
def trained(training_set):
    spec = data.read_spec(training_set)
    config = RankerConfig.from_spec(spec, **SMALL)
    train_config = TrainConfig(epochs=4)
    return {
        "ranker": train_ranker(training_set, days(2), config, train_config).model,
        "logistic": train_ranker(training_set, days(2), config, train_config, model_factory=LogisticRegression).model,
    }


def test_spec_and_config_pick_up_the_position_column(training_set):
    spec = data.read_spec(training_set)
    assert spec["position"] == "position"
    assert RankerConfig.from_spec(spec).position_feature == "position"
    assert RankerConfig.from_spec(spec, position_feature=None).position_feature is None
    rows = data.load_rows(data.day_files(training_set, days(1)), spec, RankerConfig.from_spec(spec))
    assert rows.position is not None and rows.position.min() == 1 and rows.position.max() == POSITIONS


@pytest.mark.parametrize("kind", ["ranker", "logistic"])
def test_learned_position_logits_recover_the_planted_effect(trained, kind):
    curve = trained[kind].position.curve().detach().numpy()
    planted = -PLANTED * np.log(np.arange(1, POSITIONS + 1))
    assert curve[0] == 0.0
    assert np.all(np.diff(curve[[0, 2, 5, 9]]) < 0), curve          # lower further down the list
    # The learned curve is the planted one, scaled down somewhat: a model that has not yet explained every
    # other effect sees a weaker position effect (the marginal log-odds of these data fall ~1.7 from
    # position 1 to 10, the planted ones 2.3). A model that ignores the position learns slope 0.
    slope = float(curve @ planted / (planted @ planted))
    assert 0.6 < slope < 1.15, (slope, curve)
    assert np.corrcoef(curve, planted)[0, 1] > 0.95, curve


@pytest.mark.parametrize("kind", ["ranker", "logistic"])
def test_scoring_without_a_position_is_scoring_at_position_1(trained, training_set, kind):
    model = trained[kind]
    spec = data.read_spec(training_set)
    rows = data.load_rows(data.day_files(training_set, days(3)[2:]), spec, model.config)
    at_logged = predict_logits(model, rows)
    without = predict_logits(model, replace(rows, position=None))
    at_first = predict_logits(model, replace(rows, position=torch.ones_like(rows.position)))
    torch.testing.assert_close(without, at_first, rtol=0, atol=0)
    shift = model.position.curve().detach()[rows.position.clamp(max=POSITIONS) - 1]
    torch.testing.assert_close(at_logged - without, shift, rtol=0, atol=1e-5)
    # the service's rows have no position column: the encoder then gives None
    table = data._read_range(data.day_files(training_set, days(3)[2:])[0]).drop_columns(["position"])
    assert data.encode_table(table, spec, model.config).position is None


def test_checkpoint_without_the_position_term_still_loads(tmp_path, training_set):
    spec = data.read_spec(training_set)
    config = RankerConfig.from_spec(spec, position_feature=None, **SMALL)
    model = Ranker(config).eval()
    save_checkpoint(model, tmp_path)
    description = json.loads((tmp_path / CONFIG_FILE).read_text())
    for field in ("position_feature", "max_position"):      # as written before the term existed
        del description["config"][field]
    (tmp_path / CONFIG_FILE).write_text(json.dumps(description))
    loaded = load_checkpoint(tmp_path)
    assert loaded.position is None and loaded.config == config
    rows = data.load_rows(data.day_files(training_set, days(1)), spec, RankerConfig.from_spec(spec, **SMALL))
    torch.testing.assert_close(predict_logits(loaded, rows), predict_logits(model, rows))


def test_checkpoint_naming_a_position_term_without_its_weights_fails_clearly(tmp_path, training_set):
    config = RankerConfig.from_spec(data.read_spec(training_set), **SMALL)
    save_checkpoint(Ranker(config), tmp_path)
    description = json.loads((tmp_path / CONFIG_FILE).read_text())
    description["config"]["position_feature"] = None
    save_checkpoint(Ranker(RankerConfig.from_dict(description["config"])), tmp_path)
    description["config"]["position_feature"] = "position"
    (tmp_path / CONFIG_FILE).write_text(json.dumps(description))
    with pytest.raises(ValueError, match="position.logits"):
        load_checkpoint(tmp_path)


def test_evaluation_reports_the_auc_at_logged_positions_and_at_position_1(trained, training_set):
    from rankflow.config import load_settings
    from rankflow.stages.ranker import evaluate_model

    settings = load_settings(training_set.parents[1])
    summary = evaluate_model(settings, trained["ranker"], days(3)[2:], days(2)).summary()
    # the planted effect is strong: ranking by the logged position as well must score visibly higher
    assert summary["auc"] > summary["auc_without_position"] + 0.02, summary
