"""rankflow's BentoML service: POST /rank -> top-k jobs for a member, with flags and versions.

Two services, started together by `bentoml serve serving.service:Ranking` (`rankflow serve`):
- `Ranking` (HTTP front): validates the request (schemas.py), reads member and candidate features from
  the online store under a deadline (online.py: one Redis round trip, or Feast's SDK on other stores),
  encodes the ranker inputs and the random-effect offsets in numpy (encoding.py, cached per job), and
  scores them;
- `Scorer`: scores encoded rows with the calibrated ranker. Its `score_batch` API is batchable: BentoML's
  adaptive batching merges the rows of concurrent requests into one forward pass. With
  ServingConfig.adaptive_batching off the front scores each request itself (no second process hop).
Settings and ServingConfig are read once, here, at import (RANKFLOW_DATA_DIR etc., set by `rankflow serve`).
Health: /livez, /readyz (models loaded and the feature store answering); metrics: /metrics.
"""

from __future__ import annotations

import asyncio
import time

import bentoml
import numpy as np

from rankflow.config import load_settings
from rankflow.logs import configure_logging, get_logger
from serving.config import load_serving_config
from serving.schemas import RankResponse, rank_request_model

configure_logging()
log = get_logger("serving.service")
SETTINGS = load_settings()
CONFIG = load_serving_config(SETTINGS)
RankRequest = rank_request_model(CONFIG.max_candidates)

# Adaptive batching bounds. A batch item is one request's encoded rows (a one-element list of plain dicts
# of arrays, pickled between the processes with out-of-band buffers), so max_batch_size counts requests.
# max_latency_ms is the dispatcher's give-up time (a queued request older than it is refused with 503), not
# a wait target: BentoML learns how long to wait from the measured batch times; keep it far above the normal
# latency.
MAX_BATCH_REQUESTS = 64
MAX_LATENCY_MS = 5_000
RANKER_TAG = "ranker_tag"
# BentoML service options both services share: request tracing and access logs as configured
OBSERVABILITY = {"logging": {"access": {"enabled": CONFIG.access_log}},
                 **({} if CONFIG.trace_requests else {"tracing": {"excluded_urls": ["/rank", "/score_batch"]}})}


@bentoml.service(name="rankflow-scorer", workers=1, threads=1, traffic={"timeout": 30}, **OBSERVABILITY)
class Scorer:
    """Calibrated ranker scores for encoded rows, merged across concurrent requests."""

    def __init__(self) -> None:
        import torch

        from serving.models import ModelRegistry

        torch.set_num_threads(1)  # one core per process: the front and the scorer share the machine
        self.registry = ModelRegistry(SETTINGS, CONFIG.reload_check_seconds)
        self._batch_rows = None
        freeze_startup_heap()

    def _models_for(self, tag: str):
        from serving.models import load_models

        for models in (self.registry.current, self.registry.previous):
            if models is not None and models.ranker_tag == tag:
                return models
        self.registry.reload()  # the front already saw a newer promotion
        if self.registry.current.ranker_tag == tag:
            return self.registry.current
        return load_models(SETTINGS, {**self.registry.tags, "rankflow-ranker": tag})

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH_REQUESTS, max_latency_ms=MAX_LATENCY_MS)
    def score_batch(self, requests: list[dict]) -> list[np.ndarray]:
        """The rows of many requests scored in one pass per ranker (adaptive batching); one array per request."""
        from serving.encoding import EncodedRequest, score_requests

        if self._batch_rows is None:  # made on first use: after BentoML set up multiprocess metrics
            from serving.metrics import scored_batch_histogram

            self._batch_rows = scored_batch_histogram()
        self.registry.maybe_reload()
        encoded = [EncodedRequest.from_dict(r) for r in requests]
        self._batch_rows.observe(sum(len(e) for e in encoded))
        scores: list[np.ndarray | None] = [None] * len(requests)
        for tag in dict.fromkeys(r[RANKER_TAG] for r in requests):  # one forward pass per ranker version
            index = [i for i, r in enumerate(requests) if r[RANKER_TAG] == tag]
            for i, result in zip(index, score_requests(self._models_for(tag).ranker, [encoded[i] for i in index])):
                scores[i] = result
        return scores


@bentoml.service(name="rankflow-ranking", workers=1, traffic={"timeout": 30},
                 metrics={"enabled": True, "namespace": "bentoml"}, **OBSERVABILITY)
