"""`rankflow personalise`: the daily GLMix update of member and job random effects (one day or a range);
`rankflow prune`: retention of the daily GLMix states."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from rankflow.commands.common import (DataDir, DateOpt, EndOpt, OnlineStore, StartOpt, check_online_store_answers,
                                      day_range, print_json, settings_from)

console = Console()


KeepDays = Annotated[Optional[int], typer.Option(
    "--keep-days", min=1, help="Keep the newest N daily GLMix states (and their BentoML models); delete older ones "
                               "(default: glmix_keep_days in rankflow.yaml / RANKFLOW_GLMIX_KEEP_DAYS, else keep all).")]


def register(app: typer.Typer) -> None:
    app.command("personalise")(personalise)
    app.command("prune")(prune)


def personalise(
    data_dir: DataDir = None,
    online_store: OnlineStore = None,
    date: DateOpt = None,
    start: StartOpt = None,
    end: EndOpt = None,
    keep_days: KeepDays = None,
) -> None:
    """Update the GLMix posteriors for --date D (or each day of --start..--end, in order) and publish them.

    With --keep-days N (or glmix_keep_days set), only the newest N states are kept after each day."""
    from rankflow.stages.personalise import update_random_effects

    days = day_range(date, start, end)
    settings = settings_from(data_dir, reads=(), online_store=online_store, glmix_keep_days=keep_days)
    check_online_store_answers(settings)
    results = []
    with Progress(TextColumn("personalise {task.fields[day]}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as progress:
        task = progress.add_task("personalise", total=len(days), day="")
        for day in days:
            progress.update(task, day=day.isoformat())
            results.append(update_random_effects(settings, day))
            progress.advance(task)
    for result in results:
        member, job = result["summary"]["member"], result["summary"]["job"]
        console.print(f"{result['day']}: {result['members_updated']} members, {result['jobs_updated']} jobs updated "
                      f"(prior {result['prior_date'] or 'population'}, global part {result['global_part']}); "
                      f"events dropped {member['events_dropped']}, Newton steps <= "
                      f"{max(member['newton_iterations_max'], job['newton_iterations_max'])}, "
                      f"not converged {member['not_converged'] + job['not_converged']}")
    print_json(console, results[-1] if len(results) == 1 else [r["day"] for r in results])


def prune(
    data_dir: DataDir = None,
    keep_days: KeepDays = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be deleted; delete nothing.")] = False,
) -> None:
    """Delete all but the newest N daily GLMix states and their BentoML models (those serving.json names stay).

    Days whose prior state is deleted can no longer be re-run (`rankflow personalise` refuses them, naming why)."""
    from rankflow.stages.personalise import prune_states

    settings = settings_from(data_dir, reads=(), glmix_keep_days=keep_days)
    if settings.glmix_keep_days is None:
        raise typer.BadParameter("give --keep-days N, or set glmix_keep_days in rankflow.yaml or "
                                 "RANKFLOW_GLMIX_KEEP_DAYS", param_hint="--keep-days")
    result = prune_states(settings, settings.glmix_keep_days, dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    if result["pruned"]:
        console.print(f"{verb} the GLMix states of {result['pruned'][0]}..{result['pruned'][-1]} "
                      f"({len(result['pruned'])}, {result['state_bytes'] / 1e6:.1f} MB of state files) and {len(result['models_deleted'])} "
                      f"BentoML model(s); kept {result['kept'][0]}..{result['kept'][-1]}"
                      + (f" and {len(result['models_pinned'])} model(s) serving.json names" if result["models_pinned"]
                         else ""))
    else:
        console.print(f"nothing to delete: {len(result['kept'])} state(s), keeping {result['keep']}")
    print_json(console, result)
