"""Stage: the daily GLMix update of member and job random effects (Lambda Learner's sequential Bayes).

update_random_effects(settings, D):
1. reads D's training set (features/training_set/dt=D + spec.json): labels, weights, the dense features
   of the global part, and the categorical attributes that make the design vectors
   phi(job) = [1, onehot(j_industry), onehot(j_seniority)] (member effects) and phi(member) (job effects);
2. prior = the newest GLMix state strictly before D in <data_dir>/models/glmix/dt=*/ (so re-running D, or
   backfilling it after later days exist, gives the same answer), or the population prior;
3. global part: the serving ranker's logit (`ranker_logit`: the promoted ranker, if it was trained on days
   strictly before D), else the fixed-effect logistic regression refit on D's dense features (warm-started,
   random effects as offsets); meta.json records which, the ranker's tag and why;
4. the batched Laplace update (training.glmix), validated (validation.check_personalisation: no NaN ever
   reaches the store), then written: features glmix_member / glmix_job through features.store.write_features
   (offline partition + online store, newest value wins), the day's BentoML model `rankflow-glmix` (one per
   day: a re-run reuses or replaces it), and last models/glmix/dt=D/ (safetensors + JSON, atomic): the state
   later days start from, so a day with a state is a fully published day.

A day D is refused, before any write, when an earlier day has a training set but no state while an older state
exists (check_no_skipped_day): D would silently start from the older state and the skipped day's random effects
would never be published. The error names the day(s) and the `rankflow personalise` command to run first.

Retention (`glmix_keep_days` in rankflow.yaml, RANKFLOW_GLMIX_KEEP_DAYS, or `rankflow prune`): after each day
only the newest N states and their BentoML models are kept (prune_states; a model serving.json names stays).
A d x d precision per entity makes a state large (0.67 GB a day at 100x the demo). A day whose prior was
deleted is then refused (check_prior_kept) rather than started from an older state.

Bad rows (a NaN / inf dense feature or offset, a label not 0 or 1, a weight not finite and > 0) are dropped by
the library's one rule (training.glmix.random_effects.unusable_events) and reported per reason and column; a
day with no usable row carries the prior state forward unchanged under D and publishes nothing
(update_random_effects says how, and in what order it writes).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from rankflow.config import Settings
from rankflow.errors import MissingInput, PriorDeleted
from rankflow.logs import get_logger
from rankflow.model_store import register_daily_model
from rankflow.paths import (atomic_directory, atomic_write_bytes, dt_partition, partition_days, read_json,
                            remove_directory, sweep_leftovers)

log = get_logger(__name__)

MODEL_NAME = "rankflow-glmix"
STATE_DIR = "glmix"
MEMBER_VIEW, JOB_VIEW = "glmix_member", "glmix_job"
PRUNED_FILE = "pruned.json"  # in models/glmix: which states retention deleted (prune_states)


@dataclass(frozen=True)
class PersonaliseConfig:
    """Model choices of the daily update (defaults match the synthetic marketplace's scales)."""

    basis_attributes: tuple[str, ...] = ("industry", "seniority")  # m_<a> / j_<a> columns of the training set
    covariance: str = "full"
    member_forgetting: float = 1.0
    job_forgetting: float = 1.0
    member_prior_variance: float = 1.0
    job_prior_variance: float = 0.25
    passes: int = 2
    device: str = "cpu"


def state_root(settings: Settings) -> Path:
    return settings.paths.models / STATE_DIR


def state_days(settings: Settings) -> list[date]:
    """The logical days with a stored GLMix state, oldest first."""
    root = state_root(settings)
    return sorted(date.fromisoformat(p.name[3:]) for p in root.glob("dt=*") if (p / "meta.json").exists()) \
        if root.exists() else []


def prior_day(settings: Settings, day: date) -> date | None:
    """The newest logical day before `day` with a stored state (None: start from the population prior)."""
    earlier = [d for d in state_days(settings) if d < day]
    return earlier[-1] if earlier else None


def skipped_days(input_days: list[date], output_days: list[date], day: date) -> list[date]:
    """Days before `day` that have input but no output, after the newest output before `day`.

    A daily stage whose day D starts from the newest earlier output must not skip such a day: its output
    would never be made. Days before the first output are not skipped (the stage had not started yet).
    """
    earlier = [d for d in output_days if d < day]
    return [d for d in input_days if earlier[-1] < d < day] if earlier else []


def run_first(command: str, days: list[date]) -> str:
    """The command line(s) that run `days`, oldest first: one --date, a --start/--end range, or one per day."""
    if len(days) == 1:
        return f"`{command} --date {days[0]}`"
    if (days[-1] - days[0]).days == len(days) - 1:
        return f"`{command} --start {days[0]} --end {days[-1]}`"
    return ", then ".join(f"`{command} --date {d}`" for d in days)


def check_no_skipped_day(settings: Settings, day: date) -> None:
    """Refuse `day` when an earlier training-set day has no state after the newest earlier state (nothing written)."""
    from features.training_set import TABLE

    skipped = skipped_days(partition_days(settings.paths.feature_table(TABLE)), state_days(settings), day)
    if skipped:
        one = len(skipped) == 1
        raise MissingInput(
            f"glmix {day}: {', '.join(map(str, skipped))} {'has' if one else 'have'} a training set but no state in "
            f"{state_root(settings)} (never run, or failed before the state was stored), so {day} would start from "
            f"{prior_day(settings, day)}'s state and {'its' if one else 'their'} random effects would never be "
            f"published; nothing was written. Run {run_first('rankflow personalise', skipped)} first, then {day}")


def pruned_record(settings: Settings) -> dict | None:
    """models/glmix/pruned.json: {"first", "through", "keep", "days"} of the states retention deleted, or None."""
    path = state_root(settings) / PRUNED_FILE
    return read_json(path) if path.exists() else None


def pruned_prior(settings: Settings, day: date) -> str | None:
    """Why `day` cannot start from its prior state, when retention deleted it; None when it can.

    The prior is the newest stored state before `day`. It is the wrong one when a state that retention deleted
    (pruned.json's days, and not stored again since) lies between that one and `day`: `day` would start from an
    older state, or the population prior, instead of its own prior, a different chain of posteriors, silently.
    """
    record = pruned_record(settings)
    if record is None:
        return None
    stored = state_days(settings)
    previous = prior_day(settings, day)
    gone = [d for d in sorted(map(date.fromisoformat, record["days"]))
            if (previous is None or previous < d) and d < day and d not in stored]
    if not gone:
        return None
    after = next((d for d in stored if d > gone[-1]), None)
    rerun = f"stored days after {after} can be re-run" if after else "no stored state is left after them"
    return (f"glmix {day}: the state it starts from, {gone[-1]}'s, was deleted by retention "
            f"({state_root(settings) / PRUNED_FILE}: {', '.join(map(str, gone))} gone, the newest {record['keep']} "
            f"kept), so {day} would start from {previous or 'the population prior'} instead; nothing was written. "
            f"Of the {len(stored)} stored state(s), {rerun}; to re-run {day}, restore {gone[-1]}'s state into "
            f"{state_root(settings)} first")


def check_prior_kept(settings: Settings, day: date) -> None:
    """Refuse `day` (PriorDeleted, nothing written) when retention deleted the state it starts from (pruned_prior)."""
    reason = pruned_prior(settings, day)
    if reason is not None:
        raise PriorDeleted(reason)


def prune_states(settings: Settings, keep: int, dry_run: bool = False) -> dict[str, Any]:
    """Retention: keep the newest `keep` daily GLMix states, delete the older ones and their BentoML models.

    Kept: the newest `keep` states (models/glmix/dt=D) and every rankflow-glmix model that models/serving.json
    names (serving or in its history, for rollback). Order, so that a process killed at any step loses nothing
    it should keep and never lets a day start from the wrong prior: pruned.json is written first (from then on
    check_prior_kept refuses the days whose prior goes), then the models are deleted, then the state folders,
    each renamed aside whole before it is deleted (rankflow.paths.remove_directory). `dry_run`: only says what
    would go. `state_bytes`: the size of the state folders deleted; the disk space freed is that, once (the day's
    model shares the files: hard links), less what a model serving.json names keeps linked.
    """
    from rankflow.model_store import delete_daily_models

    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"glmix retention: keep must be a whole number of days >= 1, got {keep!r}")
    days = state_days(settings)
    gone = days[:-keep] if len(days) > keep else []
    root = state_root(settings)
    size = sum(f.stat().st_size for d in gone for f in (root / dt_partition(d)).iterdir() if f.is_file())
    result: dict[str, Any] = {"keep": keep, "kept": [d.isoformat() for d in days[len(gone):]],
                              "pruned": [d.isoformat() for d in gone], "state_bytes": size, "dry_run": dry_run,
                              "models_deleted": [], "models_pinned": []}
    if not dry_run and root.is_dir():
        sweep_leftovers(root)  # folders a killed prune had renamed aside: no later write of their day deletes them
    if not gone:
        return result
    if not dry_run:
        record = pruned_record(settings) or {}
        first = min([gone[0], *([date.fromisoformat(record["first"])] if record else [])])
        through = max([gone[-1], *([date.fromisoformat(record["through"])] if record else [])])
        atomic_write_bytes(root / PRUNED_FILE, json.dumps(
            {"first": first.isoformat(), "through": through.isoformat(), "keep": keep,
             "days": sorted({*record.get("days", []), *result["pruned"]})}, indent=2).encode())
    models = delete_daily_models(settings, MODEL_NAME, gone, dry_run=dry_run)
    result["models_deleted"], result["models_pinned"] = models["deleted"], models["pinned"]
    if not dry_run:
        for day in gone:
            remove_directory(root / dt_partition(day))
        log.info("glmix retention: deleted the states of %s..%s (%d, %.1f MB) and %d BentoML model(s); kept %s..%s%s",
                 gone[0], gone[-1], len(gone), size / 1e6, len(models["deleted"]), result["kept"][0],
                 result["kept"][-1], f"; {len(models['pinned'])} model(s) serving.json names were kept"
                 if models["pinned"] else "")
    return result


