"""features: each day, validate the raw partition, build the day's features, push them online.

validate_raw -> build_features -> materialize -> Asset `features` (extra: {"day": D}).
Daily with catchup; the logical day is the start of the data interval, so a backfill of any
range of days re-runs exactly those partitions (every stage replaces its day atomically).
"""

from __future__ import annotations

from airflow.sdk import CronDataIntervalTimetable, dag, task

from dags._common import DEFAULT_ARGS, FEATURES, TAGS, logical_day, run_stage, schedule_end, schedule_start


@dag(
    dag_id="features",
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    start_date=schedule_start(),
    end_date=schedule_end(),
    catchup=True,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=TAGS,
    doc_md=__doc__,
)
def features():
    @task
    def validate_raw(data_interval_start=None) -> dict:
        return run_stage("features", "validate_raw", logical_day(data_interval_start))

    @task
    def build_features(data_interval_start=None) -> dict:
        # release_spark: the task process needs no Spark after the build; its JVM goes before the training set
        return run_stage("features", "build_features", logical_day(data_interval_start), release_spark=True)

    @task(outlets=[FEATURES])
    def materialize(data_interval_start=None, outlet_events=None) -> dict:
        day = logical_day(data_interval_start)
        result = run_stage("features", "materialize", day)
        # Consumers read the day from the event, so a run that consumes several events
        # (a backfill finishing quickly) still knows every day it has to process.
        outlet_events[FEATURES].extra = {"day": day.isoformat()}
        return result

    validate_raw() >> build_features() >> materialize()


features()
