"""Ranker quality on the synthetic marketplace, against the generator's ground truth (issue 6, acceptance 1 and 2).

    PYTHONPATH=. python benchmarks/ranker_quality.py --data-dir /tmp/rq/data            # CPU or one GPU
    PYTHONPATH=. python benchmarks/ranker_quality.py --data-dir D --build                # generate + features first
    PYTHONPATH=. python benchmarks/ranker_quality.py --data-dir D --validation           # choose settings: d_{n-1}

The data directory holds a generated marketplace whose training set was built by the feature stages
(`rankflow generate`, then rankflow.stages.features.run_range over every day). With days d_1..d_n:

- ranker (full retrain) and logistic regression on d_1..d_{n-1}, evaluated on d_n (the next day), both
  with the same inputs, the display position included (training/ranker/position.py: an additive
  per-position logit, learned from the logged positions): scored at d_n's logged positions (the AUC
  the oracle's is compared with) and at position 1 (as the service scores; the order among candidates);
- the same two models trained without the position ("position-blind"), for comparison;
- warm start: a "serving" ranker trained on d_1..d_{n-2}, continued on d_{n-1} only, vs the full retrain
  (its calibration fitted on the held-out rows of d_1..d_{n-1}, which neither model trained on);
- the served score: the ranker's calibrated logit + GLMix member and job random effects updated day by day
  over d_1..d_{n-1} (`served_with_random_effects`), as serving.scoring combines them; with the effects
  fitted against the fixed effect or against the daily ranker, and GLMix alone;
- oracle: the AUC / log loss / ECE of the generator's true probabilities on d_n;
- position-blind oracle: the true logit without the position term -a log(p): the best a model that does
  not see the position could do;
- learnable bound: a model that is told everything the generator knows (global coefficients, job
  random effects, latent affinities, position) except each member's random effect w_m, which it
  estimates as the MAP under the true prior N(0, s^2 I) from the member's events of d_1..d_{n-1}.
  Every learner must also estimate w_m from those same events (and much else), so its AUC is a
  ceiling for this amount of data; the gap oracle - bound is what the data size alone costs.

ECE uses 15 equal-width probability bins (training.ranker.evaluate). The table is printed and written
to benchmarks/results/ranker-quality-<machine>.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe_machine, write_result  # noqa: E402

ECE_BINS = 15


@dataclass
class QualityRun:
    """The measured numbers of one benchmark run (JSON-serialisable)."""

    train_days: list[str]
    eval_day: str
    rows_train: int
    rows_eval: int
    ranker: dict[str, Any]
    logistic: dict[str, Any]
    oracle: dict[str, Any]
    warm: dict[str, Any]
    full_seconds: float
    train_config: dict[str, Any]
    model: dict[str, Any]
    bound: dict[str, Any] = field(default_factory=dict)
    blind: dict[str, Any] = field(default_factory=dict)          # position-blind ranker and logistic
    position_curve: dict[str, Any] = field(default_factory=dict)  # learned beta_p - beta_1 vs the truth
    served: dict[str, float] = field(default_factory=dict)       # AUC of ranker + GLMix random effects


# ---------------------------------------------------------------------------------------------
# Ground truth


def _truth_frame(paths, day: date):
    """The day's events joined with true_prob (pandas)."""
    import pyarrow.parquet as pq

    from features.contract import read_raw

    events = read_raw(paths, "events", day=day)
    truth = pq.read_table(paths.truth / "events" / f"dt={day.isoformat()}" / "part-0.parquet").to_pandas()
    return events.merge(truth, on="event_id", how="inner", validate="one_to_one")


def oracle_metrics(paths, day: date) -> dict[str, float]:
    """AUC / log loss / ECE of the true probabilities on `day`, and the position-blind oracle AUC."""
    from training.ranker.evaluate import auc, expected_calibration_error, log_loss

    frame = _truth_frame(paths, day)
    truth = json.loads((paths.truth / "params.json").read_text())["truth"]
    p, y = frame["true_prob"].to_numpy(), frame["label"].to_numpy().astype(np.float64)
    w = frame["weight"].to_numpy().astype(np.float64)
    logit = np.log(p / (1 - p))
    blind = logit + truth["position_bias"] * np.log(frame["position"].to_numpy())
    return {"auc": auc(p, y, w), "auc_position_blind": auc(blind, y, w), "log_loss": log_loss(p, y, w),
            "ece": expected_calibration_error(p, y, w, ECE_BINS), "positive_rate": float((w * y).sum() / w.sum())}


