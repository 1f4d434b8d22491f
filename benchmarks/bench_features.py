"""Feature platform benchmark: Spark build rows/s (default day and a 10x day) and online
materialisation rows/s into SQLite and Redis, ours (features.materialize) vs Feast's stock `materialize`.

    .venv/bin/python benchmarks/bench_features.py [--sizes default,10x] [--redis redis://127.0.0.1:6379/1]

Each size: generate 2 days, build day 1 (JVM warm-up, windows), then time day 2: Spark build
(build_features without validation/training set: features.spark.build.build_day), our materialise, and
Feast's materialize of the same rows into a fresh online store. Targets: default day built +
materialised < 60 s; Redis >= 50,000 rows/s. Writes benchmarks/results/features-<machine>.md.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _machine import describe_machine, write_result  # noqa: E402

SIZES = {"default": 1, "10x": 10}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="default,10x")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/1")
    args = parser.parse_args()

    import redis

    from features.materialize import materialize_day, stock_materialize
    from features.spark.build import build_day
    from features.spark.session import spark_session
    from features.store import remove_rendered_repo, write_offline_partition
    from features.synthetic import generate
    from rankflow.config import GeneratorSettings, Settings

    rows = []
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
                if online != "sqlite":
                    client = redis.Redis.from_url(online)
                    try:
                        client.ping()
                    except redis.exceptions.ConnectionError:
                        print(f"skip redis: no server at {online}")
                        continue
                store_settings = replace(settings, online_store=online)
                results = {}
                for writer in ("ours", "stock"):
                    remove_rendered_repo(store_settings)
                    if online != "sqlite":
                        client.flushdb()
                    from features.store import feature_store
                    feature_store(store_settings)  # apply outside the timing
                    started = time.perf_counter()
                    if writer == "ours":
                        materialize_day(store_settings, day)
                    else:
                        stock_materialize(store_settings, day)
                    results[writer] = time.perf_counter() - started
                rows.append((size, built.events, build_seconds, built.events / build_seconds, store_name, table_rows,
                             table_rows / results["ours"], table_rows / results["stock"],
                             build_seconds + results["ours"]))
                print(rows[-1], flush=True)
        finally:
            shutil.rmtree(root, ignore_errors=True)

    header = ("| day | events | Spark build s | build events/s | online store | rows | ours rows/s "
              "| Feast materialize rows/s | ours/stock | build + materialise s |\n"
              "|---|---|---|---|---|---|---|---|---|---|\n")
    body = "".join(f"| {s} | {e:,} | {b:.1f} | {e / b:,.0f} | {st} | {r:,} | {o:,.0f} | {k:,.0f} | {o / k:.2f} | {t:.1f} |\n"
                   for s, e, b, _, st, r, o, k, t in rows)
    notes = ("\nSpark build = one day's window update + three feature tables (day 2, JVM warm, local[*]). "
             "rows = entity rows of the three tables. Targets: default day build + materialise < 60 s; "
             "Redis >= 50,000 rows/s.\n")
    print(header + body + notes)
    path = write_result("features", header + body + notes, describe_machine())
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
