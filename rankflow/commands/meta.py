"""`rankflow meta --date D` (daily meta-embedding refresh) and `rankflow meta train --date D` (meta-training)."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from rankflow.commands.common import DataDir, DateOpt, EndOpt, OnlineStore, StartOpt, day_range, settings_from

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

    settings = settings_from(data_dir, online_store=online_store)
    days = day_range(day, start, end)
    with Progress(TextColumn("meta embeddings"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("refresh", total=len(days))
        for one_day in days:
            console.print_json(json.dumps(refresh_meta_embeddings(settings, one_day)))
            progress.advance(task)


@meta_app.command("train")
def train(data_dir: DataDir = None, day: DateOpt = None) -> None:
    """Meta-train on the window before --date D (warm-started from the previous meta-init), evaluate on D."""
    from rankflow.commands.common import parse_day
    from rankflow.stages.meta import train_meta
    from training.meta.config import MetaConfig

    if not day:
        raise typer.BadParameter("give --date D")
    settings = settings_from(data_dir)
    steps = MetaConfig().outer.outer_steps
    with Progress(TextColumn("meta-training"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("query loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), console=console,
                  transient=True) as progress:
        task = progress.add_task("train", total=steps, loss=float("nan"))
        result = train_meta(settings, parse_day(day),
                            progress=lambda step, loss: progress.update(task, completed=step + 1, loss=loss))
    console.print_json(json.dumps(result))
