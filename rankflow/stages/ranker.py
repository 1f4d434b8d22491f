"""Ranker stage: train a candidate, evaluate it, promote it only if it beats the serving model.

    train(settings, start, end, eval_days=1, warm_start=True)  -> candidate tag + metrics
    evaluate(settings, tag, day)                                -> metrics of a stored model on one day
    promote(settings, tag, margin=...)                          -> serving / rejected (with the reason)
    rollback(settings)                                          -> the previous serving model again

Models live in the BentoML model store at <data_dir>/models/bentoml (name `rankflow-ranker`), each
holding a safetensors checkpoint (training.ranker.checkpoint) and labels `logical_date` and `status`
(`candidate` | `serving` | `rejected`); metrics and the rejection reason are custom metadata.
`models/serving.json` is the one pointer to what serves (written atomically), with the history of
previous serving tags for rollback. It is the source of truth: promote and rollback switch it first (the
commit point), then bring the `status` labels in line (`reconcile_labels`); a label update that fails or is
killed after the switch leaves the switch in place and said so, and the next promote or rollback (an
"already serving" one included) reconciles the labels before anything else. Candidates are registered
under rankflow.model_store.registering (incomplete versions of a killed save moved out first).
Training reports go to reports/ranker/<version>/.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass, replace
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

from rankflow.config import Settings
from rankflow.logs import get_logger
from rankflow.paths import atomic_write_bytes, read_json

log = get_logger(__name__)

MODEL_NAME = "rankflow-ranker"
SERVING_FILE = "serving.json"


@dataclass(frozen=True)
class PromotionPolicy:
    """A candidate replaces the serving model only if its AUC on the same day is higher by `margin`; and never,
    even when nothing serves yet, if it ranks no better than chance (AUC <= `min_auc`) or, when
    `max_normalized_entropy` is set, if its probabilities are no better than the base rate (NE >= it). The NE
    gate is off by default: a small model whose ranking helps can still be slightly worse than the base rate in
    log loss (`rankflow train` warns about it)."""

    metric: str = "auc"
    margin: float = 0.001
    min_auc: float = 0.5
    max_normalized_entropy: float | None = None

    def useless(self, metrics: dict) -> str | None:
        """Why a model with these evaluation metrics must not serve, or None."""
        auc, entropy = metrics.get("auc"), metrics.get("normalized_entropy")
        if auc is not None and auc <= self.min_auc:
            return f"AUC {auc:.4f} is no better than chance (<= {self.min_auc})"
        if entropy is not None and self.max_normalized_entropy is not None and entropy >= self.max_normalized_entropy:
            return (f"normalised entropy {entropy:.4f} >= {self.max_normalized_entropy}: its probabilities are "
                    "worse than the base rate's")
        return None


# ---------------------------------------------------------------------------------------------
# Model store and serving pointer


def model_store(settings: Settings):
    """The BentoML model store of this data directory (no BENTOML_HOME needed)."""
    from bentoml._internal.models.model import ModelStore

    root = settings.paths.bentoml_home / "models"
    root.mkdir(parents=True, exist_ok=True)
    return ModelStore(str(root))


def stored_model(settings: Settings, tag: str):
    """The stored model `tag` ("name:version", or "name" for the newest); a clear error when there is none."""
    from bentoml.exceptions import NotFound

    store = model_store(settings)
    try:
        return store.get(tag)
    except NotFound:
        stored = [str(model.tag) for model in sorted(store.list(), key=lambda model: model.creation_time)]
        listed = ", ".join(reversed(stored[-3:])) if stored else "none"
        raise ValueError(f"no model {tag!r} in the model store {settings.paths.bentoml_home / 'models'} "
                         f"({len(stored)} stored; the newest: {listed})") from None


def serving_state(settings: Settings) -> dict[str, Any]:
    path = settings.paths.models / SERVING_FILE
    return read_json(path) if path.exists() else {}


def serving_tag(settings: Settings, name: str = MODEL_NAME) -> str | None:
    return serving_state(settings).get(name, {}).get("tag")


def _write_serving(settings: Settings, name: str, tag: str | None, history: list[str]) -> None:
    state = serving_state(settings)  # other models' entries are kept as they are
    state[name] = {"tag": tag, "history": history, "updated": datetime.now(timezone.utc).isoformat()}
    atomic_write_bytes(settings.paths.models / SERVING_FILE, json.dumps(state, indent=2).encode())


def _relabel(settings: Settings, tag: str, status: str, **metadata: Any) -> None:
    """Rewrite a stored model's status label (and metadata) in its model.yaml, atomically.

    BentoML's ModelInfo is immutable after save; the store has no relabel call, so the yaml is
    re-written through ModelInfo itself (same schema) and renamed into place.
    """
    from bentoml._internal.models.model import MODEL_YAML_FILENAME, ModelInfo

    stored = stored_model(settings, tag)
    yaml_path = Path(stored.path) / MODEL_YAML_FILENAME
    with yaml_path.open() as stream:
        info = ModelInfo.from_yaml_file(stream)
    updated = ModelInfo(
        tag=info.tag, module=info.module, labels={**info.labels, "status": status},
        options=info._options, metadata={**info.metadata, **metadata}, context=info.context,
        signatures=info.signatures, api_version=info.api_version, creation_time=info.creation_time,
    )
    atomic_write_bytes(yaml_path, updated.dump().encode())


def _load_model(settings: Settings, tag: str):
    from training.ranker.checkpoint import load_checkpoint

    stored = stored_model(settings, tag)
    return load_checkpoint(Path(stored.path)), stored


def model_info(settings: Settings, tag: str) -> dict[str, Any]:
    stored = stored_model(settings, tag)
    return {"tag": str(stored.tag), "labels": dict(stored.info.labels), "metadata": dict(stored.info.metadata)}


# ---------------------------------------------------------------------------------------------
# Evaluation


def _training_set(settings: Settings) -> Path:
    return settings.paths.feature_table("training_set")


def _true_probabilities(settings: Settings, day: date, event_ids) -> Any:
    """The generator's true_prob for these events, or None (ingested data has no truth)."""
    import numpy as np
    import pyarrow.parquet as pq

    path = settings.paths.truth / "events" / f"dt={day.isoformat()}" / "part-0.parquet"
    if event_ids is None or not path.exists():
        return None
    truth = pq.read_table(path, columns=["event_id", "true_prob"])
    ids = truth.column("event_id").to_numpy()
    probs = truth.column("true_prob").to_numpy()
    order = np.argsort(ids)
    where = np.searchsorted(ids[order], event_ids)
    where = np.clip(where, 0, len(ids) - 1)
    matched = ids[order][where] == event_ids
    if not matched.all():
        log.warning("truth for %s lacks %d of %d events; oracle AUC skipped", day, int((~matched).sum()), len(event_ids))
        return None
    return probs[order][where]