def load_state(settings: Settings, day: date):
    """(GLMixState, fixed effect or None, meta dict) stored for `day`."""
    import torch  # noqa: F401  (training.glmix needs it; import error names torch)

    from training.glmix.fixed_effect import FixedEffectModel
    from training.glmix.model import GLMixState
    from training.glmix.state import decode_state

    folder = state_root(settings) / dt_partition(day)
    meta = read_json(folder / "meta.json")
    member, _ = decode_state((folder / "member.safetensors").read_bytes(), str(folder / "member.safetensors"))
    job, _ = decode_state((folder / "job.safetensors").read_bytes(), str(folder / "job.safetensors"))
    fixed = FixedEffectModel.from_json(meta["fixed_effect"]) if meta.get("fixed_effect") else None
    return GLMixState(member, job), fixed, meta


@dataclass(frozen=True)
class GlobalPart:
    """The offset of the random-effect update: the serving ranker's logit, or None (fixed effect)."""

    offsets: np.ndarray | None
    ranker_tag: str | None
    reason: str

    @property
    def kind(self) -> str:
        return "ranker" if self.offsets is not None else "fixed_effect"


def ranker_logit(settings: Settings, day: date, frame) -> GlobalPart:
    """The serving ranker's logit per training row of `day` (GLMix's global part, an offset), when usable.

    The offset is what serving adds the random effects to (serving.scoring: logit of the calibrated,
    clipped ranker probability), so the effects learn the residual of exactly that score. Rows are encoded
    by the ranker's own training-set reader (training.ranker.data.load_rows on D's partition, as ranker
    evaluation does) and scored by training.ranker.train.predict_logits. A ranker trained on D or later
    is not used (its logit has seen D's labels, so the random effects would learn almost nothing from D):
    the fixed effect is fitted instead, and the reason is recorded.
    """
    from rankflow.stages.ranker import model_info, serving_tag
    from serving.models import load_ranker

    tag = serving_tag(settings)
    if tag is None:
        return GlobalPart(None, None, "no serving rankflow-ranker in models/serving.json")
    train_end = model_info(settings, tag)["metadata"].get("train_end")
    if train_end is None or date.fromisoformat(train_end) >= day:
        return GlobalPart(None, tag, f"serving ranker {tag} was trained on days up to {train_end}, "
                                     f"not strictly before {day}")
    model, _, tag = load_ranker(settings, tag)
    return GlobalPart(ranker_offsets(settings, model, day, frame), tag, f"serving ranker {tag} (trained up to {train_end})")