def _member_basis(paths, day: date, frame) -> tuple[np.ndarray, np.ndarray]:
    """phi(job) per event and the member's true random-effect part w_m(day) . phi(job)."""
    import pyarrow.parquet as pq

    from features.contract import read_raw

    names = json.loads((paths.truth / "params.json").read_text())["member_basis"]["names"]
    items = read_raw(paths, "items", end=day).set_index("item_id").loc[frame["item_id"]]
    phi = np.zeros((len(frame), len(names)))
    phi[:, 0] = 1.0
    for k, name in enumerate(names[1:], start=1):
        attribute, value = name.split("=", 1)
        phi[:, k] = items[attribute].to_numpy() == value
    weights = pq.read_table(paths.truth / "member_weights" / f"dt={day.isoformat()}" / "part-0.parquet").to_pandas()
    weights = weights.set_index("member_id").loc[frame["member_id"], names].to_numpy()
    return phi, (weights * phi).sum(axis=1)


def learnable_bound(paths, train_days: list[date], eval_day: date, newton_steps: int = 30) -> dict[str, float]:
    """AUC on eval_day of the truth with each member's random effect replaced by its MAP estimate.

    For member m with events i in the training days: offset_i = true logit_i - w_m(d_i) . phi_i (all the
    truth but m's effect), and w_m = argmax sum_i log Bernoulli(y_i | offset_i + w . phi_i) - |w|^2 / (2 s^2)
    with s the generator's member_weight_std, by Newton's method (all members at once). Members never
    seen in training get w = 0 (the prior mean).
    """
    from training.ranker.evaluate import auc

    prior_std = json.loads((paths.truth / "params.json").read_text())["truth"]["member_weight_std"]
    parts = []
    for day in train_days:
        frame = _truth_frame(paths, day)
        phi, effect = _member_basis(paths, day, frame)
        logit = np.log(frame["true_prob"].to_numpy() / (1 - frame["true_prob"].to_numpy()))
        parts.append((frame["member_id"].to_numpy(), phi, logit - effect, frame["label"].to_numpy().astype(np.float64)))
    member = np.concatenate([p[0] for p in parts])
    phi, offset, label = (np.concatenate([p[i] for p in parts]) for i in (1, 2, 3))
    members, index = np.unique(member, return_inverse=True)
    count, dim = members.size, phi.shape[1]
    w = np.zeros((count, dim))

    def objective(weights: np.ndarray) -> np.ndarray:  # per member: log likelihood + log prior
        s = offset + (weights[index] * phi).sum(1)
        log_likelihood = label * s - np.logaddexp(0.0, s)
        return np.bincount(index, log_likelihood, count) - 0.5 * (weights**2).sum(1) / prior_std**2

    for _ in range(newton_steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(offset + (w[index] * phi).sum(1), -30, 30)))
        gradient = np.stack([np.bincount(index, (label - p) * phi[:, a], count) for a in range(dim)], 1) - w / prior_std**2
        curvature = p * (1 - p)
        hessian = np.zeros((count, dim, dim))
        for a in range(dim):
            for b in range(a, dim):
                hessian[:, a, b] = hessian[:, b, a] = np.bincount(index, curvature * phi[:, a] * phi[:, b], count)
        hessian += np.eye(dim) / prior_std**2
        step = np.linalg.solve(hessian, gradient[..., None])[..., 0]
        # Damped Newton (the collinear one-hot basis makes full steps overshoot): per member, the best of
        # 1, 1/2, .., 1/64 of the step, or no move when none raises its objective.
        best, best_value = w, objective(w)
        for fraction in 0.5 ** np.arange(7):
            candidate = w + fraction * step
            value = objective(candidate)
            better = value > best_value
            best = np.where(better[:, None], candidate, best)
            best_value = np.where(better, value, best_value)
        w = best

    frame = _truth_frame(paths, eval_day)
    phi_eval, effect_eval = _member_basis(paths, eval_day, frame)
    true_logit = np.log(frame["true_prob"].to_numpy() / (1 - frame["true_prob"].to_numpy()))
    where = np.clip(np.searchsorted(members, frame["member_id"].to_numpy()), 0, count - 1)
    known = members[where] == frame["member_id"].to_numpy()
    estimate = np.where(known[:, None], w[where], 0.0)
    score = true_logit - effect_eval + (estimate * phi_eval).sum(1)
    labels = frame["label"].to_numpy().astype(np.float64)
    events_per_member = np.bincount(index)
    return {"auc": auc(score, labels), "events_per_member_median": float(np.median(events_per_member)),
            "events_per_member_mean": float(events_per_member.mean())}