def evaluate_model(settings: Settings, model, days: list[date], train_days: list[date]):
    """training.ranker.evaluate.Evaluation of `model` on `days` (cold = members absent from train_days)."""
    import numpy as np

    from training.ranker import data
    from training.ranker.evaluate import evaluate_predictions
    from training.ranker.train import predict_logits

    training_set = _training_set(settings)
    spec = data.read_spec(training_set)
    rows = data.load_rows(data.day_files(training_set, days), spec, model.config)
    logits = predict_logits(model, rows)
    blind = None
    if rows.position is not None and getattr(model, "position", None) is not None:
        blind = predict_logits(model, replace(rows, position=None)).numpy()
    probabilities = model.calibration(logits.to(model.calibration.knots.device)).cpu()
    truth = None
    if rows.event_id is not None:
        parts, start = [], 0
        for day in days:
            count = sum(_row_count(f) for f in data.day_files(training_set, [day]))
            parts.append(_true_probabilities(settings, day, rows.event_id[start:start + count].numpy()))
            start += count
        truth = None if any(p is None for p in parts) else np.concatenate(parts)
    warm_members = np.unique(data.read_column(data.day_files(training_set, train_days), spec["member"]))
    return evaluate_predictions(
        logits.numpy(), probabilities.numpy(), rows.label.numpy(), rows.weight.numpy(),
        rows.member_id.numpy(), warm_members, truth, logits_without_position=blind,
    )