def ranker_offsets(settings: Settings, model, day: date, frame) -> np.ndarray:
    """logit of `model`'s calibrated, clipped probability (serving.scoring.global_logit) per row of `frame`.

    `frame` is `day`'s training-set partition as read_training_set gives it; the ranker's own reader must
    give the same rows in the same order (checked by member id), or the offsets would land on other rows.
    """
    import torch

    from serving.scoring import global_logit
    from training.ranker import data
    from training.ranker.train import predict_logits

    training_set = settings.paths.feature_table("training_set")
    files = data.day_files(training_set, [day])
    rows = data.load_rows(files, data.read_spec(training_set), model.config)
    member_column = data.read_spec(training_set).get("member", "member_id")
    if len(rows) != len(frame) or not np.array_equal(rows.member_id.numpy(), frame[member_column].to_numpy(np.int64)):
        raise RuntimeError(f"{files[0].parent}: the ranker's reader gave {len(rows)} rows in another order than "
                           f"the {len(frame)} rows read for GLMix")
    with torch.inference_mode():
        logits = predict_logits(model, rows).to(model.calibration.knots.device)
        probabilities = model.calibration(logits).double().cpu().numpy()
    return global_logit(probabilities)


def basis_from_raw(settings: Settings, day: date, attributes: tuple[str, ...]):
    """Vocabulary of the attributes over every member and job that arrived up to `day` (raw zone).

    Members and jobs share it (a member's industry and a job's industry are one vocabulary), so a value
    seen so far on one side only still gets its coefficient on the other. Only the wanted attributes that
    both tables declare categorical (raw schema) enter; the others are named in a warning. With none left
    the basis is the intercept alone: one bias per member and per job.
    Not from the training set: on the first days most rows there are cold (no features before D) and
    carry placeholders. The basis is fixed when the first state is made; later new values score as the
    intercept only (a changed basis needs a new state: its version is stored with every posterior).
    """
    from features.contract import load_raw_schema, read_raw
    from training.glmix.design import CategoricalBasis

    schema = load_raw_schema(settings.paths)
    shared = [a for a in attributes if a in schema.members.categorical and a in schema.items.categorical]
    missing = {table: [a for a in attributes if a not in entity.categorical]
               for table, entity in (("members", schema.members), ("items", schema.items))}
    if len(shared) < len(attributes):
        log.warning("GLMix basis: %s not categorical in both raw tables (%s); random effects over %s",
                    [a for a in attributes if a not in shared],
                    "; ".join(f"{table} lacks {names}" for table, names in missing.items() if names),
                    ["intercept", *shared])
    vocabularies: dict[str, set[str]] = {a: set() for a in shared}
    for table in ("members", "items"):
        entities = read_raw(settings.paths, table, end=day)
        for attribute in shared:
            vocabularies[attribute].update(str(v) for v in entities[attribute].dropna().unique())
    return CategoricalBasis.from_vocabularies({a: sorted(values) for a, values in vocabularies.items()})


