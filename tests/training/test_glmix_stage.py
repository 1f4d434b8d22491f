"""rankflow.stages.personalise: the daily GLMix stage over a (hand-built) training set, without Feast."""

from __future__ import annotations

import json
import shutil
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from glmix_reference import one_torch_thread  # noqa: F401 (autouse fixture)

from features.contract import read_raw
from rankflow.config import load_settings
from rankflow.errors import MissingInput, PriorDeleted
from rankflow.paths import atomic_directory
from rankflow.stages import ranker as ranker_stage
from rankflow.stages.personalise import (
    MODEL_NAME,
    PersonaliseConfig,
    glmix_config_for,
    load_state,
    prior_day,
    prune_states,
    ranker_logit,
    state_days,
    training_events,
    update_random_effects,
)
from tests.killing import Killed, dead_pid

DAYS = [date(2026, 1, 1) + timedelta(days=i) for i in range(3)]


def _write_training_set(settings, day, first_day: bool):
    """The training-set contract's columns for day D, from raw + attributes (the Spark build stands aside)."""
    events = read_raw(settings.paths, "events", day=day)
    members = read_raw(settings.paths, "members", end=day).set_index("member_id")
    items = read_raw(settings.paths, "items", end=day).set_index("item_id")
    m, j = members.loc[events.member_id], items.loc[events.item_id]
    frame = pd.DataFrame({"member_id": events.member_id.values, "item_id": events.item_id.values,
                          "label": events.label.values, "weight": events.weight.values})
    for attribute in ("industry", "seniority"):
        # Day one is cold in the real training set: no features before D, placeholders instead.
        frame[f"m_{attribute}"] = "__unknown__" if first_day else m[attribute].values
        frame[f"j_{attribute}"] = "__unknown__" if first_day else j[attribute].values
    frame["industry_match"] = (m.industry.values == j.industry.values).astype(np.float32)
    frame["log_position"] = np.log(events.position.values).astype(np.float32)
    target = settings.paths.feature_partition("training_set", day)
    with atomic_directory(target) as staging:
        frame.to_parquet(staging / "part-0.parquet", index=False)
    spec = {"label": "label", "weight": "weight", "member": "member_id", "item": "item_id",
            "categorical": ["m_industry", "m_seniority", "j_industry", "j_seniority"], "multi_valued": [],
            "dense": ["industry_match", "log_position"], "embeddings": {}}
    (settings.paths.feature_table("training_set") / "spec.json").write_text(json.dumps(spec))


@pytest.fixture(scope="module")
def stage_data(tiny_data_dir, tmp_path_factory):
    """The tiny marketplace with hand-built training sets for DAYS (read-only: copy before writing)."""
    root = shutil.copytree(tiny_data_dir, tmp_path_factory.mktemp("glmix_stage") / "data")
    settings = load_settings(root)
    for index, day in enumerate(DAYS):
        _write_training_set(settings, day, first_day=index == 0)
    return root


def _glmix_models(settings):
    """{tag: logical_date} of every rankflow-glmix model in the data directory's BentoML store."""
    return {str(m.tag): m.info.labels["logical_date"] for m in ranker_stage.model_store(settings).list(MODEL_NAME)}


