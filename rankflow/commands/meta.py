"""`rankflow meta --date D` (daily meta-embedding refresh) and `rankflow meta train --date D` (meta-training)."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from rankflow.commands.common import (DataDir, DateOpt, EndOpt, OnlineStore, StartOpt, check_online_store_answers,
                                      day_range, print_json, settings_from)

console = Console()
meta_app = typer.Typer(help="Meta-learned personalisation (LiMAML): meta embeddings per member.",
                       invoke_without_command=True, no_args_is_help=False)


def register(app: typer.Typer) -> None:
    app.add_typer(meta_app, name="meta")


@meta_app.callback()
def refresh(
    ctx: typer.Context,
    data_dir: DataDir = None,
    online_store: OnlineStore = None,
    day: DateOpt = None,
    start: StartOpt = None,
    end: EndOpt = None,
) -> None:
    """Refresh the meta embeddings of every member active on --date D (or each day of --start..--end)."""
    if ctx.invoked_subcommand is not None:
        return
    from rankflow.stages.meta import refresh_meta_embeddings

    days = day_range(day, start, end)
    settings = settings_from(data_dir, reads=(), online_store=online_store)
    check_online_store_answers(settings)
    with Progress(TextColumn("meta embeddings"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("refresh", total=len(days))
        for one_day in days:
            print_json(console, refresh_meta_embeddings(settings, one_day))
            progress.advance(task)


@meta_app.command("train")
def train(data_dir: DataDir = None, day: DateOpt = None) -> None:
    """Meta-train on the window before --date D (warm-started from the previous meta-init), evaluate on D."""
    from rankflow.commands.common import parse_day
    from rankflow.stages.meta import train_meta
    from training.meta.config import MetaConfig

    if not day:
        raise typer.BadParameter("give --date D")
    meta_day = parse_day(day)
    settings = settings_from(data_dir, reads=())
    steps = MetaConfig().outer.outer_steps
    with Progress(TextColumn("meta-training"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("query loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), console=console,
                  transient=True) as progress:
        task = progress.add_task("train", total=steps, loss=float("nan"))
        result = train_meta(settings, meta_day,
                            progress=lambda step, loss: progress.update(task, completed=step + 1, loss=loss))
    buckets = result["metrics"]["eval"]
    if buckets:
        console.print(f"eval on {result['day']}: AUC of each member's events that day, by how many events of theirs "
                      "the sub-network adapts on (support events):", soft_wrap=True, highlight=False)
        width = max(len(bucket["bucket"]) for bucket in buckets)
        for bucket in buckets:
            auc = {key: "n/a" if bucket[key] != bucket[key] else f"{bucket[key]:.4f}"  # NaN: no member with both labels
                   for key in ("adapted", "meta_init", "random_init")}
            console.print(f"  {bucket['bucket']:<{width}}  AUC adapted {auc['adapted']}  meta-init {auc['meta_init']}  "
                          f"random-init + k steps {auc['random_init']}  ({bucket['members']} members with both labels, "
                          f"{bucket['events']} events)", soft_wrap=True, highlight=False)
    print_json(console, {**result, "metrics": {**result["metrics"], "eval_metric": "auc"}})
