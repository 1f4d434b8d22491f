"""`rankflow generate` (the synthetic job marketplace) and `rankflow ingest` (bring your own data)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from rankflow.commands.common import DataDir, parse_day, settings_from
from rankflow.config import GeneratorSettings

_stdout = Console()
_stderr = Console(stderr=True)


_DEFAULT = GeneratorSettings()  # what --help shows: the code's defaults, not a copy of them


def generate(
    data_dir: DataDir = None,
    members: Annotated[Optional[int], typer.Option("--members", min=1, show_default=str(_DEFAULT.members), help="Members at the start (1% more arrive each day).")] = None,
    jobs: Annotated[Optional[int], typer.Option("--jobs", min=1, show_default=str(_DEFAULT.jobs), help="Open jobs at any time (each is open 30 days).")] = None,
    days: Annotated[Optional[int], typer.Option("--days", min=1, show_default=str(_DEFAULT.days), help="Days of impressions to generate.")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", show_default=str(_DEFAULT.seed), help="Random seed: same flags and seed, identical files.")] = None,
    impressions_per_day: Annotated[Optional[int], typer.Option("--impressions-per-day", min=1, show_default=str(_DEFAULT.impressions_per_day), help="Impressions (events) per day.")] = None,
    start_date: Annotated[Optional[str], typer.Option("--start-date", show_default=_DEFAULT.start_date.isoformat(), help="First day, YYYY-MM-DD.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a data set already in the data directory: raw/ and truth/ are regenerated and the zones derived from the old raw data (features/, feast/, models/, reports/, quarantine/) are deleted.")] = False,
) -> None:
    """Generate the synthetic job marketplace (raw zone + ground truth) into the data directory.

    The defaults shown are the code's; the data directory's rankflow.yaml (`generator:`) may set others.

    A data directory that already holds data is refused unless --force, which replaces the whole data set.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from features.synthetic import DataDirInUse, check_data_dir, generate_data_set

    settings = settings_from(data_dir)
    flags = {"members": members, "jobs": jobs, "days": days, "seed": seed, "impressions_per_day": impressions_per_day,
             "start_date": parse_day(start_date, "--start-date") if start_date else None}
    generator = dataclasses.replace(settings.generator, **{k: v for k, v in flags.items() if v is not None})
    try:
        check_data_dir(settings.paths, replace=force)  # before the progress bar starts
        with Progress(TextColumn("[bold]generate[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=_stderr, transient=False) as bar:
            task = bar.add_task("starting population", total=generator.days)

            def on_day(day, done, total, events):
                bar.update(task, completed=done, description=f"{day.isoformat()} ({events:,} events)")

            summary = generate_data_set(generator, settings.paths, replace=force, progress=on_day)
    except DataDirInUse as error:
        _stderr.print(f"[bold red]generate refused:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
        _stderr.print("Nothing was changed.")
        raise typer.Exit(2) from None
    if summary["cleared"]:
        _stderr.print(f"--force: replaced the data set in {escape(str(settings.paths.root))}; deleted "
                      f"{escape(', '.join(zone + '/' for zone in summary['cleared']))}, derived from the old raw data "
                      "(rebuild them: rankflow features build, personalise, train).", highlight=False, soft_wrap=True)
    _stdout.print_json(json.dumps(summary))


def ingest(
    schema: Annotated[Path, typer.Option("--schema", help="Schema YAML: which column plays which role.")],
    members: Annotated[Path, typer.Option("--members", help="Members table (.csv, .csv.gz or .parquet).")],
    items: Annotated[Path, typer.Option("--items", help="Items (jobs) table (.csv, .csv.gz or .parquet).")],
    events: Annotated[Path, typer.Option("--events", help="Events table (.csv, .csv.gz or .parquet).")],
    data_dir: DataDir = None,
) -> None:
    """Validate your own members/items/events and write them into the raw zone (all or nothing)."""
    from features.ingest import IngestError
    from features.ingest import ingest as ingest_tables

    settings = settings_from(data_dir)
    with _stderr.status("validating and writing the raw zone..."):
        try:
            summary = ingest_tables(schema, members, items, events, settings.paths)
        except IngestError as error:
            _stderr.print(f"[bold red]ingest failed:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
            _stderr.print("The raw zone was left unchanged.")
            raise typer.Exit(2) from None
    _stdout.print_json(json.dumps(summary))


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
    app.command("ingest")(ingest)