def test_daily_stage_chains_posteriors_and_rerunning_a_day_is_idempotent(stage_data, tmp_path):
    settings = load_settings(shutil.copytree(stage_data, tmp_path / "data"))
    config = PersonaliseConfig()
    results = [update_random_effects(settings, day, config, write_online=False) for day in DAYS]

    assert [r["prior_date"] for r in results] == [None, "2026-01-01", "2026-01-02"]
    assert [r["global_part"] for r in results] == ["fixed_effect"] * 3
    assert "no serving rankflow-ranker" in results[0]["global_part_reason"]
    # Basis from the raw zone, not the cold first-day placeholders: 1 + 8 industries + 4 seniorities.
    state, fixed_effect, meta = load_state(settings, DAYS[2])
    assert state.member.dim == 13 and "industry=software" in _names(meta["member_basis"])
    assert fixed_effect.feature_names == ["industry_match", "log_position"]
    assert fixed_effect.weights[1] < 0  # position bias: lower positions, fewer applies
    assert results[2]["summary"]["member"]["not_converged"] == 0
    assert all(v["success"] for v in results[2]["validation"].values())
    assert sorted(_glmix_models(settings).values()) == [d.isoformat() for d in DAYS]

    # Re-running day 2 after day 3 exists uses day 1's state as its prior (not day 2's own posterior),
    # reproduces day 2 exactly, and reuses day 2's model in the store: twice, no model added.
    before, _, _ = load_state(settings, DAYS[1])
    models = _glmix_models(settings)
    for _ in range(2):
        again = update_random_effects(settings, DAYS[1], config, write_online=False)
        assert again["prior_date"] == "2026-01-01" and prior_day(settings, DAYS[1]) == DAYS[0]
        assert again["bentoml_tag"] == results[1]["bentoml_tag"]
        assert _glmix_models(settings) == models
    after, _, _ = load_state(settings, DAYS[1])
    torch.testing.assert_close(after.member.mean, before.member.mean, rtol=0, atol=0)
    torch.testing.assert_close(after.job.precision, before.job.precision, rtol=0, atol=0)

    # A re-run that changes the day's answer replaces the day's model (still one per day) with the new files.
    changed = update_random_effects(settings, DAYS[1], PersonaliseConfig(member_prior_variance=4.0),
                                    write_online=False)
    models_now = _glmix_models(settings)
    assert sorted(models_now.values()) == [d.isoformat() for d in DAYS]
    assert changed["bentoml_tag"] in models_now and results[1]["bentoml_tag"] not in models_now
    stored = Path(ranker_stage.model_store(settings).get(changed["bentoml_tag"]).path)
    state_dir = settings.paths.models / "glmix" / f"dt={DAYS[1]}"
    assert (stored / "member.safetensors").read_bytes() == (state_dir / "member.safetensors").read_bytes()
    for file in ("member.safetensors", "job.safetensors", "meta.json"):  # one copy on disk, not two
        assert (stored / file).stat().st_ino == (state_dir / file).stat().st_ino, file
    changed_state, _, _ = load_state(settings, DAYS[1])
    assert not torch.equal(changed_state.member.mean, before.member.mean)


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_retention_keeps_the_newest_states_and_refuses_a_day_whose_prior_it_deleted(stage_data, tmp_path):
    """glmix_keep_days = 2: after each day only the newest two states and their BentoML models stay; a day whose
    prior was deleted is refused with nothing written, a day whose prior stays re-runs to the same bytes."""
    settings = load_settings(shutil.copytree(stage_data, tmp_path / "data")).with_overrides(glmix_keep_days=2)
    results = [update_random_effects(settings, day, PersonaliseConfig(), write_online=False) for day in DAYS]
    assert [r["retention"]["pruned"] for r in results] == [[], [], [DAYS[0].isoformat()]]
    assert state_days(settings) == DAYS[1:]
    assert sorted(_glmix_models(settings).values()) == [d.isoformat() for d in DAYS[1:]]
    assert results[0]["bentoml_tag"] not in _glmix_models(settings)
    record = json.loads((settings.paths.models / "glmix" / "pruned.json").read_text())
    assert record == {"first": "2026-01-01", "through": "2026-01-01", "keep": 2, "days": ["2026-01-01"]}
    glmix = settings.paths.models / "glmix"
    assert sorted(p.name for p in glmix.iterdir()) == ["dt=2026-01-02", "dt=2026-01-03", "pruned.json"]

    before, models = _tree(settings.paths.models), _glmix_models(settings)
    with pytest.raises(PriorDeleted, match=r"glmix 2026-01-02: the state it starts from, 2026-01-01's, was deleted "
                                           r"by retention .*2026-01-01 gone, the newest 2 kept\), so 2026-01-02 would "
                                           r"start from the population prior instead; nothing was written\. Of the 2 "
                                           r"stored state\(s\), stored days after 2026-01-02 can be re-run"):
        update_random_effects(settings, DAYS[1], PersonaliseConfig(), write_online=False)
    assert _tree(settings.paths.models) == before and _glmix_models(settings) == models

    again = update_random_effects(settings, DAYS[2], PersonaliseConfig(), write_online=False)
    assert again["prior_date"] == "2026-01-02" and again["bentoml_tag"] == results[2]["bentoml_tag"]
    assert again["retention"]["pruned"] == [] and state_days(settings) == DAYS[1:]
    after = _tree(glmix)
    assert after == {k.removeprefix("glmix/"): v for k, v in before.items() if k.startswith("glmix/")}


