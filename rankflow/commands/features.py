"""`rankflow features build | materialize | lookup`: the feature stages over a day or a range of days."""

from __future__ import annotations

import logging
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from rankflow.commands.common import (DataDir, DateOpt, EndOpt, OfflineStore, OnlineStore, StartOpt,
                                      check_online_store_answers, day_range, print_json, settings_from)

_stdout = Console()
_stderr = Console(stderr=True)
features_app = typer.Typer(help="Spark feature tables, the Feast store and online lookups.", no_args_is_help=True)


class _SummaryPrintedAtTheEnd(logging.Filter):
    """Drops the log record of a failed suite's summary: the command prints that summary itself, once, at the end."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.WARNING and " FAILED (" in record.getMessage())


STEP_NAMES = {"validate": "validating raw events", "build": "Spark features, validation, training set",
              "materialize": "writing the online store"}


def _run(command: str, steps: tuple[str, ...], day: str | None, start: str | None, end: str | None, data_dir,
         online_store, offline_store) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from rankflow.stages.features import run_range
    from validation import ValidationFailed

    days = day_range(day, start, end)
    settings = settings_from(data_dir, reads=("features",) if steps == ("materialize",) else ("raw",),
                             online_store=online_store, offline_store=offline_store)
    if "materialize" in steps:
        check_online_store_answers(settings)
    results = []
    summary_filter, checkpoint_log = _SummaryPrintedAtTheEnd(), logging.getLogger("validation.checkpoint")
    checkpoint_log.addFilter(summary_filter)
    with Progress(TextColumn(f"[bold]features {'+'.join(steps)}[/] {{task.description}}"), BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(), console=_stderr) as bar:
        task = bar.add_task(days[0].isoformat(), total=len(days))

        def on_day(finished, outcome):
            results.append(outcome)
            bar.update(task, advance=1, description=f"{finished.isoformat()} done")

        def on_step(day, step, part=None):  # a large day is minutes of work: say which step of which day runs
            bar.update(task, description=f"{day.isoformat()}: {part or STEP_NAMES.get(step, step)}")

        try:
            run_range(settings, days, steps=steps, on_day=on_day, on_step=on_step, release_spark=True)
        except ValidationFailed as failure:
            bar.stop()
            _stderr.print(f"[bold red]rankflow features {command} failed:[/] validation failed: "
                          f"{escape(failure.summary)}", highlight=False, soft_wrap=True)
            _stderr.print(escape(_after_failure(settings, failure, [r["day"] for r in results])), highlight=False,
                          soft_wrap=True)
            raise typer.Exit(1) from None
        finally:
            checkpoint_log.removeFilter(summary_filter)
    print_json(_stdout, results)


def _after_failure(settings, failure, built_days: list[str]) -> str:
    """What a failed validation left where, and how to go on: the raw partition is moved aside, features are not."""
    paths, day = settings.paths, failure.day
    rerun = f"`rankflow features build --date {day}`"
    earlier = f"Built before it in this run: {', '.join(built_days)}. " if built_days else ""
    kept = f"An earlier build of {day}, if any, stays as it was"
    if failure.suite == "raw_events":
        quarantined = paths.quarantine("raw_events", day)
        moved = (f"The raw events of {day} were moved to {quarantined / 'partition'} (the report is beside it), "
                 f"so {paths.raw_partition('events', day)} is gone until you restore it. "
                 if quarantined.is_dir() else "")
        restore = (f"To go on: fix the data and move it back (mv {quarantined / 'partition'} "
                   f"{paths.raw_partition('events', day)}) or re-ingest the day, then re-run {rerun}."
                   if quarantined.is_dir() else f"Fix the raw events of {day}, then re-run {rerun}.")
        return f"{earlier}{moved}Nothing of {day} was written to features/. {kept}. {restore}"
    table = failure.suite.removeprefix("features.")
    quarantined = paths.quarantine(f"features/{table}", day)
    where = (f"; the table that failed is under {quarantined} with its report" if quarantined.is_dir() else "")
    return (f"{earlier}The feature tables and training set of {day} were not written (only its window counts under "
            f"{paths.features / '_windows'}){where}. {kept}. Fix the cause, then re-run {rerun}.")


def build(day: DateOpt = None, start: StartOpt = None, end: EndOpt = None, data_dir: DataDir = None,
          online_store: OnlineStore = None, offline_store: OfflineStore = None) -> None:
    """Validate raw events and build the day's feature tables and training set (days in order)."""
    _run("build", ("validate", "build"), day, start, end, data_dir, online_store, offline_store)


def materialize(day: DateOpt = None, start: StartOpt = None, end: EndOpt = None, data_dir: DataDir = None,
                online_store: OnlineStore = None, offline_store: OfflineStore = None) -> None:
    """Push built days to the online store (an older day never replaces newer online values)."""
    _run("materialize", ("materialize",), day, start, end, data_dir, online_store, offline_store)


def lookup(member_id: Annotated[int, typer.Option("--member-id", help="Member to look up.")],
           item_id: Annotated[Optional[int], typer.Option("--item-id", help="Also a job's features.")] = None,
           data_dir: DataDir = None, online_store: OnlineStore = None) -> None:
    """Print a member's online features (and a job's with --item-id) as the service reads them."""
    from features.store import feature_store

    settings = settings_from(data_dir, reads=("feast",), online_store=online_store)
    check_online_store_answers(settings)
    store = feature_store(settings)
    views = ["member_features", "member_affinities", "glmix_member", "meta_embedding"]
    row = {"member_id": member_id}
    if item_id is not None:
        views += ["job_features", "glmix_job"]
        row["item_id"] = item_id
    refs = [f"{v}:{f.name}" for v in views for f in store.get_feature_view(v).features]
    values = {k: v[0] for k, v in store.get_online_features(features=refs, entity_rows=[row]).to_dict().items()}
    print_json(_stdout, values)
    if all(value is None for key, value in values.items() if key not in row):
        _stderr.print(f"no online values for {row} in {settings.online_store}: an unknown id, or no day materialised "
                      "for it yet (`rankflow features materialize --date D`)", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    features_app.command("build")(build)
    features_app.command("materialize")(materialize)
    features_app.command("lookup")(lookup)
    app.add_typer(features_app, name="features")
