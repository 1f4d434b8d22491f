"""Options shared by every subcommand, and the one place CLI flags become Settings."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path
from typing import Annotated, Optional

import typer

from rankflow.config import Settings, load_settings
from rankflow.logs import configure_logging

DataDir = Annotated[
    Optional[Path],
    typer.Option("--data-dir", help="Data directory (default: $RANKFLOW_DATA_DIR or ./data).", show_default=False),
]
OnlineStore = Annotated[
    Optional[str],
    typer.Option("--online-store", help="'sqlite' (default) or a Redis URL, e.g. redis://localhost:6379/0."),
]
DateOpt = Annotated[Optional[str], typer.Option("--date", help="Logical date YYYY-MM-DD.")]
StartOpt = Annotated[Optional[str], typer.Option("--start", help="First logical date YYYY-MM-DD (inclusive).")]
EndOpt = Annotated[Optional[str], typer.Option("--end", help="Last logical date YYYY-MM-DD (inclusive).")]


def settings_from(data_dir: Path | None, **overrides) -> Settings:
    """Configure logging and read the configuration once, at the CLI boundary."""
    configure_logging()
    return load_settings(data_dir, **overrides)


def parse_day(value: str, flag: str = "--date") -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"expected YYYY-MM-DD, got {value!r}", param_hint=flag) from None


def day_range(day: str | None, start: str | None, end: str | None) -> list[date]:
    """`--date D` or `--start D1 --end D2` (inclusive) as a list of days, in order."""
    if day and (start or end):
        raise typer.BadParameter("give either --date or --start/--end, not both")
    if day:
        return [parse_day(day)]
    if not (start and end):
        raise typer.BadParameter("give --date D or both --start D1 and --end D2")
    first, last = parse_day(start, "--start"), parse_day(end, "--end")
    if last < first:
        raise typer.BadParameter(f"--end {last} is before --start {first}")
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]