def test_prune_keeps_what_serving_json_names_and_a_dry_run_deletes_nothing(stage_data, tmp_path):
    settings = load_settings(shutil.copytree(stage_data, tmp_path / "data"))
    results = [update_random_effects(settings, day, PersonaliseConfig(), write_online=False) for day in DAYS]
    ranker_stage._write_serving(settings, MODEL_NAME, results[2]["bentoml_tag"], [results[0]["bentoml_tag"]])
    before = _tree(settings.paths.models)

    dry = prune_states(settings, 1, dry_run=True)
    assert dry["pruned"] == ["2026-01-01", "2026-01-02"] and dry["kept"] == ["2026-01-03"]
    assert dry["models_deleted"] == [results[1]["bentoml_tag"]] and dry["models_pinned"] == [results[0]["bentoml_tag"]]
    assert dry["state_bytes"] == sum(len(v) for k, v in before.items() if k.startswith(("glmix/dt=2026-01-01/",
                                                                                   "glmix/dt=2026-01-02/")))
    assert _tree(settings.paths.models) == before

    done = prune_states(settings, 1)
    assert {k: done[k] for k in ("pruned", "kept", "models_deleted", "models_pinned")} == \
        {k: dry[k] for k in ("pruned", "kept", "models_deleted", "models_pinned")}
    assert state_days(settings) == DAYS[2:]
    # serving.json's GLMix tag and its history (rollback) stay in the store, with their files; day 2's model goes.
    assert set(_glmix_models(settings)) == {results[0]["bentoml_tag"], results[2]["bentoml_tag"]}
    stored = Path(ranker_stage.model_store(settings).get(results[0]["bentoml_tag"]).path)
    assert (stored / "member.safetensors").stat().st_size > 0
    assert prune_states(settings, 1)["pruned"] == []  # nothing more to do
    with pytest.raises(PriorDeleted, match="deleted by retention"):  # its prior, day 2, is gone
        update_random_effects(settings, DAYS[2], PersonaliseConfig(), write_online=False)
    with pytest.raises(ValueError, match="keep must be a whole number of days >= 1, got 0"):
        prune_states(settings, 0)


