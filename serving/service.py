"""rankflow's BentoML service: POST /rank -> top-k jobs for a member, with flags and versions.

Two services, started together by `bentoml serve serving.service:Ranking` (`rankflow serve`):
- `Ranking` (HTTP front): validates the request (schemas.py), reads member and candidate features from
  the Feast online store under a deadline (online.py), assembles the model inputs and the random-effect
  offsets (scoring.py), and sends the rows to the scorer;
- `Scorer`: scores rows with the calibrated ranker. Its `score_batch` API is batchable: BentoML's adaptive
  batching merges the rows of concurrent requests into one forward pass (`score` is the same without
  batching, for comparison: ServingConfig.adaptive_batching).
Settings and ServingConfig are read once, here, at import (RANKFLOW_DATA_DIR etc., set by `rankflow serve`).
Health: /livez, /readyz (models loaded and the feature store answering); metrics: /metrics.
"""

from __future__ import annotations

import asyncio
import time

import bentoml
import numpy as np
import pandas as pd

from rankflow.config import load_settings
from rankflow.logs import configure_logging, get_logger
from serving.config import load_serving_config
from serving.schemas import RankResponse, rank_request_model

configure_logging()
log = get_logger("serving.service")
SETTINGS = load_settings()
CONFIG = load_serving_config(SETTINGS)
RankRequest = rank_request_model(CONFIG.max_candidates)

# Adaptive batching bounds. A batch item is one request's rows (a one-element list of DataFrames:
# BentoML 1.4.39's DataFrame container reports a tuple as batch size, so DataFrames cannot be batched
# directly), so max_batch_size counts requests. max_latency_ms is the dispatcher's give-up time (a queued
# request older than it is refused with 503), not a wait target: BentoML learns how long to wait from the
# measured batch times; keep it far above the normal latency.
MAX_BATCH_REQUESTS = 64
MAX_LATENCY_MS = 5_000
RANKER_TAG, RE_OFFSET = "__ranker_tag", "__re_offset"


@bentoml.service(name="rankflow-scorer", workers=1, threads=1, traffic={"timeout": 30})
class Scorer:
    """Calibrated ranker scores for assembled rows, merged across concurrent requests."""

    def __init__(self) -> None:
        import torch

        from serving.models import ModelRegistry

        torch.set_num_threads(1)  # one core per process: the front and the scorer share the machine
        self.registry = ModelRegistry(SETTINGS, CONFIG.reload_check_seconds)
        self._batch_rows = None

    def _models_for(self, tag: str):
        from serving.models import load_models

        for models in (self.registry.current, self.registry.previous):
            if models is not None and models.ranker_tag == tag:
                return models
        self.registry.reload()  # the front already saw a newer promotion
        if self.registry.current.ranker_tag == tag:
            return self.registry.current
        return load_models(SETTINGS, {**self.registry.tags, "rankflow-ranker": tag})

    def _score(self, rows: pd.DataFrame) -> np.ndarray:
        from serving.scoring import combine, ranker_probabilities

        self.registry.maybe_reload()
        scores = np.empty(len(rows), dtype=np.float64)
        for tag, part in rows.groupby(RANKER_TAG, sort=False):
            models = self._models_for(tag)
            probabilities = ranker_probabilities(models.ranker, models.spec, part.drop(columns=[RANKER_TAG, RE_OFFSET]))
            offset = part[RE_OFFSET].to_numpy(dtype=np.float64)
            with_effects = combine(probabilities, np.nan_to_num(offset))
            scores[rows.index.get_indexer(part.index)] = np.where(np.isnan(offset), probabilities, with_effects)
        return scores

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH_REQUESTS, max_latency_ms=MAX_LATENCY_MS)
    def score_batch(self, requests: list[pd.DataFrame]) -> list[np.ndarray]:
        """The rows of many requests scored in one pass (adaptive batching); one score array per request."""
        if self._batch_rows is None:  # made on first use: after BentoML set up multiprocess metrics
            from serving.metrics import scored_batch_histogram

            self._batch_rows = scored_batch_histogram()
        rows = pd.concat(requests, ignore_index=True) if len(requests) > 1 else requests[0].reset_index(drop=True)
        self._batch_rows.observe(len(rows))
        scores = self._score(rows)
        bounds = np.cumsum([0, *(len(r) for r in requests)])
        return [scores[start:stop] for start, stop in zip(bounds[:-1], bounds[1:])]

    @bentoml.api
    def score(self, rows: pd.DataFrame) -> np.ndarray:
        """One request's rows, scored alone (adaptive batching off)."""
        return self._score(rows.reset_index(drop=True))


@bentoml.service(name="rankflow-ranking", workers=1, traffic={"timeout": 30},
                 metrics={"enabled": True, "namespace": "bentoml"})