class Ranking:
    """POST /rank {member_id, candidates, k?, explore?} -> the top k candidates with calibrated scores."""

    scorer = bentoml.depends(Scorer)

    def __init__(self) -> None:
        import torch

        from features.store import feature_store
        from serving.metrics import ServingMetrics
        from serving.models import ModelRegistry
        from serving.online import OnlineFeatures

        torch.set_num_threads(1)  # it scores too (batching off, or the scorer unreachable)
        self.registry = ModelRegistry(SETTINGS, CONFIG.reload_check_seconds)
        self.features = OnlineFeatures(feature_store(SETTINGS), CONFIG.feature_deadline_ms,
                                       CONFIG.candidate_cache_seconds, CONFIG.candidate_cache_size)
        self.metrics = ServingMetrics.create()
        self._served = None
        self._explore_rng = np.random.default_rng()  # Thompson draws (requests run on the event loop's thread)
        freeze_startup_heap()
        log.info("ranking service: data dir %s, online store %s, %s", SETTINGS.data_dir, SETTINGS.online_store, CONFIG)

    async def __is_ready__(self) -> bool:
        """Ready once the models are loaded and the feature store answers a read in time."""
        read = await self.features.read(0, [0])
        return self.registry.current is not None and not read.degraded

    def _encoder(self, models):
        """The request encoder of this model set (its per-job cache lives and dies with the set)."""
        from serving.encoding import RequestEncoder

        encoder = models.extra.get("encoder")
        if encoder is None:
            encoder = models.extra["encoder"] = RequestEncoder(
                models, self.features.member_columns, self.features.job_columns, CONFIG.candidate_cache_size)
        return encoder

    async def _scores(self, encoded, models) -> np.ndarray:
        """Scores from the scorer (batching on); on a connection failure one retry, then in this process.

        Scoring is idempotent, and a pooled keep-alive connection the scorer has just closed is an ordinary
        event under bursts: neither may turn into a 500 for the caller.
        """
        from serving.encoding import score_requests

        client = getattr(self.scorer, "to_async", None) if CONFIG.adaptive_batching else None
        for attempt in range(2):
            if client is None:
                break
            try:
                payload = {**encoded.to_dict(), RANKER_TAG: models.ranker_tag}
                return np.asarray((await client.score_batch([payload]))[0])
            except (OSError, ConnectionError, asyncio.TimeoutError, *_client_errors()) as error:
                log.warning("scorer call failed (attempt %d): %s: %s", attempt + 1, type(error).__name__, error)
        if client is not None:
            self.metrics.scorer_fallbacks.inc()
        return score_requests(models.ranker, [encoded])[0]

    @bentoml.api(route="/rank", input_spec=RankRequest, output_spec=RankResponse)
    async def rank(self, member_id: int, candidates: list[int], k: int | None = None,
                   explore: bool = False) -> RankResponse:
        from serving.scoring import top_k

        started = time.perf_counter()
        self.registry.maybe_reload()
        models = self.registry.current  # one set for the whole request, even if a reload swaps it now
        if models is not self._served:
            self.metrics.reloads.inc(int(self._served is not None))
            self._served = models
        read = await self.features.read(member_id, candidates)
        self.metrics.feature_read_seconds.observe(read.seconds)
        explored = explore and models.random_effects is not None
        encoded = self._encoder(models).encode(member_id, read.member, read.item_ids, read.job_rows,
                                               self._explore_rng if explored else None)
        self.metrics.score_rows.observe(len(encoded))
        scores = await self._scores(encoded, models)
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
            unknown_candidates=read.unknown_candidates, explored=explored,
            versions={"models": models.versions(), "feature_views": self.features.versions})

    @bentoml.api(route="/features", input_spec=RankRequest)
    async def features_read(self, member_id: int, candidates: list[int], k: int | None = None,
                            explore: bool = False) -> dict:
        """The features /rank would read for this request, as read (training/serving skew checks)."""
        read = await self.features.read(member_id, candidates)
        jobs = read.jobs.astype(object).where(read.jobs.notna(), None)
        return {"member_id": member_id, "member": _jsonable(read.member), "jobs": _jsonable(jobs.to_dict("records")),
                "cold_start": read.cold_start, "degraded": read.degraded, "degraded_reasons": read.degraded_reasons}


def freeze_startup_heap() -> None:
    """Move every object alive after start-up (modules, models, the feature store) out of the collector's reach.

    A full (generation-2) collection walks every tracked object; with torch, Feast, pandas and BentoML loaded
    that stalls the event loop for 210-220 ms (measured with gc.callbacks at 100 requests/s: about one such
    pause a minute, each delaying ~20 requests by up to 230 ms). Frozen objects are never scanned again
    (gc.freeze), so a full collection walks only what requests left behind: in the same runs with the heap
    frozen, no collection of the service took over 10 ms. Start-up objects live as long as the process anyway.
    """
    import gc

    gc.collect()
    gc.freeze()


def _client_errors() -> tuple[type[BaseException], ...]:
    """Scorer failures the front answers by scoring itself: transport errors, and the 503 BentoML's
    dispatcher gives when a queued batch item outlived max_latency_ms (overload)."""
    import aiohttp
    from bentoml.exceptions import ServiceUnavailable

    return (aiohttp.ClientError, ServiceUnavailable)


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