def served_auc(settings: Settings, model, days: list[date]) -> dict[str, Any]:
    """AUC on `days` of the score the service computes: the ranker's calibrated logit + GLMix random effects.

    Each day's effects come from the newest GLMix state before it (personalise.served_random_effects), as
    serving.scoring adds them online. Empty when a day has no earlier state (personalisation has not run, or
    retention deleted it):
    the ranker's own AUC is then the served one.
    """
    import numpy as np

    from rankflow.stages.personalise import ranker_offsets, read_training_set, served_random_effects
    from training.ranker.evaluate import auc

    scores, labels, weights, states = [], [], [], []
    for day in days:
        frame, spec = read_training_set(settings, day)
        effects = served_random_effects(settings, day, frame, spec)
        if effects is None:
            return {}
        scores.append(ranker_offsets(settings, model, day, frame) + effects[0])
        labels.append(frame[spec.get("label", "label")].to_numpy(np.float64))
        weight = spec.get("weight", "weight")
        weights.append(frame[weight].to_numpy(np.float64) if weight in frame else np.ones(len(frame)))
        states.append(effects[1].isoformat())
    return {"served_auc": auc(np.concatenate(scores), np.concatenate(labels), np.concatenate(weights)),
            "served_glmix_states": states}


def _row_count(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def _days(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def _train_days(metadata: dict[str, Any]) -> list[date]:
    return _days(date.fromisoformat(metadata["train_start"]), date.fromisoformat(metadata["train_end"]))


def evaluate(settings: Settings, tag: str, day: date) -> dict[str, Any]:
    """Metrics of the stored model `tag` on the training-set rows of `day`."""
    model, stored = _load_model(settings, tag)
    result = evaluate_model(settings, model, [day], _train_days(stored.info.metadata))
    return {"tag": str(stored.tag), "day": day.isoformat(), **result.summary(), **served_auc(settings, model, [day])}


# ---------------------------------------------------------------------------------------------
# Train, promote, rollback


def _shared_holdout_days(parent_metadata: dict, config, first_day: date, parent_end: date, available: set,
                         new_days: list[date]) -> list[date]:
    """The serving model's days whose held-out rows it never trained on, to join a warm start's calibration holdout.

    Only when both held out the same pseudo-random fraction of every day (calibration_days 0, the same
    fraction and seed): then those rows are unseen by either model (training/ranker/train.py, train_ranker).
    """
    parent_config = parent_metadata.get("train_config") or {}
    same_draw = (config.calibration_days == 0 and parent_config.get("calibration_days") == 0
                 and parent_config.get("holdout_fraction") == config.holdout_fraction
                 and parent_config.get("seed") == config.seed)
    if not same_draw:
        return []
    return [d for d in _days(first_day, parent_end) if d in available and d not in new_days]


def train(
    settings: Settings,
    start: date,
    end: date,
    eval_days: int = 1,
    warm_start: bool = True,
    train_config=None,
    model_overrides: dict[str, Any] | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Train a candidate on start..end, evaluate it on the `eval_days` days after `end`, register it.

    warm_start: continue from the serving model on the days after the ones it was trained on (at
    least `end`); without a serving model (or with warm_start False) a full retrain on start..end.
    """
    from training.ranker import data
    from training.ranker.checkpoint import load_checkpoint, save_checkpoint
    from training.ranker.model import RankerConfig
    from training.ranker.report import write_training_report
    from training.ranker.train import quality_config, train_ranker

    if end < start:
        raise ValueError(f"ranker train: end {end} is before start {start}")
    training_set = _training_set(settings)
    spec = data.read_spec(training_set)
    available = set(data.available_days(training_set))
    missing = [d for d in _days(start, end) if d not in available]
    if missing:
        raise FileNotFoundError(f"{training_set}: no training-set partition for {', '.join(map(str, missing))}")
    train_config = train_config or quality_config()

    parent = serving_tag(settings) if warm_start else None
    warm_model, days, first_day, holdout_days = None, _days(start, end), start, []
    full_reason = None if parent is not None or not warm_start else "no serving model to warm-start from"
    if parent is not None:
        stored = stored_model(settings, parent)
        warm_model = load_checkpoint(Path(stored.path))
        first_day = date.fromisoformat(stored.info.metadata["train_start"])
        parent_end = date.fromisoformat(stored.info.metadata["train_end"])
        days = _days(max(parent_end + timedelta(days=1), start), end) if parent_end < end else [end]
        if warm_model.config != RankerConfig.from_spec(spec, **_architecture(warm_model.config, model_overrides)):
            log.warning("serving model %s does not match the training-set spec: full retrain", parent)
            full_reason = (f"the serving model {parent} does not match the training set's spec (its features or "
                           "architecture changed)")
            warm_model, parent, days, first_day = None, None, _days(start, end), start
        else:
            holdout_days = _shared_holdout_days(stored.info.metadata, train_config, first_day, parent_end,
                                                available, days)
    model_config = RankerConfig.from_spec(spec, **(model_overrides or {})) if warm_model is None else None
    result = train_ranker(training_set, days, model_config, train_config, warm_model, on_step=on_step,
                          holdout_days=holdout_days)

    eval_range = [end + timedelta(days=i + 1) for i in range(eval_days)]
    eval_range = [d for d in eval_range if d in available]
    all_train_days = _days(min(first_day, start), end)
    metrics, by_day, evaluation = {}, {}, None
    if eval_range:
        evaluation = evaluate_model(settings, result.model, eval_range, all_train_days)
        metrics = {**evaluation.summary(), **served_auc(settings, result.model, eval_range)}
        for day in eval_range:
            by_day[day.isoformat()] = evaluate_model(settings, result.model, [day], all_train_days).auc
    elif eval_days:  # none asked for (eval_days 0): nothing to say
        log.warning("no training-set partition in the %d day(s) after %s to evaluate on; metrics left empty",
                    eval_days, end)

    metadata = {
        "train_start": min(first_day, start).isoformat(), "train_end": end.isoformat(),
        "trained_days": [d.isoformat() for d in days], "warm_start_from": parent,
        "eval_days": [d.isoformat() for d in eval_range], "metrics": metrics, "auc_by_day": by_day,
        "train_seconds": round(result.seconds, 3), "train_rows": result.rows,
        "samples_per_second": round(result.samples_per_second, 1), "train_config": asdict(train_config),
    }
    import bentoml

    from rankflow.model_store import file_sizes, registering

    with tempfile.TemporaryDirectory(prefix="rankflow-ranker-") as scratch, registering(settings):
        save_checkpoint(result.model, Path(scratch), metadata)
        with bentoml.models.create(
            MODEL_NAME, labels={"logical_date": end.isoformat(), "status": "candidate"},
            metadata=_jsonable({**metadata, "file_sizes": file_sizes(Path(scratch))}),
            _model_store=model_store(settings),
        ) as stored:
            for item in Path(scratch).iterdir():
                shutil.copy2(item, Path(stored.path) / item.name)
            tag = str(stored.tag)
    report = write_training_report(
        settings.paths.reports / "ranker" / tag.split(":")[1], tag, result.history, by_day, evaluation
    )
    trained_days_note = None  # why a warm start trained on fewer days than start..end
    if parent is not None and days != _days(start, end):
        newest = (f"on the days after its own ({first_day}..{parent_end}): {', '.join(map(str, days))}"
                  if parent_end < end else f"on the newest day {end} only (it was trained up to {parent_end} already)")
        trained_days_note = (f"a warm start trains {parent} further {newest}; a full retrain (--full) trains on "
                             f"{start}..{end}")
    return {"tag": tag, "warm_start_from": parent, "full_retrain_reason": full_reason,
            "trained_days": metadata["trained_days"],
            "trained_days_note": trained_days_note, "eval_days": metadata["eval_days"],
            "train_seconds": metadata["train_seconds"], "samples_per_second": metadata["samples_per_second"],
            "metrics": metrics, "report": str(report)}


def _architecture(config, overrides: dict[str, Any] | None) -> dict[str, Any]:
    """The architecture fields of `config` (so a spec-built config can be compared with it)."""
    from training.ranker.model import RankerConfig

    inputs = {"sparse_features", "sparse_buckets", "bag_features", "bag_buckets", "dense_features", "vector_features",
              "position_feature"}
    values = {k: v for k, v in config.to_dict().items() if k not in inputs}
    values.update(overrides or {})
    values["id_buckets"] = config.sparse_buckets[0]
    values["categorical_buckets"] = config.sparse_buckets[2] if len(config.sparse_buckets) > 2 else (
        config.bag_buckets[0] if config.bag_buckets else RankerConfig().sparse_buckets[1])
    return values


def _jsonable(values: Any) -> Any:
    """JSON types only, with None left out (BentoML rejects None in metadata)."""
    values = json.loads(json.dumps(values, default=str))

    def clean(item: Any) -> Any:
        if isinstance(item, dict):
            return {k: clean(v) for k, v in item.items() if v is not None}
        if isinstance(item, list):
            return [clean(v) for v in item if v is not None]
        return item

    return clean(values)


def reconcile_labels(settings: Settings) -> list[str]:
    """Make the ranker models' `status` labels say what serving.json says; the changes made ("tag: old -> new").

    The tag serving.json names is `serving`. Any other model still labelled `serving` was switched away from
    by a promote or rollback whose label update did not happen: `candidate` (replaced_by the next one) when
    it is in the history (a promotion replaced it), else `rejected` (a rollback left it).
    """
    from rankflow.model_store import complete_models

    state = serving_state(settings).get(MODEL_NAME, {})
    current, history = state.get("tag"), list(state.get("history", []))
    chain = [current, *history]  # newest first: chain[i - 1] replaced chain[i]
    changes = []
    for model in complete_models(settings, MODEL_NAME):
        tag, status = str(model.tag), model.info.labels.get("status")
        if tag == current and status != "serving":
            _relabel(settings, tag, "serving")
            changes.append(f"{tag}: {status} -> serving")
        elif tag != current and status == "serving":
            if tag in history:
                newer = chain[chain.index(tag) - 1]
                _relabel(settings, tag, "candidate", **({"replaced_by": newer} if newer else {}))
                changes.append(f"{tag}: serving -> candidate")
            else:
                _relabel(settings, tag, "rejected", rejection_reason="rolled back")
                changes.append(f"{tag}: serving -> rejected")
    if changes:
        log.warning("%s: status labels brought in line with it (an earlier promote or rollback was cut short "
                    "after switching): %s", settings.paths.models / SERVING_FILE, "; ".join(changes))
    return changes


def _label_switch(settings: Settings, labels: dict[str, tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """After serving.json switched: set these labels ({tag: (status, metadata)}); a failure is reported, not raised.

    The switch has happened and stays; the labels follow at the next promote or rollback (reconcile_labels).
    """
    try:
        for tag, (status, metadata) in labels.items():
            _relabel(settings, tag, status, **metadata)
    except Exception as error:  # the pointer is the truth: say what happened instead of failing a done switch
        message = (f"{type(error).__name__}: {error}; {settings.paths.models / SERVING_FILE} switched all the same, "
                   "and the next promote or rollback brings the labels in line")
        log.warning("status labels not updated: %s", message)
        return {"labels_error": message}
    return {}


def promote(settings: Settings, tag: str, policy: PromotionPolicy = PromotionPolicy()) -> dict[str, Any]:
    """Make `tag` the serving model if it beats the current one on the same evaluation day by the margin.

    Both models are scored afresh on the candidate's first evaluation day. Otherwise the candidate
    is labelled `rejected` with the reason, and the serving model stays as it is. Labels left out of line
    by an earlier cut-short promote or rollback are reconciled first (`labels_reconciled` in the result).
    A promotion writes serving.json first, then the labels: when the label update fails the result still
    says `serving` (the switch happened) with `labels_error`.
    """
    candidate_model, candidate = _load_model(settings, tag)
    tag = str(candidate.tag)
    reconciled = reconcile_labels(settings)
    noted = {"labels_reconciled": reconciled} if reconciled else {}
    current = serving_tag(settings)
    history = serving_state(settings).get(MODEL_NAME, {}).get("history", [])
    if current == tag:
        return {"tag": tag, "status": "serving", "reason": "already serving", **noted}
    eval_days = candidate.info.metadata.get("eval_days") or []
    useless = policy.useless(candidate.info.metadata.get("metrics") or {})
    if current is None and useless is not None:  # nothing to compare with: the floor alone decides
        reason = f"its evaluation on {', '.join(eval_days)}: {useless}"
        _relabel(settings, tag, "rejected", rejection_reason=reason)
        return {"tag": tag, "status": "rejected", "reason": reason, "serving": current, **noted}
    if current is None:
        _write_serving(settings, MODEL_NAME, tag, history)
        labelled = _label_switch(settings, {tag: ("serving", {"promoted_at": datetime.now(timezone.utc).isoformat()})})
        return {"tag": tag, "status": "serving", "reason": "no model was serving", **noted, **labelled}
    if not eval_days:
        reason = "candidate has no evaluation day (no training-set partition after its last training day)"
        _relabel(settings, tag, "rejected", rejection_reason=reason)
        return {"tag": tag, "status": "rejected", "reason": reason, "serving": current, **noted}

    day = date.fromisoformat(eval_days[0])
    serving_model, serving = _load_model(settings, current)
    ours = evaluate_model(settings, candidate_model, [day], _train_days(candidate.info.metadata)).summary()
    theirs = evaluate_model(settings, serving_model, [day], _train_days(serving.info.metadata)).summary()
    ours_value, theirs_value = ours[policy.metric], theirs[policy.metric]
    comparison = {"day": day.isoformat(), "metric": policy.metric, "candidate": ours_value,
                  "serving": theirs_value, "margin": policy.margin, "serving_tag": current}
    beats = ours_value is not None and theirs_value is not None and ours_value >= theirs_value + policy.margin
    useless = policy.useless(ours) if beats else None  # beating a serving model that is itself useless is not enough
    if beats and useless is None:
        _write_serving(settings, MODEL_NAME, tag, [current, *history])
        labelled = _label_switch(settings, {current: ("candidate", {"replaced_by": tag}),
                                            tag: ("serving", {"promotion": _jsonable(comparison)})})
        return {"tag": tag, "status": "serving",
                "reason": f"{policy.metric} {ours_value:.4f} >= {theirs_value:.4f} + {policy.margin}",
                **comparison, **noted, **labelled}
    reason = f"on {day}: {useless}" if useless else (
        f"{policy.metric} {ours_value:.4f} on {day} does not beat the serving model's {theirs_value:.4f} by the "
        f"margin {policy.margin}")
    _relabel(settings, tag, "rejected", rejection_reason=reason, promotion=_jsonable(comparison))
    return {"tag": tag, "status": "rejected", "reason": reason, **comparison, **noted}


def rollback(settings: Settings) -> dict[str, Any]:
    """Serve the previous serving model again; the one serving now is labelled rejected.

    Like promote: labels reconciled first, serving.json switched, then the labels (`labels_error` when that fails).
    """
    reconciled = reconcile_labels(settings)
    state = serving_state(settings).get(MODEL_NAME, {})
    history = list(state.get("history", []))
    if not history:
        raise ValueError(f"{settings.paths.models / SERVING_FILE}: no previous {MODEL_NAME} to roll back to")
    previous, current = history.pop(0), state.get("tag")
    _write_serving(settings, MODEL_NAME, previous, history)
    labels = {current: ("rejected", {"rejection_reason": "rolled back"})} if current else {}
    labelled = _label_switch(settings, {**labels, previous: ("serving", {})})
    return {"tag": previous, "status": "serving", "rolled_back": current,
            **({"labels_reconciled": reconciled} if reconciled else {}), **labelled}