def test_a_prune_killed_midway_refuses_only_days_whose_prior_is_gone_and_the_next_prune_finishes(
        stage_data, tmp_path, monkeypatch):
    """pruned.json is written before anything is deleted. Killed after day 1's folder went and before day 2's:
    day 2 (prior gone) is refused, day 3 (prior, day 2, still there) runs. Killed again while deleting day 2's
    folder, renamed aside by then: day 3 is refused too, and the next prune deletes the copy left aside."""
    import rankflow.paths as paths
    import rankflow.stages.personalise as stage

    settings = load_settings(shutil.copytree(stage_data, tmp_path / "data"))
    for day in DAYS:
        update_random_effects(settings, day, PersonaliseConfig(), write_online=False)

    real_remove_directory, removed = stage.remove_directory, []

    def killed_before_the_second(path):
        if removed:
            raise Killed()
        removed.append(path)
        return real_remove_directory(path)

    monkeypatch.setattr(stage, "remove_directory", killed_before_the_second)
    with pytest.raises(Killed):
        prune_states(settings, 1)
    monkeypatch.undo()
    assert state_days(settings) == DAYS[1:]
    with pytest.raises(PriorDeleted, match="glmix 2026-01-02: the state it starts from, 2026-01-01's"):
        update_random_effects(settings, DAYS[1], PersonaliseConfig(), write_online=False)
    assert update_random_effects(settings, DAYS[2], PersonaliseConfig(), write_online=False)["prior_date"] == \
        "2026-01-02"

    monkeypatch.setattr(paths, "_remove", lambda path: (_ for _ in ()).throw(Killed()))
    with pytest.raises(Killed):
        prune_states(settings, 1)  # day 2's folder is renamed aside, then the kill
    monkeypatch.undo()
    glmix = settings.paths.models / "glmix"
    [aside] = [p for p in glmix.iterdir() if p.name.startswith(".dt=2026-01-02.tmp-")]
    assert state_days(settings) == DAYS[2:]
    with pytest.raises(PriorDeleted, match="glmix 2026-01-03: the state it starts from, 2026-01-02's"):
        update_random_effects(settings, DAYS[2], PersonaliseConfig(), write_online=False)
    aside.rename(glmix / f".dt=2026-01-02.tmp-{dead_pid()}-0a1b2c3d")  # as if the killed process had exited
    assert prune_states(settings, 1)["pruned"] == []
    assert sorted(p.name for p in glmix.iterdir()) == ["dt=2026-01-03", "pruned.json"]


def test_the_update_reads_only_the_training_set_columns_it_uses(stage_data, tmp_path, monkeypatch):
    """Bags and strings that GLMix does not use (a skills bag here) are never read into pandas (a 100x day:
    the stage's peak went from 8.0 to 6.6 GB)."""
    import features.store

    settings = load_settings(shutil.copytree(stage_data, tmp_path / "data"))
    part = settings.paths.feature_partition("training_set", DAYS[0]) / "part-0.parquet"
    frame = pd.read_parquet(part)
    frame["m_skills"] = [["python", "sql"]] * len(frame)
    frame.to_parquet(part, index=False)
    read, real = [], features.store.read_offline_partition
    monkeypatch.setattr(features.store, "read_offline_partition",
                        lambda *args, **kwargs: read.append(real(*args, **kwargs)) or read[-1])
    update_random_effects(settings, DAYS[0], PersonaliseConfig(), write_online=False)
    assert sorted(read[-1].columns) == sorted(["member_id", "item_id", "label", "weight", "industry_match",
                                               "log_position", "m_industry", "m_seniority", "j_industry",
                                               "j_seniority"])