def _design(frame, prefix: str, basis) -> np.ndarray:
    return basis.design({attribute: frame[f"{prefix}{attribute}"].to_numpy(dtype=object)
                         for attribute, _ in basis.columns}, rows=len(frame))


def check_training_set_exists(settings: Settings, day: date) -> dict:
    """spec.json, once it and `day`'s partition exist; else FileNotFoundError naming what is missing."""
    from features.contract import PART_FILE
    from features.training_set import TABLE, read_spec

    spec = read_spec(settings)
    if not (settings.paths.feature_partition(TABLE, day) / PART_FILE).exists():
        raise _no_training_set(settings, day)
    return spec


def _no_training_set(settings: Settings, day: date) -> FileNotFoundError:
    return FileNotFoundError(f"{settings.paths.feature_partition('training_set', day)}: no training set for {day}; "
                             f"run `rankflow features build --date {day}` first")


def read_training_set(settings: Settings, day: date, columns: list[str] | None = None):
    """(`day`'s training-set partition as pandas, spec.json); only `columns` (those the partition has) when
    given: bags and strings the caller does not read are never made Python objects."""
    from features.training_set import TABLE
    from features.store import read_offline_partition

    spec = check_training_set_exists(settings, day)
    frame = read_offline_partition(settings.paths, TABLE, day, columns=columns)
    if frame is None:  # gone since the check
        raise _no_training_set(settings, day)
    return frame, spec


