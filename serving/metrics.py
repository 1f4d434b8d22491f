"""Prometheus metrics of the ranking service, exported on BentoML's /metrics endpoint.

Created inside the service's __init__, not at import: BentoML sets PROMETHEUS_MULTIPROC_DIR in each
worker after importing the service module, and prometheus_client must see it when the metrics are made
(otherwise they live in a registry /metrics never reads). BentoML itself adds request counts, latency
and the adaptive batch-size histogram (`adaptive_batch_size`) per API.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass
class ServingMetrics:
    request_seconds: Any         # Histogram: POST /rank end to end, inside the service
    feature_read_seconds: Any    # Histogram: the online-store read (both parts, cache included)
    score_rows: Any              # Histogram: rows sent to the scorer per request
    feature_store_errors: Any    # Counter by part (member / jobs) and kind (timeout / error)
    degraded: Any                # Counter: responses served with default features
    cold_start: Any              # Counter: responses for members the store has no row of
    reloads: Any                 # Counter: model sets swapped in without restart
    scorer_fallbacks: Any        # Counter: requests scored in the front because the scorer call failed

    @classmethod
    def create(cls) -> "ServingMetrics":
        from prometheus_client import Counter, Histogram

        return cls(
            request_seconds=Histogram("rankflow_rank_request_seconds", "POST /rank latency inside the service",
                                      buckets=LATENCY_BUCKETS),
            feature_read_seconds=Histogram("rankflow_feature_read_seconds", "Online feature read latency",
                                           buckets=LATENCY_BUCKETS),
            score_rows=Histogram("rankflow_score_rows", "Candidate rows scored per request",
                                 buckets=(1, 10, 50, 100, 200, 500, 1000)),
            feature_store_errors=Counter("rankflow_feature_store_errors_total",
                                         "Online reads that failed or missed the deadline", ["part", "kind"]),
            degraded=Counter("rankflow_degraded_responses_total", "Responses served with default features"),
            cold_start=Counter("rankflow_cold_start_responses_total", "Responses for members unknown to the store"),
            reloads=Counter("rankflow_model_reloads_total", "Model sets swapped in without a restart"),
            scorer_fallbacks=Counter("rankflow_scorer_fallbacks_total",
                                     "Requests scored in the front process because the scorer call failed"),
        )

    def count_degraded(self, reasons: list[str]) -> None:
        self.degraded.inc()
        for reason in reasons:
            part = reason.split(" ", 1)[0]
            kind = "timeout" if "no answer within" in reason else "error"
            self.feature_store_errors.labels(part=part, kind=kind).inc()


def scored_batch_histogram() -> Any:
    """Rows per adaptive batch the scorer ran (the scorer process's one metric of its own)."""
    from prometheus_client import Histogram

    return Histogram("rankflow_scored_batch_rows", "Rows per adaptive batch scored",
                     buckets=(1, 50, 100, 200, 500, 1000, 2000, 5000, 10000))
