"""The ranker stage: register candidates in the BentoML store, promote only a better model, roll back."""

from __future__ import annotations

import json

import pytest

from rankflow.config import load_settings
from rankflow.stages import ranker as stage
from ranker_testdata import SMALL, days, one_thread, write_training_set  # noqa: F401 (fixture)
from training.ranker.train import TrainConfig


pytestmark = pytest.mark.usefixtures("one_thread")


def test_promotion_refuses_a_worse_model_and_keeps_the_serving_one(tmp_path):
    write_training_set(tmp_path, days=4, rows_per_day=3000)
    settings = load_settings(tmp_path)
    good = stage.train(settings, days(3)[0], days(3)[2], eval_days=1, warm_start=False,
                       train_config=TrainConfig(epochs=3), model_overrides=SMALL)
    assert good["metrics"]["auc"] > 0.7 and good["eval_days"] == [days(4)[3].isoformat()]
    assert stage.promote(settings, good["tag"])["status"] == "serving"
    assert stage.serving_tag(settings) == good["tag"]
    assert (tmp_path / "reports" / "ranker" / good["tag"].split(":")[1] / "report.png").stat().st_size > 10_000

    # Deliberately worse: one pass with learning rates too small to learn anything.
    worse = stage.train(settings, days(3)[0], days(3)[2], eval_days=1, warm_start=False,
                        train_config=TrainConfig(epochs=1, dense_lr=1e-7, embedding_lr=1e-7), model_overrides=SMALL)
    decision = stage.promote(settings, worse["tag"])
    assert decision["status"] == "rejected" and decision["candidate"] < decision["serving"]
    assert stage.serving_tag(settings) == good["tag"]
    info = stage.model_info(settings, worse["tag"])
    assert info["labels"]["status"] == "rejected" and "does not beat" in info["metadata"]["rejection_reason"]
    assert stage.model_info(settings, good["tag"])["labels"]["status"] == "serving"

    # Warm start from the serving model on the newest day only, then roll back to the first.
    warm = stage.train(settings, days(3)[0], days(3)[2], eval_days=1, warm_start=True,
                       train_config=TrainConfig(epochs=3))
    assert warm["warm_start_from"] == good["tag"] and warm["trained_days"] == [days(3)[2].isoformat()]
    promoted = stage.promote(settings, warm["tag"], stage.PromotionPolicy(margin=-1.0))   # force a promotion
    assert promoted["status"] == "serving"
    history = json.loads((tmp_path / "models" / "serving.json").read_text())["rankflow-ranker"]["history"]
    assert history == [good["tag"]]
    assert stage.rollback(settings)["tag"] == good["tag"] and stage.serving_tag(settings) == good["tag"]
    assert stage.evaluate(settings, good["tag"], days(4)[3])["auc"] == pytest.approx(good["metrics"]["auc"])


def test_warm_start_calibrates_on_the_serving_models_held_out_rows_only_when_they_are_the_same_draw():
    from dataclasses import asdict, replace

    from training.ranker.train import quality_config

    config = quality_config()
    parent = {"train_config": asdict(config)}
    first, last = days(4)[0], days(4)[2]
    available = set(days(4))
    assert stage._shared_holdout_days(parent, config, first, last, available, [days(4)[3]]) == days(3)
    assert stage._shared_holdout_days(parent, config, first, last, available - {days(4)[1]}, [days(4)[3]]) == [
        days(4)[0], days(4)[2]]
    # Another draw (seed, fraction, or a holdout of the newest days only): those rows may have been trained on.
    for other in (replace(config, seed=1), replace(config, holdout_fraction=0.2), replace(config, calibration_days=1)):
        assert stage._shared_holdout_days({"train_config": asdict(other)}, config, first, last, available, []) == []
    assert stage._shared_holdout_days({}, config, first, last, available, []) == []
