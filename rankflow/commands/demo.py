"""`rankflow demo`: generate the default data set and run every stage end to end, then summarise."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from rankflow.commands.common import DataDir, OnlineStore, check_online_store_answers, settings_from

console = Console()


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


def demo(
    data_dir: DataDir = None,
    online_store: OnlineStore = None,
    fresh: Annotated[bool, typer.Option("--fresh/--reuse", help=(
        "Regenerate the data set even if it exists (deletes what was derived from the old one: features, "
        "models, reports)."))] = False,
    serve_check: Annotated[bool, typer.Option("--serve/--no-serve", help="End by starting the service and ranking once.")] = True,
) -> None:
    """Run the whole loop on the default synthetic marketplace: data, features, personalisation, ranker, service."""
    from rankflow.stages import demo as demo_stage

    settings = settings_from(data_dir, online_store=online_store)
    check_online_store_answers(settings)
    started = time.perf_counter()
    steps = demo_stage.run_demo(settings, fresh=fresh, serve_check=serve_check, console=console)
    table = Table(title=f"rankflow demo — {settings.data_dir.resolve()}")
    table.add_column("stage")
    table.add_column("result")
    table.add_column("seconds", justify="right")
    table.add_column("outputs")
    for step in steps:
        table.add_row(step.name, step.result, f"{step.seconds:.1f}", step.outputs)
    console.print(table)
    console.print(f"Total {time.perf_counter() - started:.1f} s. Reports: {settings.paths.reports.resolve()}")
