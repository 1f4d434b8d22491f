"""Wall time of one scheduled day end to end on the embedded Airflow, and how much of it is Airflow.

Generates the default demo marketplace (or uses --data-dir as is), starts Airflow scheduling only
the first day, and waits until that day's `features` run and the `personalisation` run it triggers
succeed. Wall time runs from the features run's queued_at to the personalisation run's end; task
work is the sum of task-instance durations (the tasks of one day run one after another), so
overhead = wall - work is what the scheduler, the Asset hand-off and task start-up cost.

    .venv/bin/python benchmarks/bench_airflow_day.py [--data-dir /tmp/bench-airflow] [--db postgresql://...]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


def _seconds(start: str, end: str) -> float:
    return (datetime.fromisoformat(end.replace("Z", "+00:00")) - datetime.fromisoformat(start.replace("Z", "+00:00"))).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/bench-airflow"))
    parser.add_argument("--db", default=None, help="postgresql://... (default: SQLite)")
    parser.add_argument("--port", type=int, default=8795)
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args()

    from features.synthetic import generate
    from rankflow.airflow_local import AirflowOptions, start, stop
    from rankflow.config import load_settings
    from tests.dags.test_end_to_end import AirflowREST, wait_for

    settings = load_settings(args.data_dir)
    if not settings.paths.raw_schema.exists():
        generate(settings.generator, settings.paths)
    first = settings.generator.start_date
    options = AirflowOptions(data_dir=args.data_dir, db_url=args.db, port=args.port, end_date=first, open_access=True)
    started = time.perf_counter()
    info = start(options)
    startup = time.perf_counter() - started
    try:
        api = AirflowREST(info.url)
        done = lambda dag: [r for r in api.runs(dag) if r["state"] in ("success", "failed")]  # noqa: E731
        wait_for(lambda: done("features") and done("personalisation"), "day 1 features + personalisation",
                 args.timeout, poll_s=2)
        features_run, personal_run = done("features")[0], done("personalisation")[0]
        assert features_run["state"] == personal_run["state"] == "success", (features_run, personal_run)
        wall = _seconds(features_run["queued_at"], personal_run["end_date"])
        rows = []
        for dag, run in (("features", features_run), ("personalisation", personal_run)):
            tis = api.http.get(f"/dags/{dag}/dagRuns/{run['dag_run_id']}/taskInstances").json()["task_instances"]
            rows += [(dag, ti["task_id"], ti["duration"] or 0.0) for ti in tis]
    finally:
        stop(args.data_dir)
    work = sum(duration for *_, duration in rows)
    g = settings.generator
    lines = [
        "# Airflow: one scheduled day end to end",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores; "
        f"date {datetime.now():%Y-%m-%d}; metadata DB {'PostgreSQL' if args.db else 'SQLite'}; LocalExecutor.",
        f"Data: {g.members} members, {g.jobs} jobs, {g.impressions_per_day} impressions/day; day {first}.",
        f"Airflow start-up (db migrate + 4 components healthy): {startup:.1f} s",
        "",
        "| DAG | task | seconds |", "|---|---|---|",
        *[f"| {dag} | {task} | {duration:.1f} |" for dag, task, duration in rows],
        "",
        f"| wall (features queued -> personalisation done) | task work | Airflow overhead | overhead share |",
        "|---|---|---|---|",
        f"| {wall:.1f} s | {work:.1f} s | {wall - work:.1f} s | {(wall - work) / wall:.0%} |",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    machine = platform.node() or "local"
    out = REPO_ROOT / "benchmarks" / "results" / f"airflow-{machine}.md"
    out.write_text(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
