"""Feature platform benchmark: Spark build rows/s (default day and a 10x day) and online
materialisation rows/s into SQLite and Redis, ours (features.materialize) vs Feast's stock `materialize`.

    .venv/bin/python benchmarks/bench_features.py [--sizes default,10x] [--redis redis://127.0.0.1:6379/4]
                                                  [--repeats 3] [--baseline REV]

Each size: generate 2 days, build day 1 (JVM warm-up, windows), then time day 2: Spark build
(build_features without validation/training set: features.spark.build.build_day), our materialise
(features.materialize.materialize_day: Feast's byte layout written column-wise; Redis with the read-first
HGET guard and with the batched Lua compare-and-set guard), and Feast's stock materialize of the same rows
into a fresh online store. Our writer runs --repeats times into a fresh store and, each time, again over it
(every row checked against the stored event time and rewritten); the table shows medians. With --baseline
REV the writer of git revision REV (its features/materialize.py) is timed the same way, alternating with
ours, so a before/after pair shares the machine's load. Targets: default day built + materialised < 60 s;
Redis >= 50,000 rows/s. Writes benchmarks/results/features-<machine>.md with the load average seen.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _machine import REPO_ROOT, describe_machine, write_result  # noqa: E402

SIZES = {"default": 1, "10x": 10}


@dataclass
class Timing:
    """One writer on one online store: medians over its runs."""

    size: str
    events: int
    build_seconds: float
    store: str
    writer: str
    rows: int
    empty_rows_per_s: float
    over_rows_per_s: float | None
    rows_per_cpu_s: float
    redis_cpu_s: float | None
    runs: int
    load: tuple[float, float]


def load_writer_at(revision: str):
    """features/materialize.py as it was at git `revision`, imported as a module of its own."""
    source = subprocess.run(["git", "show", f"{revision}:features/materialize.py"], cwd=REPO_ROOT,
                            capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp(prefix="bench-writer-")) / f"materialize_at_{revision}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def redis_cpu_seconds(client) -> float:
    info = client.info("cpu")
    return info["used_cpu_user"] + info["used_cpu_sys"]


def time_run(run, fresh_store, client, again: bool = True) -> dict:
    """One run into a fresh store (wall, client CPU, Redis server CPU) and, with `again`, one over it."""
    fresh_store()
    server = redis_cpu_seconds(client) if client is not None else None
    started, cpu_started = time.perf_counter(), time.process_time()
    run()
    out = {"empty": [time.perf_counter() - started], "cpu": [time.process_time() - cpu_started],
           "redis_cpu": [redis_cpu_seconds(client) - server] if client is not None else [],
           "load": [os.getloadavg()[0]], "over": []}
    if again:
        started = time.perf_counter()
        run()
        out["over"].append(time.perf_counter() - started)
        out["load"].append(os.getloadavg()[0])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="default,10x")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/4", help="a database no test uses (flushed; tests use 1, 2, 5-7 and 9-15, bench_serving 8)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of our writer per store (medians shown)")
    parser.add_argument("--baseline", default=None, help="git revision whose writer is timed alongside ours")
    args = parser.parse_args()

    import redis

    from features import materialize
    from features.spark.build import build_day
    from features.spark.session import spark_session
    from features.store import feature_store, remove_rendered_repo, write_offline_partition
    from features.synthetic import generate
    from rankflow.config import GeneratorSettings, Settings

    writers = {"ours": materialize}
    if args.baseline:
        writers[f"ours @{args.baseline}"] = load_writer_at(args.baseline)
    timings: list[Timing] = []
    for size in args.sizes.split(","):
        scale = SIZES[size]
        base = GeneratorSettings()
        generator = replace(base, members=base.members * scale, jobs=base.jobs * scale, days=2,
                            impressions_per_day=base.impressions_per_day * scale)
        root = Path(tempfile.mkdtemp(prefix=f"bench-features-{size}-"))
        try:
            settings = Settings(data_dir=root, generator=generator)
            generate(generator, settings.paths)
            spark = spark_session(settings)
            first = generator.start_date
            day = first.replace(day=first.day + 1)
            for d in (first, day):
                started = time.perf_counter()
                built = build_day(spark, settings.paths, d)
                build_seconds = time.perf_counter() - started
                for table, frame in built.tables.items():
                    write_offline_partition(settings.paths, table, d, frame)
            table_rows = sum(len(f) for f in built.tables.values())
            for store_name, online in (("sqlite", "sqlite"), ("redis", args.redis)):
                client = None
                if online != "sqlite":
                    client = redis.Redis.from_url(online)
                    try:
                        client.ping()
                    except redis.exceptions.ConnectionError:
                        print(f"skip redis: no server at {online}")
                        continue
                store_settings = replace(settings, online_store=online)

                def fresh_store() -> None:
                    remove_rendered_repo(store_settings)
                    if client is not None:
                        client.flushdb()
                    feature_store(store_settings)  # apply outside the timing

                runs = []  # (label, run, repeats): ours and the baseline alternate, Feast's stock writer once
                guards = ("hmget",) if online == "sqlite" else ("hmget", "lua")
                for guard in guards:
                    for name, module in writers.items():
                        label = name if online == "sqlite" else \
                            f"{name} ({'HGET' if guard == 'hmget' else 'Lua CAS'} guard)"
                        runs.append((label, lambda m=module, g=guard: m.materialize_day(store_settings, day,
                                                                                         guard=g)))
                fresh_store()
                for label, run in runs:
                    run()  # warm-up outside the timing: first imports, connections
                measured = {label: {"empty": [], "over": [], "cpu": [], "redis_cpu": [], "load": []}
                            for label, _ in runs}
                for _ in range(args.repeats):
                    for label, run in runs:
                        for key, values in time_run(run, fresh_store, client).items():
                            measured[label][key].extend(values)
                measured["Feast materialize"] = time_run(
                    lambda: materialize.stock_materialize(store_settings, day), fresh_store, client, again=False)
                for label, m in measured.items():
                    timing = Timing(
                        size, built.events, build_seconds, store_name, label, table_rows,
                        table_rows / statistics.median(m["empty"]),
                        table_rows / statistics.median(m["over"]) if m["over"] else None,
                        table_rows / statistics.median(m["cpu"]),
                        statistics.median(m["redis_cpu"]) if m["redis_cpu"] else None,
                        len(m["empty"]), (min(m["load"]), max(m["load"])))
                    timings.append(timing)
                    print(timing, flush=True)
        finally:
            shutil.rmtree(root, ignore_errors=True)

    stock = {(t.size, t.store): t.empty_rows_per_s for t in timings if t.writer == "Feast materialize"}
    header = ("| day | events | Spark build s | build events/s | online store | writer | rows | runs "
              "| rows/s into empty | rows/s over stored day | vs Feast | rows per client CPU s | Redis CPU s "
              "| build + materialise s | load avg |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    body = "".join(
        f"| {t.size} | {t.events:,} | {t.build_seconds:.1f} | {t.events / t.build_seconds:,.0f} | {t.store} "
        f"| {t.writer} | {t.rows:,} | {t.runs} | {t.empty_rows_per_s:,.0f} "
        f"| {f'{t.over_rows_per_s:,.0f}' if t.over_rows_per_s else '-'} "
        f"| {t.empty_rows_per_s / stock[(t.size, t.store)]:.1f}x | {t.rows_per_cpu_s:,.0f} "
        f"| {f'{t.redis_cpu_s:.2f}' if t.redis_cpu_s is not None else '-'} "
        f"| {t.build_seconds + t.rows / t.empty_rows_per_s:.1f} | {t.load[0]:.1f}-{t.load[1]:.1f} |\n"
        for t in timings)
    notes = ("\nSpark build = one day's window update + three feature tables (day 2, JVM warm, local[*]). "
             "rows = entity rows of the three tables (member_features, job_features, member_affinities). "
             "ours = features.materialize.materialize_day (reads the partitions, writes Feast's exact bytes; "
             "into empty = fresh store, over stored day = the same day again: every row checked and rewritten); "
             "`ours @REV` = the same function at git revision REV, timed alternately with ours. "
             "Feast materialize = FeatureStore.materialize over the same rows into a fresh store (one run). "
             "runs = runs into an empty store; rows/s and CPU columns are their medians. "
             "rows per client CPU s = rows / this process's CPU time while writing into the empty store (the "
             "writer's own cost, without Redis's or SQLite's server work and without waiting for a CPU share). "
             "Redis CPU s = the Redis server's CPU time during that write (INFO cpu): on 2 shared cores, "
             "wall time is about client CPU + server CPU when nothing else runs. "
             "load avg = 1-minute load average seen after each run (the 2-core machine is shared). "
             "Targets: default day build + materialise < 60 s; Redis >= 50,000 rows/s.\n")
    print(header + body + notes)
    path = write_result("features", header + body + notes, describe_machine())
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
