"""`rankflow personalise`: the daily GLMix update of member and job random effects (one day or a range)."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from rankflow.commands.common import (DataDir, DateOpt, EndOpt, OnlineStore, StartOpt, check_online_store_answers,
                                      day_range, print_json, settings_from)

console = Console()


def register(app: typer.Typer) -> None:
    app.command("personalise")(personalise)


def personalise(
    data_dir: DataDir = None,
    online_store: OnlineStore = None,
    date: DateOpt = None,
    start: StartOpt = None,
    end: EndOpt = None,
) -> None:
    """Update the GLMix posteriors for --date D (or each day of --start..--end, in order) and publish them."""
    from rankflow.stages.personalise import update_random_effects

    days = day_range(date, start, end)
    settings = settings_from(data_dir, reads=(), online_store=online_store)
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