# ---------------------------------------------------------------------------------------------
# The score the service computes: ranker + GLMix random effects


def served_with_random_effects(settings, model, model_config, train_config, train_days: list[date], eval_day: date,
                               log=print) -> dict[str, Any]:
    """Next-day AUC of sigmoid(ranker logit + beta_m . phi(j) + gamma_j . phi(m)), as serving.scoring combines them.

    The random effects come from the personalise stage's own pieces (rankflow.stages.personalise: basis,
    GLMix settings, training events, the ranker's calibrated logit as the offset), updated day by day over
    the training days, with one of two global parts:
    - the fixed-effect logistic regression (what the stage uses before any ranker serves; `rankflow demo`
      personalises before it trains its ranker, so its service adds these effects to the ranker);
    - the daily ranker: on day d_k the ranker trained on d_1..d_{k-1} (a full train on d_1, then one warm
      start per day, as a daily pipeline promotes them; the stage never uses a ranker trained on d_k itself).
      Day d_1 has no ranker yet and uses the fixed effect, as the stage does.
    On the evaluation day every score uses `model` (the full retrain the table reports) for the ranker part.
    "glmix alone" is the fixed effect + its random effects, no ranker.
    """
    import torch

    from rankflow.stages.personalise import (
        PersonaliseConfig,
        basis_from_raw,
        glmix_config_for,
        ranker_offsets,
        read_training_set,
        training_events,
    )
    from training.glmix.model import GLMixState, random_effect_logit, update_day
    from training.ranker.evaluate import auc
    from training.ranker.train import train_ranker

    training_set = settings.paths.feature_table("training_set")
    config = PersonaliseConfig()
    basis = basis_from_raw(settings, train_days[0], config.basis_attributes)
    glmix_config = glmix_config_for(config, basis, basis)
    states = {name: (GLMixState.empty(glmix_config, torch.float64), None) for name in ("fixed effect", "daily ranker")}
    daily, started = None, time.perf_counter()
    for index, day in enumerate(train_days):
        frame, spec = read_training_set(settings, day)
        dense_names = list(spec.get("dense", []))
        dense = frame[dense_names].to_numpy(dtype=np.float64)
        offsets = {"fixed effect": None,
                   "daily ranker": None if daily is None else ranker_offsets(settings, daily, day, frame)}
        for name, (state, fixed_effect) in states.items():
            events = training_events(frame, spec, basis, basis, offsets[name])
            state, fixed_effect, _ = update_day(state, events, glmix_config, dense, dense_names, fixed_effect)
            states[name] = (state, fixed_effect)
        if index + 1 < len(train_days):
            daily = train_ranker(training_set, [day], model_config if daily is None else None, train_config,
                                 warm_start=daily, holdout_days=train_days[:index]).model
    log(f"  random effects over {len(train_days)} days, both global parts ({time.perf_counter() - started:.1f}s)")

    frame, spec = read_training_set(settings, eval_day)
    events = training_events(frame, spec, basis, basis, None)
    labels = events.labels.numpy()
    weights = None if events.weights is None else events.weights.numpy()

    def effects(name: str) -> np.ndarray:
        return random_effect_logit(states[name][0], glmix_config, events.member_ids, events.item_ids,
                                   events.member_design, events.job_design).numpy()

    ranker = ranker_offsets(settings, model, eval_day, frame)
    fixed_effect = states["fixed effect"][1]
    dense = frame[list(spec.get("dense", []))].to_numpy(dtype=np.float64)
    scores = {"ranker alone": ranker,
              "glmix alone": fixed_effect.logit(dense) + effects("fixed effect"),
              "ranker + effects on the fixed effect": ranker + effects("fixed effect"),
              "ranker + effects on the daily ranker": ranker + effects("daily ranker")}
    return {name: auc(score, labels, weights) for name, score in scores.items()}


# ---------------------------------------------------------------------------------------------
# The models


def _evaluate(settings, model, eval_day: date, train_days: list[date]) -> dict[str, Any]:
    from rankflow.stages.ranker import evaluate_model

    evaluation = evaluate_model(settings, model, [eval_day], train_days)
    values = evaluation.to_dict()
    values.pop("reliability")
    return values


