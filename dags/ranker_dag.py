"""ranker: weekly (and on demand) retrain the ranker warm-started, evaluate, promote if better.

window -> train_meta -> train -> evaluate -> promote -> Asset `ranker` (only when promoted).
The train task runs in the `[rankflow] gpu_pool` pool and `gpu_queue` queue, so a Celery or
Kubernetes deployment sends it to GPU workers; without a GPU the stage trains on CPU.
A manual run may pass conf {"start": "YYYY-MM-DD", "end": "YYYY-MM-DD"}.
"""

from __future__ import annotations

from datetime import date

from airflow.sdk import CronDataIntervalTimetable, Param, dag, task

from dags._common import (
    DEFAULT_ARGS,
    RANKER,
    meta_not_ready,
    TAGS,
    rankflow_option,
    run_stage,
    schedule_end,
    schedule_start,
    training_window,
)

_OPTIONAL_DAY = {"type": ["null", "string"]}


@dag(
    dag_id="ranker",
    schedule=CronDataIntervalTimetable("@weekly", timezone="UTC"),
    start_date=schedule_start(),
    end_date=schedule_end(),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    params={
        "start": Param(None, description="First training day YYYY-MM-DD (manual runs)", **_OPTIONAL_DAY),
        "end": Param(None, description="Last training day YYYY-MM-DD (manual runs)", **_OPTIONAL_DAY),
    },
    tags=TAGS,
    doc_md=__doc__,
)
def ranker():
    @task
    def window(data_interval_start=None, data_interval_end=None, params=None) -> dict:
        first, last = training_window(data_interval_start, data_interval_end, params)
        return {"start": first.isoformat(), "end": last.isoformat()}

    @task
    def train_meta(span: dict) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        end = date.fromisoformat(span["end"])
        waiting = meta_not_ready(end)
        if waiting:  # too little history yet; the ranker does not need the meta-init to train
            raise AirflowSkipException(waiting)
        return run_stage("meta", "train_meta", end)

    # none_failed: a skipped train_meta (too little history yet) does not stop the ranker.
    @task(pool=rankflow_option("gpu_pool", "default_pool"), queue=rankflow_option("gpu_queue", "default"),
          trigger_rule="none_failed")
    def train(span: dict) -> dict:
        return run_stage("ranker", "train", date.fromisoformat(span["start"]), date.fromisoformat(span["end"]))

    @task
    def evaluate(candidate: dict, span: dict) -> dict:
        return run_stage("ranker", "evaluate", candidate["tag"], date.fromisoformat(span["end"]))

    @task(outlets=[RANKER])
    def promote(candidate: dict, outlet_events=None) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        result = run_stage("ranker", "promote", candidate["tag"])
        if result.get("status") != "serving":
            # Skipping emits no `ranker` event, so publish does not rebuild for a model not served.
            raise AirflowSkipException(f"candidate {candidate['tag']} not promoted: {result}")
        outlet_events[RANKER].extra = {"tag": candidate["tag"]}
        return result

    span = window()
    candidate = train(span)
    train_meta(span) >> candidate
    evaluate(candidate, span) >> promote(candidate)


ranker()
