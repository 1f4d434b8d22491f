"""Benchmark `rankflow generate`: events per second and peak memory (RSS) at 1M and 20M events.

Each size runs in its own child process so its peak RSS is its own (os.wait4 returns the child's
rusage). The generator streams day by day, so peak memory should depend on the events per day and the
population, not on the number of days: the 1M and 20M rows use the same day size, the last row puts
20M events in 10 large days.

    .venv/bin/python benchmarks/bench_generate.py                # all sizes
    .venv/bin/python benchmarks/bench_generate.py --sizes 1M     # one size

Writes benchmarks/results/generate-<machine>.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe_machine, write_result  # noqa: E402

# name -> generator flags (members, jobs, days, impressions per day)
SIZES = {
    "1M": dict(members=50_000, jobs=5_000, days=5, impressions_per_day=200_000),
    "20M": dict(members=50_000, jobs=5_000, days=100, impressions_per_day=200_000),
    "20M-10d": dict(members=200_000, jobs=20_000, days=10, impressions_per_day=2_000_000),
}
MEMORY_LIMIT_MIB = 2048


def child(flags: dict, data_dir: str) -> None:
    from features.synthetic import generate
    from rankflow.config import GeneratorSettings
    from rankflow.paths import DataPaths

    summary = generate(GeneratorSettings(**flags), DataPaths(Path(data_dir)))
    print(json.dumps(summary))


def run_size(name: str, scratch: Path) -> dict:
    data_dir = scratch / name
    flags = SIZES[name]
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(flags), str(data_dir)],
                               stdout=subprocess.PIPE, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"generation of {name} failed (exit {os.waitstatus_to_exitcode(status)})")
    summary = json.loads(output.strip().splitlines()[-1])
    disk = sum(p.stat().st_size for p in data_dir.rglob("*") if p.is_file())
    shutil.rmtree(data_dir, ignore_errors=True)
    return {
        "size": name, **flags, "events": summary["events"], "generate_s": summary["seconds"], "wall_s": wall,
        "events_per_s": summary["events"] / summary["seconds"],
        "peak_rss_mib": usage.ru_maxrss / 1024,  # Linux reports KiB
        "disk_mib": disk / 2**20, "apply_rate": summary["apply_rate"],
    }


def table(rows: list[dict]) -> str:
    lines = ["| size | members | jobs | days | impressions/day | events | generate (s) | events/s | peak RSS (MiB) "
             "| under 2 GiB | output (MiB) | apply rate |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|:---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['size']} | {r['members']:,} | {r['jobs']:,} | {r['days']} | {r['impressions_per_day']:,} "
                     f"| {r['events']:,} | {r['generate_s']:.1f} | {r['events_per_s']:,.0f} | {r['peak_rss_mib']:,.0f} "
                     f"| {'yes' if r['peak_rss_mib'] < MEMORY_LIMIT_MIB else 'NO'} | {r['disk_mib']:,.0f} "
                     f"| {r['apply_rate']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--scratch", default=None, help="where to generate (deleted after each size)")
    parser.add_argument("--child", nargs=2, metavar=("FLAGS", "DATA_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child[0]), args.child[1])
        return
    machine = describe_machine()
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="rankflow-bench-generate-"))
    rows = []
    for name in args.sizes:
        print(f"generating {name} ...", flush=True)
        rows.append(run_size(name, scratch))
    shutil.rmtree(scratch, ignore_errors=True)
    result = table(rows)
    note = ("\n\nevents/s = events / time inside `generate()` (Parquet writes of raw/ and truth/ included); "
            "peak RSS = the child process's ru_maxrss.")
    print(result)
    print(f"written to {write_result('generate', result + note, machine)}")


if __name__ == "__main__":
    main()
