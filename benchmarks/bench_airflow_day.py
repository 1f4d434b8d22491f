"""Wall time of one scheduled day end to end on the embedded Airflow, and how much of it is Airflow.

Generates the default demo marketplace (or the size given), starts Airflow scheduling only the
first day, and waits until that day's `features` run and the `personalisation` run it triggers
through the `features` Asset succeed. Wall time runs from the features run's queued_at to the
personalisation run's end; task work is the sum of task-instance durations (the tasks of one day
run one after another), so overhead = wall - work is what the scheduler, the Asset hand-off and
task start-up (a fresh Python process per task) cost.

    .venv/bin/python benchmarks/bench_airflow_day.py [--members 4000 --jobs 1000 --impressions 20000]
        [--db postgresql://postgres@127.0.0.1:5432/rankflow_bench] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import REPO_ROOT, describe_machine, write_result  # noqa: E402

sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))  # tiny_marketplace.generate_tiny, shared with the tests


def _seconds(start: str, end: str) -> float:
    parse = lambda stamp: datetime.fromisoformat(stamp.replace("Z", "+00:00"))  # noqa: E731
    return (parse(end) - parse(start)).total_seconds()


def main() -> None:
    from rankflow.config import GeneratorSettings

    defaults = GeneratorSettings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=defaults.members)
    parser.add_argument("--jobs", type=int, default=defaults.jobs)
    parser.add_argument("--impressions", type=int, default=defaults.impressions_per_day)
    parser.add_argument("--db", default=None, help="postgresql://... (default: SQLite under the data dir)")
    parser.add_argument("--port", type=int, default=8795)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--keep", action="store_true", help="keep the data dir (logs, Airflow home) afterwards")
    args = parser.parse_args()

    from rankflow.airflow_local import AirflowOptions, start, stop
    from tiny_marketplace import generate_tiny
    from tests.dags.test_end_to_end import AirflowREST, wait_for

    data_dir = Path(tempfile.mkdtemp(prefix="rankflow-bench-airflow-", dir="/tmp")) / "data"
    sizes = {"members": args.members, "jobs": args.jobs, "impressions_per_day": args.impressions, "days": 2,
             "seed": defaults.seed, "start_date": defaults.start_date}
    first = defaults.start_date
    try:
        generated = time.perf_counter()
        generate_tiny(data_dir, **sizes)
        generated = time.perf_counter() - generated
        options = AirflowOptions(data_dir=data_dir, db_url=args.db, port=args.port, end_date=first,
                                 open_access=True)
        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        info = start(options)
        startup = time.perf_counter() - started
        api = AirflowREST(info.url)
        done = lambda dag: [r for r in api.runs(dag) if r["state"] in ("success", "failed")]  # noqa: E731
        wait_for(lambda: done("features") and done("personalisation"), "day 1 features + personalisation",
                 args.timeout, api, poll_s=2)
        features_run, personal_run = done("features")[0], done("personalisation")[0]
        assert features_run["state"] == personal_run["state"] == "success", (features_run, personal_run)
        wall = _seconds(features_run["queued_at"], personal_run["end_date"])
        rows = [(dag, ti["task_id"], ti["duration"] or 0.0)
                for dag, run in (("features", features_run), ("personalisation", personal_run))
                for ti in api.task_instances(dag, run["dag_run_id"])]
    finally:
        stop(data_dir)
        if args.db:
            from tests.dags.test_end_to_end import _drop_database

            _drop_database(args.db.rsplit("/", 1)[-1])
        if not args.keep:
            shutil.rmtree(data_dir.parent, ignore_errors=True)
    load_after = os.getloadavg()[0]
    work = sum(duration for *_, duration in rows)
    table = "\n".join([
        f"Metadata DB: {'PostgreSQL' if args.db else 'SQLite'}; LocalExecutor (parallelism 2); day {first}.",
        f"Data: {args.members:,} members, {args.jobs:,} jobs, {args.impressions:,} impressions/day "
        f"(generated in {generated:.1f} s). Load average (1 min) before/after: {load_before:.1f}/{load_after:.1f} "
        "(the 2-core box is shared with other work, so task times are inflated accordingly).",
        f"Airflow start-up (db migrate + 4 components healthy): {startup:.1f} s.",
        "",
        "| DAG | task | seconds |", "|---|---|---|",
        *[f"| {dag} | {task} | {duration:.1f} |" for dag, task, duration in rows],
        "",
        "| wall (features queued -> personalisation done) | task work | Airflow overhead | overhead share |",
        "|---|---|---|---|",
        f"| {wall:.1f} s | {work:.1f} s | {wall - work:.1f} s | {(wall - work) / wall:.0%} |",
        "",
        "Day 1 of a fresh data dir: the meta-embedding refresh is skipped (no history to meta-train on yet).",
    ])
    print(table)
    print(f"wrote {write_result('airflow-day', table, describe_machine())}")


if __name__ == "__main__":
    main()