def glmix_columns(spec: dict, member_basis, job_basis) -> list[str]:
    """The training-set columns a GLMix update reads: ids, label, weight, the dense features (the fixed
    effect's inputs) and the attributes of both designs (a member's effect is over job attributes)."""
    return [spec.get("member", "member_id"), spec.get("item", "item_id"), spec.get("label", "label"),
            spec.get("weight", "weight"), *spec.get("dense", []),
            *(f"j_{attribute}" for attribute, _ in member_basis.columns),
            *(f"m_{attribute}" for attribute, _ in job_basis.columns)]


def _feature_frame(ids, key: str, state, rows, prefix: str, day: date):
    import pandas as pd

    mean = state.mean[rows].float().cpu().numpy()
    variance = state.variance_diagonal()[rows].float().cpu().numpy() if len(rows) else mean
    from features.contract import end_of_day

    stamp = pd.Timestamp(end_of_day(day))
    return pd.DataFrame({
        key: ids.astype("int64"),
        f"{prefix}_re_mean": list(mean.astype(np.float32)),
        f"{prefix}_re_variance": list(variance.astype(np.float32)),
        "event_timestamp": stamp,
        # Deterministic (end of the logical day) so that re-running a day is byte-identical.
        "created_ts": stamp,
    })


def glmix_config_for(config: PersonaliseConfig, member_basis, job_basis):
    """training.glmix's GLMixConfig for these stage settings and design bases."""
    from training.glmix.model import GLMixConfig
    from training.glmix.random_effects import RandomEffectConfig

    return GLMixConfig(
        member=RandomEffectConfig(dim=member_basis.dim, covariance=config.covariance,
                                  forgetting=config.member_forgetting, prior_variance=config.member_prior_variance),
        job=RandomEffectConfig(dim=job_basis.dim, covariance=config.covariance,
                               forgetting=config.job_forgetting, prior_variance=config.job_prior_variance),
        passes=config.passes)


def training_events(frame, spec: dict, member_basis, job_basis, offsets: np.ndarray | None):
    """GLMixEvents of the training-set rows: ids, both design matrices, labels, weights, global offsets."""
    import torch

    from training.glmix.model import GLMixEvents

    weight = spec.get("weight", "weight")
    return GLMixEvents(
        torch.as_tensor(frame[spec.get("member", "member_id")].to_numpy(np.int64)),
        torch.as_tensor(frame[spec.get("item", "item_id")].to_numpy(np.int64)),
        torch.as_tensor(_design(frame, "j_", member_basis)), torch.as_tensor(_design(frame, "m_", job_basis)),
        torch.as_tensor(frame[spec.get("label", "label")].to_numpy(np.float64)),
        torch.as_tensor(frame[weight].to_numpy(np.float64)) if weight in frame else None,
        None if offsets is None else torch.as_tensor(offsets, dtype=torch.float64))


