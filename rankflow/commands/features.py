"""`rankflow features build | materialize | lookup`: the feature stages over a day or a range of days."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from rankflow.commands.common import DataDir, DateOpt, EndOpt, OnlineStore, StartOpt, day_range, settings_from

_stdout = Console()
_stderr = Console(stderr=True)
features_app = typer.Typer(help="Spark feature tables, the Feast store and online lookups.", no_args_is_help=True)

OfflineStore = Annotated[Optional[str], typer.Option("--offline-store", help="'file' (default) or 'spark'.")]


def _run(steps: tuple[str, ...], day: str | None, start: str | None, end: str | None, data_dir, online_store,
         offline_store) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from rankflow.stages.features import run_range
    from validation import ValidationFailed

    days = day_range(day, start, end)
    settings = settings_from(data_dir, online_store=online_store, offline_store=offline_store)
    results = []
    with Progress(TextColumn(f"[bold]features {'+'.join(steps)}[/] {{task.description}}"), BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(), console=_stderr) as bar:
        task = bar.add_task(days[0].isoformat(), total=len(days))

        def on_day(finished, outcome):
            results.append(outcome)
            bar.update(task, advance=1, description=f"{finished.isoformat()} done")

        try:
            run_range(settings, days, steps=steps, on_day=on_day)
        except ValidationFailed as failure:
            bar.stop()
            _stderr.print(f"[bold red]validation failed:[/] {escape(failure.summary)}", highlight=False, soft_wrap=True)
            _stderr.print("Nothing was written for that day; the failing data is under "
                          f"{settings.paths.root / 'quarantine'} with its report. Fix it and re-run the day.")
            raise typer.Exit(1) from None
        except FileNotFoundError as error:
            bar.stop()
            _stderr.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
    _stdout.print_json(json.dumps(results, default=str))


def build(day: DateOpt = None, start: StartOpt = None, end: EndOpt = None, data_dir: DataDir = None,
          online_store: OnlineStore = None, offline_store: OfflineStore = None) -> None:
    """Validate raw events and build the day's feature tables and training set (days in order)."""
    _run(("validate", "build"), day, start, end, data_dir, online_store, offline_store)


def materialize(day: DateOpt = None, start: StartOpt = None, end: EndOpt = None, data_dir: DataDir = None,
                online_store: OnlineStore = None, offline_store: OfflineStore = None) -> None:
    """Push built days to the online store (an older day never replaces newer online values)."""
    _run(("materialize",), day, start, end, data_dir, online_store, offline_store)


def lookup(member_id: Annotated[int, typer.Option("--member-id", help="Member to look up.")],
           item_id: Annotated[Optional[int], typer.Option("--item-id", help="Also a job's features.")] = None,
           data_dir: DataDir = None, online_store: OnlineStore = None) -> None:
    """Print a member's online features (and a job's with --item-id) as the service reads them."""
    from features.store import feature_store

    settings = settings_from(data_dir, online_store=online_store)
    store = feature_store(settings)
    views = ["member_features", "member_affinities", "glmix_member", "meta_embedding"]
    row = {"member_id": member_id}
    if item_id is not None:
        views += ["job_features", "glmix_job"]
        row["item_id"] = item_id
    refs = [f"{v}:{f.name}" for v in views for f in store.get_feature_view(v).features]
    values = {k: v[0] for k, v in store.get_online_features(features=refs, entity_rows=[row]).to_dict().items()}
    _stdout.print_json(json.dumps(values, default=str))
    if all(value is None for key, value in values.items() if key not in row):
        _stderr.print(f"no online values for {row} in {settings.online_store}: an unknown id, or no day materialised "
                      "for it yet (`rankflow features materialize --date D`)", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    features_app.command("build")(build)
    features_app.command("materialize")(materialize)
    features_app.command("lookup")(lookup)
    app.add_typer(features_app, name="features")
