"""`rankflow train`, `rankflow evaluate`, `rankflow promote`, `rankflow rollback`: the ranker stage."""

from __future__ import annotations

from typing import Annotated, Literal, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from rankflow.commands.common import DataDir, DateOpt, EndOpt, StartOpt, day_range, parse_day, print_json, settings_from

console = Console()

# What the other models in the store are, for a tag that names one of them where a ranker is expected.
_OTHER_MODELS = {"rankflow-meta": "the LiMAML meta-initialisation that `rankflow meta train` saves",
                 "rankflow-glmix": "the GLMix random effects that `rankflow personalise` saves"}


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("evaluate")(evaluate)
    app.command("promote")(promote)
    app.command("rollback")(rollback)


def _check_device(device: str) -> str:
    """--device cuda needs a CUDA device: a usage error now, not an assertion deep inside training."""
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise typer.BadParameter("'cuda': torch sees no CUDA device here; use 'auto' or 'cpu'",
                                     param_hint="--device")
    return device


def _ranker_tag(settings, tag: str) -> str:
    """A rankflow-ranker tag from TAG: "rankflow-ranker:VERSION", a bare VERSION, or "rankflow-ranker" (the newest).

    A tag of another model (the meta-init, the GLMix state) is a usage error that says what that model is.
    """
    from rankflow.stages import ranker as stage

    name, _, version = tag.partition(":")
    if not version and name not in (stage.MODEL_NAME, *_OTHER_MODELS):  # a bare version
        name, version = stage.MODEL_NAME, name
        holders = {model.tag.name: str(model.tag) for model in stage.model_store(settings).list()
                   if model.tag.version == version}
        if holders and stage.MODEL_NAME not in holders:  # the version of another model: said below
            name = next(iter(holders))
            tag = holders[name]
    if name in _OTHER_MODELS:
        raise typer.BadParameter(f"{tag} is not a {stage.MODEL_NAME} model but a {name} model, {_OTHER_MODELS[name]}; "
                                 f"give {stage.MODEL_NAME}:VERSION", param_hint="TAG")
    if name != stage.MODEL_NAME:
        raise typer.BadParameter(f"{tag} is not a {stage.MODEL_NAME} model; give {stage.MODEL_NAME}:VERSION "
                                 "(or the bare VERSION)", param_hint="TAG")
    return f"{name}:{version}" if version else name


Tag = Annotated[str, typer.Argument(metavar="TAG", help="rankflow-ranker:VERSION, or the bare VERSION.")]


