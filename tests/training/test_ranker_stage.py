"""The ranker stage: register candidates in the BentoML store, promote only a better model, roll back; the oracle AUC
of its evaluation."""

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
    leftover = settings.paths.bentoml_home / "models" / stage.MODEL_NAME / "killedsave1234"  # a save cut short
    leftover.mkdir(parents=True)
    (leftover / "model.safetensors").write_bytes(b"x")
    good = stage.train(settings, days(3)[0], days(3)[2], eval_days=1, warm_start=False,
                       train_config=TrainConfig(epochs=3), model_overrides=SMALL)
    assert good["metrics"]["auc"] > 0.7 and good["eval_days"] == [days(4)[3].isoformat()]
    assert stage.promote(settings, good["tag"])["status"] == "serving"
    assert stage.serving_tag(settings) == good["tag"]
    assert not leftover.exists()  # moved aside by the registration, so BentoML can list the name again
    assert (settings.paths.bentoml_home / "incomplete" / stage.MODEL_NAME / "killedsave1234").is_dir()
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


def test_a_model_no_better_than_chance_is_never_promoted_even_with_nothing_serving(tmp_path):
    """Trained on inverted labels, a candidate scores AUC < 0.5 on the next (true) day: with no model serving,
    promote used to make it the serving model ("no model was serving"); it is rejected with the reason."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    write_training_set(tmp_path, days=4, rows_per_day=3000)
    settings = load_settings(tmp_path)
    for day in days(3):
        path = settings.paths.feature_partition("training_set", day) / "part-0.parquet"
        table = pq.read_table(path)
        index = table.column_names.index("label")
        flipped = pc.subtract(pa.scalar(1, type=table.schema.field("label").type), table.column("label"))
        pq.write_table(table.set_column(index, table.schema.field("label"), flipped), path)
    inverted = stage.train(settings, days(3)[0], days(3)[2], eval_days=1, warm_start=False,
                           train_config=TrainConfig(epochs=2), model_overrides=SMALL)
    assert inverted["metrics"]["auc"] < 0.5
    decision = stage.promote(settings, inverted["tag"])
    assert decision["status"] == "rejected" and "no better than chance" in decision["reason"], decision
    assert stage.serving_tag(settings) is None and _status(settings, inverted["tag"]) == "rejected"
    strict = stage.PromotionPolicy(max_normalized_entropy=1.0)
    assert strict.useless({"auc": 0.7, "normalized_entropy": 1.02}).startswith("normalised entropy 1.0200")
    assert strict.useless({"auc": 0.7, "normalized_entropy": 0.9}) is None
    assert stage.PromotionPolicy().useless({"auc": 0.7, "normalized_entropy": 1.02}) is None


class _Evaluation:
    def __init__(self, auc: float):
        self.auc = auc

    def summary(self) -> dict:
        return {"auc": self.auc}


def _stored_ranker(settings, day: str) -> str:
    """A registered candidate (a few bytes per checkpoint file: its evaluation is stubbed, it is never loaded)."""
    from pathlib import Path

    import bentoml

    metadata = {"train_start": day, "train_end": day, "eval_days": [day]}
    with bentoml.models.create(stage.MODEL_NAME, labels={"logical_date": day, "status": "candidate"},
                               metadata=metadata, _model_store=stage.model_store(settings)) as stored:
        for file in ("config.json", "model.safetensors"):
            (Path(stored.path) / file).write_bytes(b"x")
        tag = str(stored.tag)
    return tag


class Killed(BaseException):
    """What a SIGKILL does to the rest of the command: nothing after it runs."""


def _status(settings, tag: str) -> str:
    return stage.model_info(settings, tag)["labels"]["status"]


def test_a_switch_whose_label_update_fails_or_is_killed_says_so_and_the_next_command_reconciles(tmp_path, monkeypatch):
    """serving.json is the truth: once it switched, promote/rollback report the switch (no error exit) even when the
    label update after it fails, and the next promote or rollback (an "already serving" one too) fixes the labels."""
    settings = load_settings(tmp_path)
    first, second = _stored_ranker(settings, "2026-01-02"), _stored_ranker(settings, "2026-01-03")
    monkeypatch.setattr(stage, "_load_model", lambda settings, tag: (tag, stage.stored_model(settings, tag)))
    monkeypatch.setattr(stage, "evaluate_model", lambda settings, model, days, train_days: _Evaluation(
        0.8 if model == second else 0.7))
    relabel = stage._relabel
    assert stage.promote(settings, first)["status"] == "serving"

    def failing(settings, tag, status, **metadata):
        if status == "candidate":  # the replaced model's label, after serving.json switched
            raise OSError(28, "No space left on device")
        relabel(settings, tag, status, **metadata)

    monkeypatch.setattr(stage, "_relabel", failing)
    decision = stage.promote(settings, second)  # returns: the command exits 0, and says what happened
    assert decision["status"] == "serving" and stage.serving_tag(settings) == second
    assert "No space left on device" in decision["labels_error"] and "switched" in decision["labels_error"]
    assert _status(settings, first) == "serving"  # out of line until the next command

    monkeypatch.setattr(stage, "_relabel", relabel)
    again = stage.promote(settings, second)
    assert again["reason"] == "already serving" and again["labels_reconciled"]
    assert (_status(settings, first), _status(settings, second)) == ("candidate", "serving")
    assert stage.model_info(settings, first)["metadata"]["replaced_by"] == second

    def killed(settings, tag, status, **metadata):
        raise Killed

    monkeypatch.setattr(stage, "_relabel", killed)  # a rollback killed right after switching serving.json
    with pytest.raises(Killed):
        stage.rollback(settings)
    assert stage.serving_tag(settings) == first and _status(settings, second) == "serving"
    monkeypatch.setattr(stage, "_relabel", relabel)
    assert stage.promote(settings, first)["labels_reconciled"]
    assert (_status(settings, first), _status(settings, second)) == ("serving", "rejected")
    assert stage.model_info(settings, second)["metadata"]["rejection_reason"] == "rolled back"
    assert "labels_reconciled" not in stage.promote(settings, first)  # in line: nothing more to do


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


def _write_truth(root, events_per_day: dict) -> None:
    """truth/events/dt=D/part-0.parquet as the generator writes it (docs/contracts.md, "Ground truth"): event_id and
    true_prob, here in a shuffled order and with events the training set does not have."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    for day, (event_ids, true_prob) in events_per_day.items():
        extra = np.arange(10**6, 10**6 + 50) + day.toordinal() * 1000
        ids = np.concatenate([event_ids, extra])
        probs = np.concatenate([true_prob, rng.uniform(size=extra.size)])
        order = rng.permutation(ids.size)
        folder = root / "truth" / "events" / f"dt={day.isoformat()}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"event_id": pa.array(ids[order], pa.int64()),
                                 "true_prob": pa.array(probs[order], pa.float64())}), folder / "part-0.parquet")