def test_the_serving_ranker_logit_is_the_global_offset(stage_data, tmp_path):
    from serving.models import load_ranker
    from serving.scoring import ranker_probabilities
    from training.glmix.model import daily_update
    from training.glmix.design import CategoricalBasis
    from training.ranker.train import TrainConfig

    settings = load_settings(shutil.copytree(stage_data, tmp_path / "data"))
    small = {"cross_layers": 1, "cross_rank": 8, "mlp_widths": (32, 16), "embedding_dim": 8}
    trained = ranker_stage.train(settings, DAYS[0], DAYS[1], eval_days=1, warm_start=False,
                                 train_config=TrainConfig(epochs=1), model_overrides=small)
    assert ranker_stage.promote(settings, trained["tag"])["status"] == "serving"

    # Trained on day 2 itself: its logit has seen day 2's labels, so day 2 keeps the fixed effect.
    leaky = update_random_effects(settings, DAYS[1], write_online=False)
    assert leaky["global_part"] == "fixed_effect" and leaky["ranker_tag"] == trained["tag"]
    assert "not strictly before 2026-01-02" in leaky["global_part_reason"]

    result = update_random_effects(settings, DAYS[2], write_online=False)
    state, fixed_effect, meta = load_state(settings, DAYS[2])
    assert result["global_part"] == meta["global_part"] == "ranker"
    assert meta["ranker_tag"] == trained["tag"]

    # The offset is serving's global part: logit of the calibrated ranker probability on the same rows,
    # computed here through the serving path (serving.scoring), not the stage's reader.
    frame = pd.read_parquet(settings.paths.feature_partition("training_set", DAYS[2]) / "part-0.parquet")
    model, spec, _ = load_ranker(settings, trained["tag"])
    p = np.clip(ranker_probabilities(model, spec, frame), 1e-7, 1 - 1e-7)
    expected = np.log(p) - np.log1p(-p)
    global_part = ranker_logit(settings, DAYS[2], frame)
    np.testing.assert_allclose(global_part.offsets, expected, rtol=0, atol=1e-5)
    assert expected.std() > 0.1  # a real, row-dependent score (not a constant the effects could absorb)

    # The stored posterior is the update with exactly that offset, and not the fixed-effect one.
    member_basis = CategoricalBasis.from_json(meta["member_basis"])
    job_basis = CategoricalBasis.from_json(meta["job_basis"])
    glmix_config = glmix_config_for(PersonaliseConfig(), member_basis, job_basis)
    prior, _, _ = load_state(settings, DAYS[1])
    training_spec = json.loads((settings.paths.feature_table("training_set") / "spec.json").read_text())
    with_ranker, _ = daily_update(prior, training_events(frame, training_spec, member_basis, job_basis, expected),
                                  glmix_config)
    torch.testing.assert_close(state.member.mean, with_ranker.member.mean, rtol=0, atol=1e-4)
    torch.testing.assert_close(state.job.mean, with_ranker.job.mean, rtol=0, atol=1e-4)
    _, prior_fixed, _ = load_state(settings, DAYS[1])
    fixed_offsets = prior_fixed.logit(frame[training_spec["dense"]].to_numpy(np.float64))
    ignored, _ = daily_update(prior, training_events(frame, training_spec, member_basis, job_basis, fixed_offsets),
                              glmix_config)
    assert float((state.member.mean - ignored.member.mean).abs().max()) > 0.05
    # The fixed effect is carried over unchanged for later days without a usable ranker.
    assert fixed_effect.to_json() == prior_fixed.to_json()


def test_served_auc_adds_the_random_effects_of_the_day_before_to_the_ranker(stage_data, tmp_path):
    """The ranker stage's `served_auc`: the ranker's calibrated logit + the effects online before the eval day."""
    from serving.models import load_ranker
    from serving.scoring import global_logit, ranker_probabilities
    from training.glmix.design import CategoricalBasis
    from training.glmix.model import random_effect_logit
    from training.ranker.evaluate import auc
    from training.ranker.train import TrainConfig

    settings = load_settings(shutil.copytree(stage_data, tmp_path / "data"))
    small = {"cross_layers": 1, "cross_rank": 8, "mlp_widths": (32, 16), "embedding_dim": 8}
    before = ranker_stage.train(settings, DAYS[0], DAYS[1], eval_days=1, warm_start=False,
                                train_config=TrainConfig(epochs=1), model_overrides=small)
    assert "served_auc" not in before["metrics"]  # no GLMix state yet: the ranker's AUC is the served one

    for day in DAYS:  # day 3's own posterior exists too, and must not be used to score day 3
        update_random_effects(settings, day, write_online=False)
    result = ranker_stage.evaluate(settings, before["tag"], DAYS[2])
    assert result["served_glmix_states"] == [DAYS[1].isoformat()]

    frame = pd.read_parquet(settings.paths.feature_partition("training_set", DAYS[2]) / "part-0.parquet")
    model, spec, _ = load_ranker(settings, before["tag"])
    state, _, meta = load_state(settings, DAYS[1])
    member_basis, job_basis = CategoricalBasis.from_json(meta["member_basis"]), CategoricalBasis.from_json(meta["job_basis"])
    training_spec = json.loads((settings.paths.feature_table("training_set") / "spec.json").read_text())
    events = training_events(frame, training_spec, member_basis, job_basis, None)
    effects = random_effect_logit(state, glmix_config_for(PersonaliseConfig(), member_basis, job_basis),
                                  events.member_ids, events.item_ids, events.member_design, events.job_design).numpy()
    assert np.abs(effects).max() > 0.1  # real, row-dependent effects
    score = global_logit(ranker_probabilities(model, spec, frame)) + effects
    expected = auc(score, frame["label"].to_numpy(), frame["weight"].to_numpy())
    assert result["served_auc"] == pytest.approx(expected, abs=1e-6)
    assert result["served_auc"] != pytest.approx(result["auc"], abs=1e-4)

    trained = ranker_stage.train(settings, DAYS[0], DAYS[1], eval_days=1, warm_start=False,
                                 train_config=TrainConfig(epochs=1), model_overrides=small)
    assert trained["metrics"]["served_glmix_states"] == [DAYS[1].isoformat()]
    assert 0.5 < trained["metrics"]["served_auc"] < 1.0


