"""publish: when a ranker is promoted, build the Bento, smoke-test it, and promote it for serving.

build_bento -> smoke_test -> promote_bento. Triggered by Asset `ranker`; the previous Bento
stays in the store for rollback (`models/serving.json` keeps the history).
"""

from __future__ import annotations

from airflow.sdk import dag, task

from dags._common import DEFAULT_ARGS, RANKER, TAGS, run_stage, schedule_start


@dag(
    dag_id="publish",
    schedule=[RANKER],
    start_date=schedule_start(),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=TAGS,
    doc_md=__doc__,
)
def publish():
    @task
    def build_bento() -> dict:
        return run_stage("publish", "build_bento")

    @task
    def smoke_test(built: dict) -> dict:
        return run_stage("publish", "smoke_test", built["bento_tag"])

    @task
    def promote_bento(built: dict) -> dict:
        return run_stage("publish", "promote_bento", built["bento_tag"])

    built = build_bento()
    smoke_test(built) >> promote_bento(built)


publish()