def measure(settings, train_config=None, model_overrides: dict[str, Any] | None = None,
            logistic_config=None, with_bound: bool = True, log=print, validation: bool = False,
            with_blind: bool = True, with_served: bool = True) -> QualityRun:
    """Train and evaluate everything in the module docstring on the newest day of `settings`' data.

    validation: leave the newest day out entirely and evaluate on the day before it (where settings are
    chosen, so the newest day's numbers are not tuned on)."""
    import torch

    from training.ranker import data
    from training.ranker.logistic import LogisticRegression
    from training.ranker.model import RankerConfig
    from training.ranker.train import TrainConfig, train_ranker

    train_config = train_config or TrainConfig()
    training_set = settings.paths.feature_table("training_set")
    days = data.available_days(training_set)
    if validation:
        days = days[:-1]
    if len(days) < 3:
        raise ValueError(f"{training_set}: need at least 3 training-set days, found {len(days)}")
    train_days, eval_day = days[:-1], days[-1]
    spec = data.read_spec(training_set)
    model_config = RankerConfig.from_spec(spec, **(model_overrides or {}))

    log(f"full retrain on {train_days[0]}..{train_days[-1]}")
    full = train_ranker(training_set, train_days, model_config, train_config)
    ranker = _evaluate(settings, full.model, eval_day, train_days)
    log(f"  AUC {ranker['auc']:.4f} ECE {ranker['ece']:.4f} ({full.seconds:.1f}s)")

    log("logistic regression on the same rows")
    logistic_config = logistic_config or train_config
    logistic_model = train_ranker(training_set, train_days, model_config, logistic_config,
                                  model_factory=LogisticRegression).model
    logistic = _evaluate(settings, logistic_model, eval_day, train_days)
    log(f"  AUC {logistic['auc']:.4f}")

    blind, curve = {}, {}
    if model_config.position_feature is not None and with_blind:
        truth = json.loads((settings.paths.truth / "params.json").read_text())["truth"] if settings.paths.truth.exists() else None
        curve = {"ranker": full.model.position.curve().tolist(), "logistic": logistic_model.position.curve().tolist()}
        if truth is not None:
            positions = np.arange(1, full.model.position.max_position + 1)
            curve["truth"] = (-truth["position_bias"] * np.log(positions)).tolist()
        log("position-blind ranker and logistic regression (no position term)")
        blind_config = replace(model_config, position_feature=None)
        blind_ranker = train_ranker(training_set, train_days, blind_config, train_config).model
        blind_logistic = train_ranker(training_set, train_days, blind_config, logistic_config,
                                      model_factory=LogisticRegression).model
        blind = {"ranker": _evaluate(settings, blind_ranker, eval_day, train_days),
                 "logistic": _evaluate(settings, blind_logistic, eval_day, train_days)}
        log(f"  AUC ranker {blind['ranker']['auc']:.4f} logistic {blind['logistic']['auc']:.4f}")

    log(f"serving model on {train_days[0]}..{train_days[-2]}, warm start on {train_days[-1]}")
    serving = train_ranker(training_set, train_days[:-1], model_config, train_config).model
    serving_auc = _evaluate(settings, serving, eval_day, train_days[:-1])["auc"]
    warm = train_ranker(training_set, [train_days[-1]], None, train_config, warm_start=copy.deepcopy(serving),
                        holdout_days=train_days[:-1])
    warm_eval = _evaluate(settings, warm.model, eval_day, train_days)
    log(f"  warm AUC {warm_eval['auc']:.4f} ({warm.seconds:.1f}s) vs full {ranker['auc']:.4f} ({full.seconds:.1f}s)")

    served = {}
    if with_served:
        log("ranker + GLMix random effects, as the service scores")
        served = served_with_random_effects(settings, full.model, model_config, train_config, train_days, eval_day, log)
        log("  " + ", ".join(f"{name} {value:.4f}" for name, value in served.items()))

    oracle = oracle_metrics(settings.paths, eval_day)
    bound = learnable_bound(settings.paths, train_days, eval_day) if with_bound else {}
    rows_train = int(sum(data.read_column(data.day_files(training_set, [d]), "label").size for d in train_days))
    torch_model = {k: v for k, v in model_config.to_dict().items() if k not in (
        "sparse_features", "sparse_buckets", "bag_features", "bag_buckets", "dense_features", "vector_features")}
    return QualityRun(
        train_days=[d.isoformat() for d in train_days], eval_day=eval_day.isoformat(), rows_train=rows_train,
        rows_eval=ranker["rows"], ranker=ranker, logistic=logistic, oracle=oracle,
        warm={"auc": warm_eval["auc"], "ece": warm_eval["ece"], "seconds": warm.seconds, "rows": warm.rows,
              "serving_auc": serving_auc},
        full_seconds=full.seconds, train_config=asdict(train_config), model=torch_model, bound=bound,
        blind=blind, position_curve=curve, served=served,
    )