def test_missing_training_set_names_the_partition(tiny_data_dir, tmp_path):
    settings = load_settings(shutil.copytree(tiny_data_dir, tmp_path / "data"))
    with pytest.raises(FileNotFoundError, match="training_set"):
        update_random_effects(settings, DAYS[0], write_online=False)


def _names(basis_json):
    return ["intercept"] + [f"{c}={v}" for c, vocab in basis_json["columns"] for v in vocab]


@pytest.mark.parametrize(("items_categorical", "basis_columns"), [
    (["company", "industry", "region"], ["industry"]),   # the README's own example schema has no seniority
    (["company", "region"], []),                         # nothing shared: one bias per member and per job
])
def test_the_basis_takes_the_attributes_both_tables_declare(stage_data, tmp_path, caplog, items_categorical,
                                                            basis_columns):
    import yaml

    settings = load_settings(shutil.copytree(stage_data, tmp_path / "data"))
    schema = yaml.safe_load(settings.paths.raw_schema.read_text())
    schema["items"]["categorical"] = items_categorical
    settings.paths.raw_schema.write_text(yaml.safe_dump(schema))
    with caplog.at_level("WARNING", logger="rankflow.stages.personalise"):
        results = [update_random_effects(settings, day, write_online=False) for day in DAYS[:2]]
    assert "not categorical in both raw tables" in caplog.text and "items lacks" in caplog.text
    state, _, meta = load_state(settings, DAYS[1])
    assert [column for column, _ in meta["member_basis"]["columns"]] == basis_columns
    assert state.member.dim == 1 + (8 if basis_columns else 0) and state.job.dim == state.member.dim
    assert results[1]["summary"]["member"]["not_converged"] == 0
    assert torch.isfinite(state.member.mean).all() and state.member.mean.abs().sum() > 0


def test_a_day_without_its_training_set_is_said_first(stage_data, tmp_path):
    """A missing partition (or a folder without its file) is named before the prior, the skipped-day check
    or the online store are looked at: here day 3 alone, whose day 2 has no state, still says 'no training set'."""
    settings = load_settings(shutil.copytree(stage_data, tmp_path / "data"))
    update_random_effects(settings, DAYS[0], PersonaliseConfig(), write_online=False)
    (settings.paths.feature_partition("training_set", DAYS[2]) / "part-0.parquet").unlink()
    with pytest.raises(FileNotFoundError, match=r"training_set/dt=2026-01-03: no training set for 2026-01-03; "
                                                 r"run `rankflow features build --date 2026-01-03` first"):
        update_random_effects(settings, DAYS[2], PersonaliseConfig(), write_online=False)
