"""The demo flow: the daily loop over the default synthetic marketplace, then the ranker and the service.

It calls the same stage functions as the DAGs, in the order the DAGs run them:
for each day D, features(D) -> personalisation(D) (random effects, then meta embeddings); then the
weekly jobs (meta-training, ranker training + promotion) and finally a ranking from the service.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Callable

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from rankflow.config import Settings
from rankflow.logs import get_logger

log = get_logger(__name__)

# Meta-training needs some history: it first runs after this many days of features.
META_TRAIN_AFTER_DAYS = 4


@dataclass
class DemoStep:
    """One line of the demo's closing summary."""

    name: str
    result: str
    seconds: float
    outputs: str


def _timed(steps: list[DemoStep], name: str, outputs: str, action: Callable[[], dict | None],
           describe: Callable[[dict | None], str]) -> dict | None:
    started = time.perf_counter()
    outcome = action()
    steps.append(DemoStep(name, describe(outcome), time.perf_counter() - started, outputs))
    return outcome


def generated_days(settings: Settings) -> list[date]:
    from features.contract import raw_days

    return raw_days(settings.paths, "events")


def run_demo(settings: Settings, fresh: bool = False, serve_check: bool = True,
             console: Console | None = None) -> list[DemoStep]:
    """Run every stage on the demo data set; returns the summary lines. Re-running reuses what exists."""
    from features.synthetic import generate_data_set
    from rankflow.stages import features, meta, personalise, ranker

    console = console or Console()
    paths = settings.paths
    steps: list[DemoStep] = []

    if fresh or not paths.raw_schema.exists():  # --fresh: a new data set, and nothing derived from the old one
        _timed(steps, "generate", str(paths.raw), lambda: generate_data_set(settings.generator, paths, replace=fresh),
               lambda s: f"{s.get('events', '?'):,} events over {s.get('days', '?')} days")
    days = generated_days(settings)
    if not days:
        raise RuntimeError(f"{paths.raw_table('events')}: no event partitions to run the demo on")

    totals = {"features": 0.0, "random effects": 0.0, "meta embeddings": 0.0, "meta training": 0.0}
    counts = {"features": 0, "random effects": 0, "meta embeddings": 0, "meta training": 0}
    meta_trained = False
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} days"),
               TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("daily loop", total=len(days))
        for index, day in enumerate(days):
            progress.update(task, description=f"daily loop {day}: features")
            started = time.perf_counter()
            features.run_day(settings, day)
            totals["features"] += time.perf_counter() - started
            counts["features"] += 1

            progress.update(task, description=f"daily loop {day}: random effects")
            started = time.perf_counter()
            personalise.update_random_effects(settings, day)
            totals["random effects"] += time.perf_counter() - started
            counts["random effects"] += 1

            if index + 1 >= META_TRAIN_AFTER_DAYS and (not meta_trained or (index + 1) % 7 == 0):
                progress.update(task, description=f"daily loop {day}: meta training")
                started = time.perf_counter()
                meta.train_meta(settings, day)
                totals["meta training"] += time.perf_counter() - started
                counts["meta training"] += 1
                meta_trained = True
            if meta_trained:
                progress.update(task, description=f"daily loop {day}: meta embeddings")
                started = time.perf_counter()
                meta.refresh_meta_embeddings(settings, day)
                totals["meta embeddings"] += time.perf_counter() - started
                counts["meta embeddings"] += 1
            progress.advance(task)
    from features.spark.session import stop_spark_session

    stop_spark_session()  # nothing after the daily loop needs Spark: its JVM goes before the ranker trains

    outputs = {"features": f"{paths.features}, {paths.feast}", "random effects": f"{paths.models / 'glmix'}",
               "meta training": f"{paths.models / 'meta'}", "meta embeddings": f"{paths.feature_table('meta_embedding')}"}
    for name in totals:
        steps.append(DemoStep(name, f"{counts[name]} day(s)", totals[name], outputs[name]))

    # The ranker trains on every day but the first (whose features have no history) and the last,
    # and is evaluated on the last day.
    first, last = days[min(1, len(days) - 2)], days[-2]
    trained = _timed(steps, "ranker", str(paths.models),
                     lambda: ranker.train(settings, first, last, eval_days=1, warm_start=False),
                     _describe_training)
    promoted = _timed(steps, "promote", str(paths.models / "serving.json"),
                      lambda: ranker.promote(settings, trained["tag"]),
                      lambda p: f"{p.get('decision', p.get('status', '?'))}: {p.get('reason', '')}"[:80])
    log.info("promotion: %s", promoted)

    if serve_check:
        _timed(steps, "serve", f"{paths.run}/serve-*.log", lambda: rank_once(settings, console),
               lambda r: f"member {r['member_id']}: top {len(r['items'])} of {r['candidates']} in "
                         f"{r['latency_ms']:.0f} ms")
    return steps


def rank_once(settings: Settings, console: Console) -> dict:
    """Start the BentoML service on a free port, rank 100 candidates for one member over HTTP, stop it."""
    import httpx
    import pandas as pd

    from rankflow.stages.publish import ServeOptions, free_port, start_service

    newest_members = sorted(settings.paths.feature_table("member_features").glob("dt=*"))[-1]
    newest_jobs = sorted(settings.paths.feature_table("job_features").glob("dt=*"))[-1]
    members = pd.read_parquet(newest_members).sort_values("member_id")
    member_id = int(members["member_id"].iloc[0])
    candidates = [int(i) for i in pd.read_parquet(newest_jobs)["item_id"].head(100)]
    with start_service(settings, ServeOptions(port=free_port())) as service:
        started = time.perf_counter()
        response = httpx.post(f"{service.url}/rank", json={"member_id": member_id, "candidates": candidates, "k": 5},
                              timeout=30)
        latency_ms = (time.perf_counter() - started) * 1000
        response.raise_for_status()
        answer = response.json()
    console.print(f"[bold]rank[/bold] member {member_id}, {len(candidates)} candidates -> "
                  f"{[(item['item_id'], round(item['score'], 4)) for item in answer['items']]}")
    return {"member_id": member_id, "candidates": len(candidates), "items": answer["items"], "latency_ms": latency_ms}


def _describe_training(result: dict | None) -> str:
    metrics = (result or {}).get("metrics", {})
    parts = [f"{name} {metrics[name]:.4f}" for name in ("auc", "oracle_auc", "log_loss", "ece", "served_auc")
             if metrics.get(name) is not None]
    return ", ".join(parts) or "trained"
