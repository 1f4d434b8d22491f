"""Which model versions serve, loaded from the BentoML model store, and swapped in without downtime.

Resolution (docs/contracts.md, "Model store"):
- ranker: the tag `models/serving.json` names for `rankflow-ranker` (promotion writes it; required);
- GLMix: the `rankflow-glmix` tag serving.json names, else the newest stored one by `logical_date`
  (the personalisation stage stores one per day); its meta.json gives the design bases;
- meta-initialisation: likewise for `rankflow-meta`; its head weights, flattened, are the meta embedding
  of a member with no history.
A version a killed save left incomplete is moved out of the store and never resolved (rankflow.model_store).

The ranker's input layout comes from its own checkpoint config (the spec it was trained on), so a
training-set spec that changed later cannot silently feed it different columns.

`ModelRegistry` holds the loaded set; `maybe_reload()` (cheap, called per request) looks at the tags at
most every `check_seconds`, and when they changed loads the new set in a background thread while the old
one keeps serving, then swaps the reference (one assignment: a request sees either set, never a mix).
The previous set stays available (`previous`) and the previous tags stay in serving.json's history for
`rankflow serve rollback`.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from rankflow.config import Settings
from rankflow.logs import get_logger
from rankflow.paths import read_json
from serving.scoring import MetaInit, RandomEffects, ServingModels

log = get_logger(__name__)

RANKER, GLMIX, META = "rankflow-ranker", "rankflow-glmix", "rankflow-meta"


class NoServingModel(FileNotFoundError):
    """No ranker has been promoted in this data directory yet (a missing prerequisite, like a missing day)."""


def _store(settings: Settings):
    from rankflow.stages.ranker import model_store

    return model_store(settings)


def _newest(settings: Settings, name: str) -> str | None:
    """The newest complete, not rejected stored version of `name` by `logical_date`, then creation time."""
    from rankflow.model_store import complete_models

    models = [m for m in complete_models(settings, name) if m.info.labels.get("status") != "rejected"]
    if not models:
        return None
    newest = max(models, key=lambda m: (m.info.labels.get("logical_date", ""), m.info.creation_time))
    return str(newest.tag)


def resolve_tags(settings: Settings) -> dict[str, str | None]:
    """The tags that should serve now: {rankflow-ranker, rankflow-glmix, rankflow-meta} -> tag or None.

    Incomplete versions (a save cut short, rankflow.model_store) are moved out of the store first when no
    save is in progress, and are never resolved: a pinned GLMix / meta version that is incomplete gives way
    to the newest complete one; an incomplete serving ranker is an error (roll back to the previous one).
    """
    from rankflow.model_store import incomplete_reason, sweep_incomplete
    from rankflow.stages.ranker import serving_state

    sweep_incomplete(settings)
    state = serving_state(settings)
    ranker = state.get(RANKER, {}).get("tag")
    serving_json = settings.paths.models / "serving.json"
    if not ranker:
        raise NoServingModel(f"{serving_json}: no serving {RANKER}; "
                             f"train and promote one first (`rankflow train --promote`)")
    reason = incomplete_reason(settings, ranker)
    if reason is not None:
        raise NoServingModel(f"{serving_json}: the serving {ranker} cannot be loaded: {reason}; "
                             f"`rankflow rollback` serves the previous one, or promote another")
    tags = {RANKER: ranker}
    for name in (GLMIX, META):
        pinned = state.get(name, {}).get("tag")
        reason = incomplete_reason(settings, pinned) if pinned else None
        if reason is not None:
            log.warning("%s: pinned %s cannot be loaded (%s); the newest complete %s serves instead",
                        serving_json, pinned, reason, name)
        tags[name] = pinned if pinned and reason is None else _newest(settings, name)
    return tags


def spec_of(config, member: str = "member_id", item: str = "item_id") -> dict[str, Any]:
    """The training-set spec a ranker was built from (RankerConfig.from_spec, inverted)."""
    ids = {member, item}
    return {"label": "label", "weight": "weight", "member": member, "item": item,
            "categorical": [c for c in config.sparse_features if c not in ids],
            "multi_valued": list(config.bag_features), "dense": list(config.dense_features),
            "embeddings": {name: int(width) for name, width in config.vector_features}}


def load_ranker(settings: Settings, tag: str):
    """(model in eval mode, spec, resolved tag) of a stored ranker."""

    from training.ranker.checkpoint import load_checkpoint

    stored = _store(settings).get(tag)
    model = load_checkpoint(Path(stored.path), device="cpu", sparse_gradients=False).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    # Scoring runs under torch.inference_mode() where it happens; never switch autograd off process-wide
    # (the service's process only scores, but tests and the CLI load rankers beside training code).
    return model, spec_of(model.config), str(stored.tag)


def load_random_effects(settings: Settings, tag: str | None) -> RandomEffects | None:
    if tag is None:
        return None
    import torch

    from training.glmix.design import CategoricalBasis
    from training.glmix.random_effects import RandomEffectConfig

    stored = _store(settings).get(tag)
    meta_path = Path(stored.path) / "meta.json"
    if not meta_path.exists():
        log.warning("%s has no meta.json (design bases): random effects not used", tag)
        return None
    meta = read_json(meta_path)
    member_basis = CategoricalBasis.from_json(meta["member_basis"])
    job_basis = CategoricalBasis.from_json(meta["job_basis"])
    prior = lambda dim: RandomEffectConfig(dim=dim).population_mean(torch.float64, "cpu").numpy()  # noqa: E731
    variance = lambda dim: 1.0 / RandomEffectConfig(dim=dim).population_precision(torch.float64, "cpu").numpy()  # noqa: E731
    return RandomEffects(member_basis, job_basis, prior(member_basis.dim), prior(job_basis.dim), str(stored.tag),
                         variance(member_basis.dim), variance(job_basis.dim))


def load_meta_init(settings: Settings, tag: str | None) -> MetaInit | None:
    if tag is None:
        return None
    from training.meta.state import load_state
    from training.meta.subnetwork import flatten_params

    stored = _store(settings).get(tag)
    net, _, _ = load_state(Path(stored.path))
    embedding = flatten_params(net.head_params()).detach().cpu().numpy().astype(np.float32)
    return MetaInit(embedding, str(stored.tag))


def load_models(settings: Settings, tags: dict[str, str | None] | None = None) -> ServingModels:
    """Load the resolved (or given) versions from the model store."""
    tags = tags or resolve_tags(settings)
    ranker, spec, ranker_tag = load_ranker(settings, tags[RANKER])
    effects = load_random_effects(settings, tags.get(GLMIX))
    meta = load_meta_init(settings, tags.get(META)) if META_EMBEDDING_INPUT in spec["embeddings"] else None
    return ServingModels(ranker, spec, ranker_tag, effects, meta)


META_EMBEDDING_INPUT = "meta_embedding"


class ModelRegistry:
    """The serving set of models, reloaded in the background when the serving tags change."""

    def __init__(self, settings: Settings, check_seconds: float = 5.0):
        self.settings = settings
        self.check_seconds = check_seconds
        self.tags = resolve_tags(settings)
        self.current = load_models(settings, self.tags)
        self.previous: ServingModels | None = None
        self._checked = time.monotonic()
        self._loading = threading.Lock()
        log.info("serving %s", self.current.versions())

    def maybe_reload(self) -> None:
        """Start a background reload when the tags changed (checked at most every `check_seconds`)."""
        now = time.monotonic()
        if now - self._checked < self.check_seconds or self._loading.locked():
            return
        self._checked = now
        threading.Thread(target=self.reload, name="rankflow-model-reload", daemon=True).start()

    def reload(self) -> bool:
        """Load the newly resolved versions (if any changed) and swap them in; True when swapped."""
        if not self._loading.acquire(blocking=False):
            return False
        try:
            tags = resolve_tags(self.settings)
            if tags == self.tags:
                return False
            loaded = load_models(self.settings, tags)
            self.previous, self.current, self.tags = self.current, loaded, tags
            log.info("reloaded: now serving %s", loaded.versions())
            return True
        except Exception:  # a broken new version must not take the serving one down
            log.exception("model reload failed; still serving %s", self.current.versions())
            return False
        finally:
            self._loading.release()
