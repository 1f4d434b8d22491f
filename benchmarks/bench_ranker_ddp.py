"""One GPU against `torchrun --nproc_per_node=2`: the same training script, data and settings (issue 6, line 4).

    PYTHONPATH=. python3 benchmarks/bench_ranker_ddp.py --training-set data/features/training_set \
        --first-day 2026-01-01 --last-day 2026-01-09 [--epochs 4] [--batch-size 2048] [--runs 2] [--model-config JSON]

Runs `python -m training.ranker.train` once in one process and once under torchrun with two processes
(NCCL on GPUs, gloo on CPU), `--runs` times each, alternating, for each of `--modes`: `graph` (both
sides replay CUDA graphs, the default of the script on a GPU) and `eager` (`--cuda-graph false` on both).
The first pair also pays Triton's compilation, so the table keeps every run. Early stopping is off
(every run trains `--epochs` epochs). Both log the loss every `--log-every` steps (the global batch:
under torchrun each process takes half of it and the gradients are averaged), and the table compares
the two curves at those steps. Logging every step (`--log-every 1`) measures something else: each step
then waits for the one before it to finish on the GPU (the loss is read back one step late), and under
torchrun adds an all-reduce of the loss. Throughput = training rows / training seconds as the script
reports it (start-up, the first epoch's file reading, warm-up steps and captures included), and rows /
seconds after the first epoch (the steady state). The tables are printed and written to
benchmarks/results/ranker-ddp-<machine>.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import REPO_ROOT, describe_machine, write_result  # noqa: E402


def train(args: argparse.Namespace, processes: int, graphs: bool, out: Path) -> dict:
    common = ["--training-set", str(args.training_set), "--first-day", args.first_day, "--last-day", args.last_day,
              "--epochs", str(args.epochs), "--early-stopping", "false", "--batch-size", str(args.batch_size), "--log-every", str(args.log_every),
              "--device", args.device, "--out", str(out), "--cuda-graph", "true" if graphs else "false",
              "--model-config", args.model_config]
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", f"--nproc_per_node={processes}", "--master_port=29541"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run([*launcher, "-m", "training.ranker.train", *common], env=env, capture_output=True,
                          text=True, timeout=args.timeout)
    if done.returncode != 0:
        raise SystemExit(f"{processes} process(es) failed:\n{done.stderr[-3000:]}")
    return json.loads((out / "history.json").read_text())


def steady_rate(history: list[dict]) -> float:
    """Rows per second from the first epoch's last logged step to the run's last: the steady state, without
    start-up, Triton's loading, the warm-up steps and graph captures, and the reading and encoding of the files
    (cached after the first epoch)."""
    start = max((h for h in history if h["epoch"] == 0), key=lambda h: h["step"])
    return (history[-1]["rows"] - start["rows"]) / (history[-1]["seconds"] - start["seconds"])


def compare(args: argparse.Namespace, graphs: bool, scratch: Path) -> str:
    """`--runs` pairs (one process, then two) in one mode; returns the mode's table."""
    rows, curves = [], None
    for run in range(args.runs):
        one = train(args, 1, graphs, scratch / f"one-{run}")
        two = train(args, 2, graphs, scratch / f"two-{run}")
        losses_one = [h["loss"] for h in one["history"]]
        losses_two = [h["loss"] for h in two["history"]]
        if len(losses_one) != len(losses_two):
            raise SystemExit(f"the curves have {len(losses_one)} and {len(losses_two)} steps")
        diff = max(abs(a - b) for a, b in zip(losses_one, losses_two))
        tail = min(10, len(losses_one))
        rows.append((run + 1, one["rows"], two["rows"], len(losses_one), diff,
                     sum(losses_one[-tail:]) / tail, sum(losses_two[-tail:]) / tail,
                     one["samples_per_second"], two["samples_per_second"],
                     steady_rate(one["history"]), steady_rate(two["history"])))
        print("{}: run {}: rows {:,} / {:,}, {} steps, max |loss diff| {:.2e}, last-10 loss {:.4f} / {:.4f}, "
              "samples/s {:,.0f} / {:,.0f}, after epoch 1 {:,.0f} / {:,.0f}".format("graphs" if graphs else "eager",
                                                                                  *rows[-1]), flush=True)
        curves = (losses_one, losses_two)
    stride = max(1, 20 // args.log_every)  # printed records: about every 20 steps
    return "\n".join([
        f"### {'CUDA graphs on both sides' if graphs else 'Eager steps on both sides (--cuda-graph false)'}",
        "",
        f"Training set {args.training_set.name}, days {args.first_day}..{args.last_day}, {args.epochs} epoch(s), "
        f"global batch {args.batch_size}, device {args.device}, model {args.model_config}, loss logged every "
        f"{args.log_every} step(s); "
        "`python -m training.ranker.train` in one process "
        "against `torchrun --nproc_per_node=2` (each process half of every global batch, gradients averaged, "
        "embedding rows gathered). Run 1 includes Triton's compilation in both.",
        "",
        "| run | rows, 1 process | rows, 2 processes | logged steps | max abs loss difference | mean loss last 10, "
        "1 / 2 | samples/s, 1 process | samples/s, 2 processes | after epoch 1, 1 process | after epoch 1, 2 processes |",
        "| ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
        *("| {} | {:,} | {:,} | {} | {:.2e} | {:.4f} / {:.4f} | {:,.0f} | {:,.0f} | {:,.0f} | {:,.0f} |".format(*r)
          for r in rows),
        "",
        f"Loss every {stride * args.log_every} steps (last run), 1 process / 2 processes: "
        + ", ".join(f"{a:.4f}/{b:.4f}" for a, b in list(zip(*curves))[::stride]),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--training-set", type=Path, required=True)
    parser.add_argument("--first-day", required=True)
    parser.add_argument("--last-day", required=True)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--device", default="cuda", help="cuda (NCCL) or cpu (gloo)")
    parser.add_argument("--runs", type=int, default=2, help="pairs of runs (one process, then two)")
    parser.add_argument("--timeout", type=int, default=1200)
    parser.add_argument("--modes", default="graph,eager",
                        help="comma-separated: graph (both sides replay CUDA graphs) and/or eager (both eager)")
    parser.add_argument("--out-dir", type=Path, default=None, help="also copy the result file here")
    parser.add_argument("--log-every", type=int, default=10, help="steps between loss records (the script's default)")
    parser.add_argument("--model-config", default="{}",
                        help="JSON of RankerConfig architecture fields (default: the demo ranker), e.g. a wider tower")
    args = parser.parse_args()

    machine = describe_machine()
    tables = []
    with tempfile.TemporaryDirectory(prefix="rankflow-ddp-") as scratch:
        for mode in args.modes.split(","):
            if mode not in ("graph", "eager"):
                raise SystemExit(f"--modes: unknown mode {mode!r} (graph, eager)")
            tables.append(compare(args, mode == "graph", Path(scratch) / mode))
    table = "\n\n".join(tables)
    target = write_result("ranker-ddp", table, machine, copy_to=args.out_dir)
    print(table)
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