def _pairwise_auc(scores, labels) -> float:
    """AUC by counting every (positive, negative) pair, ties as one half."""
    positive, negative = scores[labels == 1], scores[labels == 0]
    above = (positive[:, None] > negative[None, :]).sum() + 0.5 * (positive[:, None] == negative[None, :]).sum()
    return float(above / (positive.size * negative.size))


def test_evaluation_reports_the_oracle_auc_of_the_true_probabilities(tmp_path):
    """With the generator's truth/ beside the data, the evaluation adds the AUC of the true click probabilities,
    matched to the evaluated rows by event id over every evaluation day; without truth for every row, none."""
    import numpy as np
    import pyarrow.parquet as pq

    folder = write_training_set(tmp_path, days=5, rows_per_day=3000)
    frames = {day: pq.read_table(folder / f"dt={day.isoformat()}" / "part-0.parquet",
                                 columns=["event_id", "true_prob", "label"]).to_pandas() for day in days(5)}
    settings = load_settings(tmp_path)
    no_truth = stage.train(settings, days(3)[0], days(3)[2], eval_days=2, warm_start=False,
                           train_config=TrainConfig(epochs=1), model_overrides=SMALL)
    assert no_truth["metrics"]["oracle_auc"] is None and no_truth["metrics"]["auc_gap_to_oracle"] is None

    _write_truth(tmp_path, {day: (frame.event_id.to_numpy(), frame.true_prob.to_numpy()) for day, frame in frames.items()})
    result = stage.train(settings, days(3)[0], days(3)[2], eval_days=2, warm_start=False,
                         train_config=TrainConfig(epochs=2), model_overrides=SMALL)
    assert result["eval_days"] == [d.isoformat() for d in days(5)[3:]]
    evaluated = [frames[day] for day in days(5)[3:]]
    oracle = _pairwise_auc(np.concatenate([f.true_prob for f in evaluated]), np.concatenate([f.label for f in evaluated]))
    metrics = result["metrics"]
    assert metrics["oracle_auc"] == pytest.approx(oracle, abs=1e-9)
    assert metrics["auc_gap_to_oracle"] == pytest.approx(oracle - metrics["auc"], abs=1e-9)
    assert 0.7 < metrics["auc"] < oracle                                      # a real model, short of the truth
    stored = stage.model_info(settings, result["tag"])["metadata"]["metrics"]
    assert stored["oracle_auc"] == pytest.approx(oracle, abs=1e-9)

    last = frames[days(5)[4]]
    one_day = stage.evaluate(settings, result["tag"], days(5)[4])
    assert one_day["oracle_auc"] == pytest.approx(_pairwise_auc(last.true_prob.to_numpy(), last.label.to_numpy()), abs=1e-9)

    # Truth that lacks one evaluated event: no oracle rather than one over other rows.
    _write_truth(tmp_path, {days(5)[4]: (last.event_id.to_numpy()[1:], last.true_prob.to_numpy()[1:])})
    assert stage.evaluate(settings, result["tag"], days(5)[4])["oracle_auc"] is None