def _prior(settings: Settings, day: date, config: PersonaliseConfig):
    """(prior day or None, prior GLMixState in float64, fixed effect or None, member basis, job basis)."""
    import torch

    from training.glmix.model import GLMixState

    previous = prior_day(settings, day)
    if previous is not None:
        prior, fixed_effect, prior_meta = load_state(settings, previous)
        member_basis = _basis_json(prior_meta["member_basis"])
        job_basis = _basis_json(prior_meta["job_basis"])
    else:
        member_basis = job_basis = basis_from_raw(settings, day, config.basis_attributes)
        prior, fixed_effect = None, None
    if prior is None:
        prior = GLMixState.empty(glmix_config_for(config, member_basis, job_basis), torch.float64, config.device)
    prior = GLMixState(prior.member.to(config.device, torch.float64), prior.job.to(config.device, torch.float64))
    return previous, prior, fixed_effect, member_basis, job_basis


def _dense_features(settings: Settings, day: date, frame, spec: dict) -> tuple[np.ndarray, list[str]]:
    """The fixed effect's inputs: the training set's dense columns (spec.json's "dense"), float64."""
    dense_names = list(spec.get("dense", []))
    missing = [c for c in (*dense_names, spec.get("member", "member_id"), spec.get("item", "item_id"),
                           spec.get("label", "label")) if c not in frame.columns]
    if missing:
        raise KeyError(f"{settings.paths.feature_partition('training_set', day)}: columns {missing} named in "
                       f"training_set/spec.json are missing (partition built with an older spec? rebuild the day)")
    dense = frame[dense_names].to_numpy(dtype=np.float64) if dense_names else np.zeros((len(frame), 0))
    return dense, dense_names


def _published_frames(state, events, keep, day: date):
    """Feature rows of the entities updated today: ids with a usable row that the new state holds.

    The other entities' stored values are still current, so they are not written again.
    """
    import torch

    frames = []
    for ids, side, key, prefix in ((events.member_ids, state.member, "member_id", "member"),
                                   (events.item_ids, state.job, "item_id", "job")):
        used = np.unique(ids[keep].numpy())
        rows, found = side.locate(torch.as_tensor(used))
        frames.append(_feature_frame(used[found.cpu().numpy()], key, side, rows[found], prefix, day))
    return frames


def _validate(settings: Settings, day: date, frames: dict) -> dict:
    """validation.check_personalisation of each view's rows to publish (raises ValidationFailed on a NaN)."""
    from validation import check_personalisation

    results = {}
    for view, frame in frames.items():
        key, prefix = ("member_id", "member") if view == MEMBER_VIEW else ("item_id", "job")
        results[view] = check_personalisation(view, frame, day, reports_dir=settings.paths.reports, key_column=key,
                                              vector_columns=[f"{prefix}_re_mean", f"{prefix}_re_variance"]).to_dict()
    return results


def _check_finite_state(state, day: date) -> None:
    """Refuse to store a state with a NaN / inf mean or precision (the published rows are validated by GX;
    this covers every entity of the state, precisions included)."""
    import torch

    for side, effects in (("member", state.member), ("job", state.job)):
        for name, tensor in (("mean", effects.mean), ("precision", effects.precision)):
            if tensor.numel() and not bool(torch.isfinite(tensor.sum())):  # one reduction; exact count only then
                bad = int((~torch.isfinite(tensor)).flatten(1).any(1).sum())
                if bad:
                    raise ValueError(f"glmix {day}: the {side} state has {bad} entities with a non-finite {name}; "
                                     f"nothing was written")