# ---------------------------------------------------------------------------------------------
# Table


def _optional(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def repeat_seeds(settings, train_config, logistic_config, seeds: list[int], validation: bool = False,
                 log=print) -> list[QualityRun]:
    """The ranker, logistic regression and warm start trained again with other seeds (same data, same settings)."""
    runs = []
    for seed in seeds:
        log(f"seed {seed}")
        runs.append(measure(settings, replace(train_config, seed=seed), logistic_config=replace(logistic_config, seed=seed),
                            with_bound=False, log=log, validation=validation, with_blind=False, with_served=False))
    return runs


def seeds_table(runs: list[QualityRun]) -> str:
    """One row per seed: the numbers issue 6's lines 1 and 2 compare."""
    lines = ["| seed | ranker AUC | logistic AUC | ranker - logistic | ECE calibrated / uncalibrated | warm / full AUC | full - warm |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for run in runs:
        r, lg, w = run.ranker, run.logistic, run.warm
        lines.append(f"| {run.train_config['seed']} | {r['auc']:.4f} | {lg['auc']:.4f} | {r['auc'] - lg['auc']:+.4f} | "
                     f"{r['ece']:.4f} / {r['ece_uncalibrated']:.4f} | {w['auc']:.4f} / {r['auc']:.4f} | {r['auc'] - w['auc']:+.4f} |")
    return "\n".join(lines)


def table(run: QualityRun) -> str:
    r, lg, o, w, b, blind = run.ranker, run.logistic, run.oracle, run.warm, run.bound, run.blind
    with_position = " (logged positions)" if blind else ""
    rows = [
        ("oracle AUC (true probabilities)", f"{o['auc']:.4f}"),
        ("position-blind oracle AUC (true logit without -a log(position))", f"{o['auc_position_blind']:.4f}"),
        ("learnable bound AUC (MAP member effect, all else true)", f"{b['auc']:.4f}" if b else "not run"),
        (f"ranker AUC{with_position}", f"{r['auc']:.4f}"),
        (f"logistic regression AUC{with_position}", f"{lg['auc']:.4f}"),
        ("ranker - logistic AUC", f"{r['auc'] - lg['auc']:+.4f}"),
        ("oracle - ranker AUC (target <= 0.01)", f"{o['auc'] - r['auc']:.4f}"),
        ("bound - ranker AUC", f"{b['auc'] - r['auc']:.4f}" if b else "not run"),
    ]
    if blind:
        rows += [
            ("ranker / logistic AUC scored at position 1 (as served)",
             f"{_optional(r.get('auc_without_position'))} / {_optional(lg.get('auc_without_position'))}"),
            ("position-blind ranker / logistic AUC (trained without position)",
             f"{blind['ranker']['auc']:.4f} / {blind['logistic']['auc']:.4f}"),
            ("position-blind oracle - position-blind ranker AUC", f"{o['auc_position_blind'] - blind['ranker']['auc']:.4f}"),
            ("position-blind ranker ECE, calibrated", f"{blind['ranker']['ece']:.4f}"),
        ]
    if run.served:
        v = run.served
        rows += [
            ("ranker + GLMix random effects AUC (as served; effects on the daily ranker's residuals)",
             f"{v['ranker + effects on the daily ranker']:.4f}"),
            ("ranker + random effects fitted on the fixed effect's residuals", f"{v['ranker + effects on the fixed effect']:.4f}"),
            ("GLMix alone AUC (fixed effect + random effects)", f"{v['glmix alone']:.4f}"),
            ("ranker alone through the same scoring path (calibrated logit)", f"{v['ranker alone']:.4f}"),
        ]
    rows += [
        ("ranker log loss / oracle log loss", f"{r['log_loss']:.4f} / {o['log_loss']:.4f}"),
        ("ranker NE", f"{r['normalized_entropy']:.4f}"),
        (f"ranker ECE, calibrated ({ECE_BINS} equal-width bins; target < 0.01)", f"{r['ece']:.4f}"),
        ("ranker ECE, uncalibrated", f"{r['ece_uncalibrated']:.4f}"),
        ("oracle ECE (sampling noise floor)", f"{o['ece']:.4f}"),
        ("logistic ECE, calibrated", f"{lg['ece']:.4f}"),
        (f"ranker AUC cold members ({r['cold_rows']} rows) / warm", f"{r['auc_cold']:.4f} / {r['auc_warm']:.4f}"),
        ("serving model AUC (trained without the newest day)", f"{w['serving_auc']:.4f}"),
        ("warm start AUC / full retrain AUC", f"{w['auc']:.4f} / {r['auc']:.4f}"),
        ("full - warm AUC (target <= 0.002)", f"{r['auc'] - w['auc']:+.4f}"),
        ("warm start seconds / full retrain seconds", f"{w['seconds']:.1f} / {run.full_seconds:.1f}"),
        ("warm / full time ratio", f"{w['seconds'] / run.full_seconds:.3f}"),
    ]
    lines = [f"Train days {run.train_days[0]}..{run.train_days[-1]} ({run.rows_train:,} rows), "
             f"evaluation day {run.eval_day} ({run.rows_eval:,} rows, positive rate {o['positive_rate']:.4f}).", "",
             "| metric | value |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows), ""]
    if run.position_curve:
        curve = run.position_curve
        lines += ["Learned position logits beta_p - beta_1 (position.py) against the generator's -a log(p):", "",
                  "| position | " + " | ".join(str(p + 1) for p in range(len(curve["ranker"]))) + " |",
                  "| --- " * (len(curve["ranker"]) + 1) + "|",
                  *(f"| {name} | " + " | ".join(f"{v:.2f}" for v in curve[name]) + " |"
                    for name in ("truth", "ranker", "logistic") if name in curve), ""]
    if b:
        lines.append(f"Training events per member: median {b['events_per_member_median']:.0f}, "
                     f"mean {b['events_per_member_mean']:.1f}.")
    lines += ["", f"Train config: `{json.dumps(run.train_config)}`", "", f"Model: `{json.dumps(run.model)}`"]
    return "\n".join(lines)


def logistic_config(device: str = "auto"):
    """The baseline's own tuned settings (the best of a small sweep on the demo data; on the validation day
    embedding lr 0.1 gave 0.7910 against 0.7909 for 0.2), held out as the ranker is: a fair opponent."""
    from training.ranker.train import quality_config

    return quality_config(device=device, embedding_lr=0.2, dense_lr=0.01)


def _build(data_dir: Path) -> None:
    """Generate the default marketplace and build its features (the real stages)."""
    from features.synthetic import generate
    from rankflow.config import load_settings
    from rankflow.stages.features import run_range

    settings = load_settings(data_dir)
    summary = generate(settings.generator, settings.paths)
    first = date.fromisoformat(summary["start"])
    run_range(settings, [date.fromordinal(first.toordinal() + i) for i in range(summary["days"])])


def main(argv: list[str] | None = None) -> None:
    import torch

    from rankflow.config import load_settings
    from training.ranker.train import quality_config

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--build", action="store_true", help="generate the default marketplace and its features first")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--no-bound", action="store_true", help="skip the learnable-bound estimate")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw numbers here")
    parser.add_argument("--seeds", type=int, default=1,
                        help="also train the ranker, logistic regression and warm start with seeds 1..N-1 and tabulate all N")
    parser.add_argument("--validation", action="store_true",
                        help="leave the newest day out, evaluate on the day before it (for choosing settings; not written)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.build:
        _build(args.data_dir)
    settings = load_settings(args.data_dir)
    started = time.perf_counter()
    run = measure(settings, quality_config(device=args.device), logistic_config=logistic_config(args.device),
                  with_bound=not args.no_bound, validation=args.validation)
    text = table(run)
    if args.seeds > 1:
        others = repeat_seeds(settings, quality_config(device=args.device), logistic_config(args.device),
                              list(range(1, args.seeds)), validation=args.validation)
        text += ("\n\nThe same run with other seeds (same data and settings; warm start from a serving model of that seed):"
                 "\n\n" + seeds_table([run, *others]))
    print(text)
    print(f"\n(total {time.perf_counter() - started:.0f}s)")
    if not args.validation:
        print(f"written to {write_result('ranker-quality', text, describe_machine())}")
    if args.json:
        args.json.write_text(json.dumps(asdict(run), indent=1, default=str))


if __name__ == "__main__":
    main()
