"""The ranker's real training loop on one GPU: eager steps against steps replayed as CUDA graphs.

    PYTHONPATH=. python3 benchmarks/bench_ranker_train.py --training-set data/features/training_set \
        --first-day 2026-01-01 --last-day 2026-01-09 --eval-day 2026-01-10 [--batch-sizes 512 4096] [--repeats 2]

`train_ranker` (the stage's own function) on the given days with `TrainConfig(cuda_graph=...)`, the
default fused embedding optimiser, 2 epochs, no early stopping, the loss read back every `--log-every`
steps, alternating eager and graph runs `--repeats` times. Unlike bench_ranker.py (one step on a fixed
synthetic batch), this includes the Parquet loader, the shuffle, the host-to-device copies and the
padding. Columns: the whole run (the first epoch also pays Triton's compilation and the graph captures),
the second epoch alone (steady state), the mean logged loss of the last 50 records and the AUC of the
trained (uncalibrated) model on the evaluation day. The table is printed and written to
benchmarks/results/ranker-train-<machine>.md.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import warnings
from datetime import date, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe_machine, write_result  # noqa: E402


def second_epoch_rows_per_second(history: list[dict]) -> float:
    last = [record for record in history if record["epoch"] == history[-1]["epoch"]]
    if len(last) < 2:
        return float("nan")
    return (last[-1]["rows"] - last[0]["rows"]) / (last[-1]["seconds"] - last[0]["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--training-set", type=Path, required=True)
    parser.add_argument("--first-day", required=True)
    parser.add_argument("--last-day", required=True)
    parser.add_argument("--eval-day", required=True)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[512, 4096])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--embedding-weight-decay", type=float, nargs="+", default=[0.0, 1e-3],
                        help="L2 on embedding rows (quality_config, what `rankflow train` uses, has 1e-3)")
    parser.add_argument("--out-dir", type=Path, default=None, help="also copy the result file here")
    args = parser.parse_args()

    import torch

    from training.ranker import data
    from training.ranker.evaluate import auc
    from training.ranker.model import RankerConfig
    from training.ranker.train import TrainConfig, predict_logits, train_ranker

    if not torch.cuda.is_available():
        raise SystemExit("bench_ranker_train.py compares CUDA graphs with eager steps: it needs a CUDA GPU")
    warnings.simplefilter("ignore")  # the early days' absent meta_embedding column, once per file
    first, last = date.fromisoformat(args.first_day), date.fromisoformat(args.last_day)
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    spec = data.read_spec(args.training_set)
    model_config = RankerConfig.from_spec(spec)
    eval_rows = data.load_rows(data.day_files(args.training_set, [date.fromisoformat(args.eval_day)]), spec, model_config)
    lines = []
    runs = itertools.product(args.embedding_weight_decay, args.batch_sizes, range(args.repeats), (False, True))
    for decay, batch_size, _, graphed in runs:
        config = TrainConfig(epochs=2, early_stopping=False, batch_size=batch_size, cuda_graph=graphed,
                             log_every=args.log_every, embedding_weight_decay=decay)
        result = train_ranker(args.training_set, days, model_config, config)
        losses = [record["loss"] for record in result.history]
        score = auc(predict_logits(result.model, eval_rows).numpy(), eval_rows.label.numpy())
        line = (f"| {decay:g} | {batch_size} | {'CUDA graphs' if graphed else 'eager'} | {result.rows:,} "
                f"| {result.seconds:.2f} | {result.samples_per_second:,.0f} "
                f"| {second_epoch_rows_per_second(result.history):,.0f} | {result.graphed_steps} of "
                f"{result.history[-1]['step']} | {sum(losses[-50:]) / len(losses[-50:]):.4f} | {score:.4f} |")
        print(line, flush=True)
        lines.append(line)
    table = "\n".join([
        f"Training set {args.training_set.name}, days {args.first_day}..{args.last_day}, evaluation day {args.eval_day}; "
        f"`train_ranker` with `TrainConfig(epochs=2, early_stopping=False, batch_size=B, cuda_graph=..., "
        f"embedding_weight_decay=L2)`, fused embedding optimiser, bf16 autocast, loss read back every {args.log_every} steps; runs alternate eager / graphs.",
        "",
        "| embedding L2 | batch | steps | training rows | seconds | rows/s, whole run | rows/s, second epoch | graphed steps "
        "| mean loss, last 50 records | next-day AUC (uncalibrated) |",
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *lines,
    ])
    target = write_result("ranker-train", table, describe_machine(), copy_to=args.out_dir)
    print(table)
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