def train(
    data_dir: DataDir = None,
    start: StartOpt = None,
    end: EndOpt = None,
    eval_days: Annotated[int, typer.Option("--eval-days", min=0, help="Evaluate on the N days after --end.")] = 1,
    warm_start: Annotated[bool, typer.Option(
        "--warm-start/--full", help="Continue from the serving model on the days after its own (at least --end), "
                                    "or retrain from scratch on --start..--end.")] = True,
    epochs: Annotated[Optional[int], typer.Option("--epochs", min=1, help="Epochs of a full retrain.")] = None,
    device: Annotated[Literal["auto", "cpu", "cuda"], typer.Option(
        "--device", callback=_check_device, help="Where to train: auto (CUDA when there is one), cpu or cuda.",
    )] = "auto",
    promote_after: Annotated[bool, typer.Option("--promote/--no-promote", help="Promote the candidate if it beats the serving model.")] = False,
) -> None:
    """Train the ranker on --start..--end, evaluate on the following day(s), print AUC, log loss and ECE."""
    from dataclasses import replace

    from rankflow.stages import ranker as stage
    from training.ranker.train import quality_config

    if not (start and end):
        raise typer.BadParameter("give both --start D1 and --end D2")
    days = day_range(None, start, end)  # checks --end is not before --start: a usage error like the others'
    settings = settings_from(data_dir, reads=())
    config = quality_config(device=device)  # the settings chosen on the demo marketplace's validation day
    if epochs:
        config = replace(config, epochs=epochs)
    with Progress(TextColumn("training"), BarColumn(), TextColumn("step {task.completed:.0f} loss {task.fields[loss]:.4f}"),
                  TimeElapsedColumn(), console=console, transient=True) as progress:
        task = progress.add_task("train", total=None, loss=float("nan"))
        result = stage.train(settings, days[0], days[-1], eval_days, warm_start,
                             config, on_step=lambda step, loss: progress.update(task, completed=step, loss=loss))
    metrics = result["metrics"]
    if result["warm_start_from"]:
        how = f"warm start from {result['warm_start_from']}"
    else:
        reason = result.get("full_retrain_reason")
        how = f"full retrain: {reason}" if reason else "full retrain"
    console.print(f"candidate [bold]{result['tag']}[/] ({how}) "
                  f"trained on {', '.join(result['trained_days'])} in {result['train_seconds']:.1f}s", soft_wrap=True)
    if result.get("trained_days_note"):
        console.print(f"  ({result['trained_days_note']})", soft_wrap=True, highlight=False)
    if metrics:
        oracle = f"  oracle AUC {metrics['oracle_auc']:.4f}" if metrics.get("oracle_auc") else ""
        console.print(f"eval {', '.join(result['eval_days'])}: AUC {metrics['auc']:.4f}  log loss {metrics['log_loss']:.4f}  "
                      f"ECE {metrics['ece']:.4f}  NE {metrics['normalized_entropy']:.4f}{oracle}", soft_wrap=True)
        useless = stage.PromotionPolicy().useless(metrics)
        if useless:
            console.print(f"[yellow]warning:[/] {useless}: `rankflow promote` refuses this candidate", soft_wrap=True,
                          highlight=False)
        elif (metrics.get("normalized_entropy") or 0.0) >= 1.0:
            console.print(f"[yellow]warning:[/] normalised entropy {metrics['normalized_entropy']:.4f} >= 1: its "
                          "probabilities are worse than the base rate's (it still ranks better than chance)",
                          soft_wrap=True, highlight=False)
        if metrics.get("served_auc") is not None:
            console.print(f"as served, with the GLMix random effects of {', '.join(metrics['served_glmix_states'])}: "
                          f"AUC {metrics['served_auc']:.4f}", soft_wrap=True)
    elif eval_days == 0:
        console.print("not evaluated (--eval-days 0)")
    else:
        console.print(f"not evaluated: no training-set partition in the {eval_days} day(s) after {days[-1]}")
    console.print(f"report: {result['report']}", soft_wrap=True)
    if promote_after:
        print_json(console, stage.promote(settings, result["tag"]))


def evaluate(
    tag: Annotated[Optional[str], typer.Argument(
        metavar="TAG", help="rankflow-ranker:VERSION or the bare VERSION (default: the serving ranker).")] = None,
    data_dir: DataDir = None,
    day: DateOpt = None,
) -> None:
    """Evaluate a stored ranker on one day: AUC, log loss, NE, ECE, cold/warm AUC, oracle AUC (JSON)."""
    from rankflow.stages import ranker as stage

    if not day:
        raise typer.BadParameter("give --date D (the day to evaluate on)")
    evaluation_day = parse_day(day)
    settings = settings_from(data_dir, reads=())
    tag = _ranker_tag(settings, tag) if tag else stage.serving_tag(settings)
    if tag is None:
        raise typer.BadParameter("no ranker is serving; give a model tag")
    print_json(console, stage.evaluate(settings, tag, evaluation_day))


def promote(
    tag: Tag,
    data_dir: DataDir = None,
    margin: Annotated[float, typer.Option("--margin", help="AUC the candidate must gain over the serving model.")] = 0.001,
) -> None:
    """Promote a candidate ranker only if it beats the serving one on the same evaluation day (JSON)."""
    from rankflow.stages import ranker as stage

    settings = settings_from(data_dir, reads=())
    print_json(console, stage.promote(settings, _ranker_tag(settings, tag), stage.PromotionPolicy(margin=margin)))


def rollback(data_dir: DataDir = None) -> None:
    """Serve the previous ranker again (JSON)."""
    from rankflow.stages import ranker as stage

    print_json(console, stage.rollback(settings_from(data_dir, reads=())))