class Ranking:
    """POST /rank {member_id, candidates, k?} -> the top k candidates with calibrated scores."""

    scorer = bentoml.depends(Scorer)

    def __init__(self) -> None:
        from features.store import feature_store
        from serving.metrics import ServingMetrics
        from serving.models import ModelRegistry
        from serving.online import OnlineFeatures

        self.registry = ModelRegistry(SETTINGS, CONFIG.reload_check_seconds)
        self.features = OnlineFeatures(feature_store(SETTINGS), CONFIG.feature_deadline_ms,
                                       CONFIG.candidate_cache_seconds, CONFIG.candidate_cache_size)
        self.metrics = ServingMetrics.create()
        self._served = None
        log.info("ranking service: data dir %s, online store %s, %s", SETTINGS.data_dir, SETTINGS.online_store, CONFIG)

    async def __is_ready__(self) -> bool:
        """Ready once the models are loaded and the feature store answers a read in time."""
        read = await self.features.read(0, [0])
        return self.registry.current is not None and not read.degraded

    async def _scores(self, rows: pd.DataFrame, models) -> np.ndarray:
        """Scores from the scorer; on a connection failure one retry, then the same function in this process.

        Scoring is idempotent, and a pooled keep-alive connection the scorer has just closed is an ordinary
        event under bursts: neither may turn into a 500 for the caller.
        """
        client = getattr(self.scorer, "to_async", None)
        for attempt in range(2):
            if client is None:
                break
            try:
                if CONFIG.adaptive_batching:
                    return np.asarray((await client.score_batch([rows]))[0])
                return np.asarray(await client.score(rows))
            except (OSError, ConnectionError, asyncio.TimeoutError, *_client_errors()) as error:
                log.warning("scorer call failed (attempt %d): %s: %s", attempt + 1, type(error).__name__, error)
        self.metrics.scorer_fallbacks.inc()
        from serving.scoring import combine, ranker_probabilities

        offset = rows[RE_OFFSET].to_numpy(dtype=np.float64)
        probabilities = ranker_probabilities(models.ranker, models.spec, rows.drop(columns=[RANKER_TAG, RE_OFFSET]))
        return np.where(np.isnan(offset), probabilities, combine(probabilities, np.nan_to_num(offset)))

    @bentoml.api(route="/rank", input_spec=RankRequest, output_spec=RankResponse)
    async def rank(self, member_id: int, candidates: list[int], k: int | None = None) -> RankResponse:
        from serving.scoring import candidate_frame, model_inputs, random_effect_offset, top_k

        started = time.perf_counter()
        self.registry.maybe_reload()
        models = self.registry.current  # one set for the whole request, even if a reload swaps it now
        if models is not self._served:
            self.metrics.reloads.inc(int(self._served is not None))
            self._served = models
        read = await self.features.read(member_id, candidates)
        self.metrics.feature_read_seconds.observe(read.seconds)
        frame = candidate_frame(member_id, read.member, read.jobs)
        rows = model_inputs(frame, models)
        offset = random_effect_offset(frame, models.random_effects)
        rows[RANKER_TAG] = models.ranker_tag
        rows[RE_OFFSET] = np.nan if offset is None else offset
        self.metrics.score_rows.observe(len(rows))
        scores = await self._scores(rows, models)
        best = top_k(np.asarray(candidates), scores, k or CONFIG.default_k)
        if read.degraded:
            self.metrics.count_degraded(read.degraded_reasons)
        if read.cold_start:
            self.metrics.cold_start.inc()
        self.metrics.request_seconds.observe(time.perf_counter() - started)
        return RankResponse(
            member_id=member_id,
            items=[{"item_id": item, "score": score, "rank": n + 1} for n, (item, score) in enumerate(best)],
            cold_start=read.cold_start, degraded=read.degraded, degraded_reasons=read.degraded_reasons,
            unknown_candidates=read.unknown_candidates,
            versions={"models": models.versions(), "feature_views": self.features.versions})

    @bentoml.api(route="/features", input_spec=RankRequest)
    async def features_read(self, member_id: int, candidates: list[int], k: int | None = None) -> dict:
        """The features /rank would read for this request, as read (training/serving skew checks)."""
        read = await self.features.read(member_id, candidates)
        jobs = read.jobs.astype(object).where(read.jobs.notna(), None)
        return {"member_id": member_id, "member": _jsonable(read.member), "jobs": _jsonable(jobs.to_dict("records")),
                "cold_start": read.cold_start, "degraded": read.degraded, "degraded_reasons": read.degraded_reasons}


def _client_errors() -> tuple[type[BaseException], ...]:
    import aiohttp

    return (aiohttp.ClientError,)


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
