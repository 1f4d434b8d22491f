"""Time and peak memory of the daily commands at a multiple of the demo's size, one command at a time.

    python benchmarks/bench_scale.py --scale 100 --days 2 --data-dir /tmp/scale100
    python benchmarks/bench_scale.py --scale 100 --days 2 --data-dir /tmp/scale100 --reuse --commands personalise

Generates a market of `scale` x the demo's members, jobs and impressions a day (`rankflow generate`), then for each
day runs `rankflow features build --date D` and `rankflow personalise --date D`, each in its own process tree.
`--reuse` keeps a data directory an earlier run made (no generate) and `--commands` picks which daily commands run:
`--reuse --commands personalise` re-runs only the GLMix update of each day (day D starts from D-1's state), to
compare two versions of the code on the same data. Every
0.25 s it sums the resident memory (RSS) of every process of the tree (the rankflow process, Spark's JVM and its
helpers): the table gives the peak of that sum, and the largest single process at its peak. Writes
benchmarks/results/scale-<scale>x-<machine>.md. Run it on a quiet machine: memory is the point, time is a guide.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

from _machine import describe_machine, write_result
from _procs import proc_stats, rss_bytes, tree

DEMO = {"members": 4000, "jobs": 1000, "impressions_per_day": 20000}  # rankflow generate's defaults
START = date(2026, 1, 1)


def _name(pid: int) -> str:
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [w.decode(errors="replace") for w in words if w]
    if not words:
        return "?"
    if Path(words[0]).name == "java":
        return "java (Spark)"
    return " ".join([Path(words[1]).name, *words[2:4]]) if len(words) > 1 else Path(words[0]).name


def run_sampled(command: list[str], env: dict[str, str], log: Path, every: float = 0.25) -> dict:
    """Run `command`; its wall time, exit code, peak RSS of its process tree and the largest process then."""
    started = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        peak, largest = 0, (0, "")
        while process.poll() is None:
            stats = proc_stats()
            sizes = {pid: rss_bytes(stats[pid][1]) for pid in tree(process.pid, stats)}
            if sizes and sum(sizes.values()) > peak:  # empty: the command ended meanwhile
                peak = sum(sizes.values())
                top = max(sizes, key=sizes.get)
                largest = (sizes[top], _name(top))
            time.sleep(every)
    return {"command": " ".join(command[1:]), "seconds": time.perf_counter() - started, "exit": process.returncode,
            "peak_gb": peak / 1e9, "largest_gb": largest[0] / 1e9, "largest": largest[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=10, help="multiple of the demo's size (default 10)")
    parser.add_argument("--days", type=int, default=2, help="days to generate and run (default 2)")
    parser.add_argument("--data-dir", type=Path, required=True, help="a scratch data directory (replaced)")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the data directory an earlier run of the same --scale and --days made; no generate")
    parser.add_argument("--commands", default="features,personalise",
                        help="daily commands to run, comma-separated, in this order (default features,personalise)")
    args = parser.parse_args()
    daily = {"features": ["features", "build"], "personalise": ["personalise"]}
    wanted = [c.strip() for c in args.commands.split(",") if c.strip()]
    unknown = [c for c in wanted if c not in daily]
    if unknown or not wanted:
        parser.error(f"--commands: expected some of {', '.join(daily)}, got {args.commands!r}")
    if args.reuse and not (args.data_dir / "raw").is_dir():
        parser.error(f"--reuse: {args.data_dir} holds no raw/ zone; run without --reuse first")
    rankflow = str(Path(sys.executable).with_name("rankflow"))
    env = dict(os.environ, RANKFLOW_DATA_DIR=str(args.data_dir))
    if not args.reuse:
        shutil.rmtree(args.data_dir, ignore_errors=True)
    logs = args.data_dir.parent / f"{args.data_dir.name}-logs"
    logs.mkdir(parents=True, exist_ok=True)
    machine = describe_machine()
    commands = [] if args.reuse else [[rankflow, "generate", "--members", str(DEMO["members"] * args.scale),
                                       "--jobs", str(DEMO["jobs"] * args.scale), "--days", str(args.days),
                                       "--impressions-per-day", str(DEMO["impressions_per_day"] * args.scale)]]
    for offset in range(args.days):
        day = (START + timedelta(days=offset)).isoformat()
        commands += [[rankflow, *daily[name], "--date", day] for name in wanted]
    rows = []
    for index, command in enumerate(commands):
        result = run_sampled(command, env, logs / f"{index:02d}-{command[1]}.log")
        rows.append(result)
        print(f"{result['command']}: exit {result['exit']}, {result['seconds']:.0f} s, peak {result['peak_gb']:.2f} GB "
              f"(largest {result['largest']} {result['largest_gb']:.2f} GB)", flush=True)
        if result["exit"] != 0:
            raise SystemExit(f"{result['command']} failed: see {logs}")
    events = DEMO["impressions_per_day"] * args.scale
    table = [f"{args.scale}x the demo: {DEMO['members'] * args.scale:,} members, {DEMO['jobs'] * args.scale:,} jobs, "
             f"{events:,} impressions a day, {args.days} days"
             + (" (an earlier run's data directory, reused)" if args.reuse else "")
             + ". Peak: RSS of the command's whole process tree, sampled every 0.25 s; largest: the biggest process "
             "at that peak.", "",
             "| command | wall s | peak tree GB | largest process at the peak |", "|---|---:|---:|---|"]
    table += [f"| `rankflow {r['command']}` | {r['seconds']:.0f} | {r['peak_gb']:.2f} | {r['largest']} "
              f"{r['largest_gb']:.2f} GB |" for r in rows]
    path = write_result(f"scale-{args.scale}x", "\n".join(table), machine)
    print("\n".join(table))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
