"""personalisation: after each features day, update random effects and refresh meta embeddings.

resolve_days -> update_random_effects -> refresh_meta_embeddings -> Asset `personalisation`.
Meta embeddings start once a meta-initialisation exists or can be trained (3 days of history).
Triggered by Asset `features`; the days come from the triggering events (oldest first, because
each day's posterior is the next day's prior). A manual run takes conf {"day": "YYYY-MM-DD"}.
With GLMix retention on (`glmix_keep_days`), a backfilled day whose prior state was deleted is skipped with a
warning and the other days run; the run fails only when every day was refused.
"""

from __future__ import annotations

from datetime import date

from airflow.sdk import Param, dag, task

from dags._common import (
    DEFAULT_ARGS,
    FEATURES,
    PERSONALISATION,
    TAGS,
    meta_not_ready,
    run_stage,
    run_stage_days,
    schedule_start,
    triggered_days,
)


@dag(
    dag_id="personalisation",
    schedule=[FEATURES],
    start_date=schedule_start(),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    params={"day": Param(None, type=["null", "string"], description="Logical day YYYY-MM-DD (manual runs)")},
    tags=TAGS,
    doc_md=__doc__,
)
def personalisation():
    @task
    def resolve_days(triggering_asset_events=None, params=None) -> list[str]:
        days = triggered_days(triggering_asset_events, FEATURES, (params or {}).get("day"))
        return [day.isoformat() for day in days]

    @task
    def update_random_effects(days: list[str]) -> dict:
        # A day whose prior state retention deleted (glmix_keep_days) is skipped, the others run (run_stage_days).
        return run_stage_days("personalise", "update_random_effects", [date.fromisoformat(day) for day in days])

    @task(outlets=[PERSONALISATION])
    def refresh_meta_embeddings(days: list[str], outlet_events=None) -> dict:
        results = {}
        for day in days:
            # The first days of a fresh data dir have no history to meta-train on: members stay
            # on their random effects alone until a meta-initialisation exists (as in the demo).
            waiting = meta_not_ready(date.fromisoformat(day))
            results[day] = {"skipped": waiting} if waiting else \
                run_stage("meta", "refresh_meta_embeddings", date.fromisoformat(day))
        outlet_events[PERSONALISATION].extra = {"day": max(days), "days": days}
        return results

    days = resolve_days()
    update_random_effects(days) >> refresh_meta_embeddings(days)


personalisation()
