"""`rankflow train`, `rankflow evaluate`, `rankflow promote`, `rankflow rollback`: the ranker stage."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from rankflow.commands.common import DataDir, DateOpt, EndOpt, StartOpt, day_range, parse_day, settings_from

console = Console()


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("evaluate")(evaluate)
    app.command("promote")(promote)
    app.command("rollback")(rollback)


def train(
    data_dir: DataDir = None,
    start: StartOpt = None,
    end: EndOpt = None,
    eval_days: Annotated[int, typer.Option("--eval-days", min=0, help="Evaluate on the N days after --end.")] = 1,
    warm_start: Annotated[bool, typer.Option("--warm-start/--full", help="Continue from the serving model, or retrain from scratch.")] = True,
    epochs: Annotated[Optional[int], typer.Option("--epochs", min=1, help="Epochs of a full retrain.")] = None,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda")] = "auto",
    promote_after: Annotated[bool, typer.Option("--promote/--no-promote", help="Promote the candidate if it beats the serving model.")] = False,
) -> None:
    """Train the ranker on --start..--end, evaluate on the following day(s), print AUC, log loss and ECE."""
    from dataclasses import replace

    from rankflow.stages import ranker as stage
    from training.ranker.train import quality_config

    if not (start and end):
        raise typer.BadParameter("give both --start D1 and --end D2")
    days = day_range(None, start, end)  # checks --end is not before --start: a usage error like the others'
    settings = settings_from(data_dir)
    config = quality_config(device=device)  # the settings chosen on the demo marketplace's validation day
    if epochs:
        config = replace(config, epochs=epochs)
    with Progress(TextColumn("training"), BarColumn(), TextColumn("step {task.completed:.0f} loss {task.fields[loss]:.4f}"),
                  TimeElapsedColumn(), console=console, transient=True) as progress:
        task = progress.add_task("train", total=None, loss=float("nan"))
        result = stage.train(settings, days[0], days[-1], eval_days, warm_start,
                             config, on_step=lambda step, loss: progress.update(task, completed=step, loss=loss))
    metrics = result["metrics"]
    console.print(f"candidate [bold]{result['tag']}[/] (warm start from {result['warm_start_from'] or 'nothing: full retrain'}) "
                  f"trained on {', '.join(result['trained_days'])} in {result['train_seconds']:.1f}s")
    if metrics:
        oracle = f"  oracle AUC {metrics['oracle_auc']:.4f}" if metrics.get("oracle_auc") else ""
        console.print(f"eval {', '.join(result['eval_days'])}: AUC {metrics['auc']:.4f}  log loss {metrics['log_loss']:.4f}  "
                      f"ECE {metrics['ece']:.4f}  NE {metrics['normalized_entropy']:.4f}{oracle}")
        if metrics.get("served_auc") is not None:
            console.print(f"as served, with the GLMix random effects of {', '.join(metrics['served_glmix_states'])}: "
                          f"AUC {metrics['served_auc']:.4f}")
    console.print(f"report: {result['report']}")
    if promote_after:
        console.print(stage.promote(settings, result["tag"]))


def evaluate(
    tag: Annotated[Optional[str], typer.Argument(help="Model tag (default: the serving ranker).")] = None,
    data_dir: DataDir = None,
    day: DateOpt = None,
) -> None:
    """Evaluate a stored ranker on one day: AUC, log loss, NE, ECE, cold/warm AUC, oracle AUC."""
    from rankflow.stages import ranker as stage

    settings = settings_from(data_dir)
    tag = tag or stage.serving_tag(settings)
    if tag is None:
        raise typer.BadParameter("no ranker is serving; give a model tag")
    if not day:
        raise typer.BadParameter("give --date D (the day to evaluate on)")
    console.print(stage.evaluate(settings, tag, parse_day(day)))


def promote(
    tag: Annotated[str, typer.Argument(help="Candidate model tag.")],
    data_dir: DataDir = None,
    margin: Annotated[float, typer.Option("--margin", help="AUC the candidate must gain over the serving model.")] = 0.001,
) -> None:
    """Promote a candidate only if it beats the serving ranker on the same evaluation day."""
    from rankflow.stages import ranker as stage

    console.print(stage.promote(settings_from(data_dir), tag, stage.PromotionPolicy(margin=margin)))


def rollback(data_dir: DataDir = None) -> None:
    """Serve the previous ranker again."""
    from rankflow.stages import ranker as stage

    console.print(stage.rollback(settings_from(data_dir)))