def _state_files(state, meta: dict, member_basis, job_basis, day: date) -> dict[str, bytes]:
    """The bytes of models/glmix/dt=D/: member.safetensors, job.safetensors, meta.json."""
    from training.glmix.state import encode_state

    files = {}
    for side, side_state, basis in (("member", state.member, member_basis), ("job", state.job, job_basis)):
        files[f"{side}.safetensors"] = encode_state(side_state, {"logical_date": day.isoformat(), "side": side,
                                                                 "basis_version": basis.version})
    files["meta.json"] = json.dumps(meta, indent=2).encode()
    return files


def update_random_effects(settings: Settings, day: date, config: PersonaliseConfig = PersonaliseConfig(),
                          write_online: bool = True) -> dict[str, Any]:
    """GLMix posterior update for logical day `day`; validates, then writes state, model store and features.

    Rows no update can use (training.glmix.random_effects.unusable_events: a NaN / inf dense feature or
    offset, a label not 0 or 1, a weight not finite and > 0) are dropped and counted: result["rows"] and a
    log line give the count per reason and per column. A day without a usable row changes no posterior: the
    state of `day` is the prior carried forward unchanged (meta.json and the result say
    `carried_forward`, with 0 events), it is stored and registered as any day's, and nothing is published
    to the feature views (no entity changed; the online store already holds its newest values).

    A day is refused before any write when an earlier training-set day has no state after the newest
    earlier state (check_no_skipped_day names it and the command to run first).

    Nothing half-written: everything that can fail on the data (the update, a finite state, the validation
    of the published rows, encoding the files, opening the feature store) runs before the first write.
    Then the feature views are written (offline partition atomic, online store newest-wins), the BentoML
    model is created whole before the day's older one goes, and last models/glmix/dt=D/ is swapped in whole
    (atomic_directory): the state is the commit point later days read, so a failure before it leaves no
    state of D, the next day is refused, and re-running D repeats the same writes. Re-running the day gives
    the same files (same prior: the newest state before D).
    """
    from training.glmix.model import update_day, usable_rows

    spec = check_training_set_exists(settings, day)  # said first, before the prior and the store are looked at
    check_no_skipped_day(settings, day)
    check_prior_kept(settings, day)
    if write_online:
        from features.store import check_online_store

        check_online_store(settings)  # a broken one: said now, not after the update and its validation report
    previous, prior, fixed_effect, member_basis, job_basis = _prior(settings, day, config)
    frame, spec = read_training_set(settings, day, glmix_columns(spec, member_basis, job_basis))
    glmix_config = glmix_config_for(config, member_basis, job_basis)
    dense, dense_names = _dense_features(settings, day, frame, spec)
    global_part = ranker_logit(settings, day, frame)
    log.info("glmix %s: global part %s: %s", day, global_part.kind, global_part.reason)
    events = training_events(frame, spec, member_basis, job_basis, global_part.offsets)
    rows = usable_rows(events, dense, dense_names)  # what update_day drops (handed to it), the report, the ids
    if rows.dropped:
        log.warning("glmix %s: %s", day, rows.describe())
    carried_forward = rows.used == 0
    state, fixed_effect, summary = update_day(prior, events, glmix_config, dense, dense_names, fixed_effect, rows)
    _check_finite_state(state, day)

    frames = {}
    if carried_forward:
        log.warning("glmix %s: no usable events (%d rows read); the state of %s is carried forward unchanged "
                    "and nothing is published", day, rows.read, previous or "the population prior")
    else:
        frames = dict(zip((MEMBER_VIEW, JOB_VIEW), _published_frames(state, events, rows.keep, day)))
    validation = _validate(settings, day, frames)

    meta = {"logical_date": day.isoformat(), "prior_date": previous.isoformat() if previous else None,
            "global_part": global_part.kind, "ranker_tag": global_part.ranker_tag,
            "global_part_reason": global_part.reason,
            "fixed_effect": fixed_effect.to_json() if fixed_effect is not None else None,
            "member_basis": member_basis.to_json(), "job_basis": job_basis.to_json(),
            "config": asdict(config), "summary": summary, "rows": rows.as_dict(),
            "carried_forward": carried_forward}
    files = _state_files(state, meta, member_basis, job_basis, day)
    publish = write_online and bool(frames)
    if publish:
        from features.store import feature_store, write_features

        feature_store(settings)  # render and apply the Feast repo now: a failure there writes nothing

    folder = state_root(settings) / dt_partition(day)
    with atomic_directory(folder) as staging:  # swapped in only when the block ends without an error
        for name, payload in files.items():
            (staging / name).write_bytes(payload)
        written = {view: write_features(settings, view, rows_of_view, day)
                   for view, rows_of_view in frames.items()} if publish else {}
        tag = register_daily_model(settings, MODEL_NAME, staging, day, {  # BentoML metadata: basic types only, no None
            "logical_date": day.isoformat(), "prior_date": meta["prior_date"] or "",
            "member_basis_version": member_basis.version, "job_basis_version": job_basis.version,
            "events_used": summary["member"]["events_used"], "events_dropped": summary["member"]["events_dropped"],
            "carried_forward": carried_forward})

    members_updated = len(frames[MEMBER_VIEW]) if frames else 0
    jobs_updated = len(frames[JOB_VIEW]) if frames else 0
    result = {"day": day.isoformat(), "prior_date": meta["prior_date"], "global_part": meta["global_part"],
              "ranker_tag": global_part.ranker_tag, "global_part_reason": global_part.reason,
              "members_updated": members_updated, "jobs_updated": jobs_updated,
              "member_basis_version": member_basis.version, "job_basis_version": job_basis.version,
              "rows": rows.as_dict(), "carried_forward": carried_forward,
              "summary": summary, "state": str(folder), "bentoml_tag": tag, "validation": validation,
              "written": written}
    log.info("glmix %s: %d of %d rows used, %d members, %d jobs updated (prior %s)", day, rows.used, rows.read,
             members_updated, jobs_updated, previous)
    # Retention, once the day is stored (an old day re-run is pruned too when newer states fill `keep`).
    if settings.glmix_keep_days is not None:
        result["retention"] = prune_states(settings, settings.glmix_keep_days)
    return result


