"""Options shared by every subcommand, and the one place CLI flags become Settings."""

from __future__ import annotations

import json
import math
from datetime import date, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer

from rankflow.config import Settings, check_online_store, load_settings
from rankflow.logs import configure_logging
from rankflow.paths import recover_replacement


def _online_store_flag(value: str | None) -> str | None:
    """--online-store is checked where it enters, before any work (a usage error, exit status 2)."""
    if value is None:
        return None
    try:
        return check_online_store(value)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--online-store") from None


DataDir = Annotated[
    Optional[Path],
    typer.Option("--data-dir", help="Data directory (default: $RANKFLOW_DATA_DIR or ./data).", show_default=False),
]
OnlineStore = Annotated[
    Optional[str],
    typer.Option("--online-store", callback=_online_store_flag,
                 help="'sqlite' (default) or a Redis URL, e.g. redis://localhost:6379/0."),
]
OfflineStore = Annotated[
    Optional[Literal["file", "spark"]],
    typer.Option("--offline-store", help="Feast offline store: 'file' (default) or 'spark'."),
]
DateOpt = Annotated[Optional[str], typer.Option("--date", help="Logical date YYYY-MM-DD.")]
StartOpt = Annotated[Optional[str], typer.Option("--start", help="First logical date YYYY-MM-DD (inclusive).")]
EndOpt = Annotated[Optional[str], typer.Option("--end", help="Last logical date YYYY-MM-DD (inclusive).")]

# What makes each zone a command reads; said when the zone is missing.
_ZONE_MAKERS = {
    "raw": "no raw data yet: `rankflow generate` or `rankflow ingest` writes it",
    "features": "no feature tables yet: `rankflow features build` writes them",
    "feast": "no Feast repo yet: `rankflow features build` and `rankflow features materialize` write it",
}

# The Settings of this process, once read: the error boundary (rankflow.cli.main) names the online store from them.
_loaded: list[Settings] = []


def settings_from(data_dir: Path | None, *, reads: tuple[str, ...] | None = None, **overrides) -> Settings:
    """Configure logging and read the configuration once, at the CLI boundary.

    `reads`: the command only reads this data dir (and these zones of it: raw, features, feast), so they must
    exist; a FileNotFoundError says which is missing and what writes it, before anything is created.
    None: the command may create the data dir.
    """
    configure_logging()
    settings = load_settings(data_dir, **overrides)
    _loaded[:] = [settings]
    if reads is not None:
        if not settings.data_dir.is_dir():
            raise FileNotFoundError(f"{settings.data_dir}: no such data directory (give --data-dir or set "
                                    "RANKFLOW_DATA_DIR; `rankflow generate` or `rankflow ingest` make one)")
        if "raw" in reads:  # an ingest / generate killed while swapping the raw zone: rolled back first
            recover_replacement(settings.paths.root)
        for zone in reads:
            path = getattr(settings.paths, zone)
            if not path.is_dir():
                raise FileNotFoundError(f"{path}: {_ZONE_MAKERS[zone]}")
    return settings


def loaded_settings() -> Settings | None:
    return _loaded[0] if _loaded else None


def check_online_store_answers(settings: Settings, timeout_s: float = 2.0) -> None:
    """Ping a Redis online store once, with a short timeout and no retries, before a command starts its work.

    Without it the first write or read finds out, after redis-py's retries with backoff. Raises
    redis.exceptions.ConnectionError (the error boundary names the store); SQLite needs no check.
    """
    if settings.online_store == "sqlite":
        return
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = redis.Redis.from_url(settings.online_store, socket_connect_timeout=timeout_s, socket_timeout=timeout_s,
                                  retry=Retry(NoBackoff(), 0))
    try:
        client.ping()
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
        raise
    except redis.exceptions.RedisError as error:  # a server that is not Redis, a wrong password or database
        raise redis.exceptions.ConnectionError(f"{type(error).__name__}: {error}") from None
    finally:
        client.close()


def _plain(value: Any) -> Any:
    """JSON for what stage results hold besides JSON types: numpy numbers and arrays, dates, paths."""
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    return str(value)


def _finite(value: Any) -> Any:
    """NaN and infinities as null: JSON has no such numbers (a metric with no positives is NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def print_json(console, value: Any) -> None:
    """A command's result on stdout as JSON (numbers as numbers, never wrapped): what every command prints."""
    console.print_json(json.dumps(_finite(json.loads(json.dumps(value, default=_plain))), allow_nan=False))


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