def _basis_json(data: dict):
    from training.glmix.design import CategoricalBasis

    return CategoricalBasis.from_json(data)


def _stored_config(meta: dict) -> PersonaliseConfig:
    """The PersonaliseConfig a state was made with (fields this version does not know are ignored)."""
    known = {f.name for f in fields(PersonaliseConfig)}
    values = {k: v for k, v in meta.get("config", {}).items() if k in known}
    if "basis_attributes" in values:
        values["basis_attributes"] = tuple(values["basis_attributes"])
    return PersonaliseConfig(**values)


def served_random_effects(settings: Settings, day: date, frame, spec: dict) -> tuple[np.ndarray, date] | None:
    """beta_m . phi(j) + gamma_j . phi(m) per row of `day`'s training-set `frame`, and the state's day.

    The state is the newest one before `day` (prior_day): what the online store held while `day`'s events
    were served, never `day`'s own posterior, which has seen their labels. None when there is no such state, or
    when retention deleted it (pruned_prior: an older state is not what was served; a warning says so).
    Ids the state has not seen get the population mean, as in serving.
    """
    from training.glmix.model import random_effect_logit

    previous = prior_day(settings, day)
    if previous is None:
        return None
    pruned = pruned_prior(settings, day)
    if pruned is not None:  # the state the service held on `day` is gone: an older one would say something else
        log.warning("served random effects of %s: not computed: %s", day, pruned)
        return None
    state, _, meta = load_state(settings, previous)
    member_basis, job_basis = _basis_json(meta["member_basis"]), _basis_json(meta["job_basis"])
    config = glmix_config_for(_stored_config(meta), member_basis, job_basis)
    events = training_events(frame, spec, member_basis, job_basis, None)
    effects = random_effect_logit(state, config, events.member_ids, events.item_ids, events.member_design,
                                  events.job_design)
    return effects.cpu().numpy(), previous
