"""`rankflow airflow up|down|status`: the embedded Airflow that runs the DAGs in dags/."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from rankflow.commands.common import DataDir, parse_day, settings_from

airflow_app = typer.Typer(help="Run the pipeline's DAGs on an embedded Airflow (api-server, scheduler, ...).",
                          no_args_is_help=True)


def _postgres_url(value: str | None) -> str | None:
    """--db is checked before Airflow starts (a usage error), not after the db migration began."""
    if value is not None and not value.startswith(("postgresql://", "postgresql+psycopg2://")):
        raise typer.BadParameter(f"expected postgresql://user@host:port/database, got {value!r}")
    return value


@airflow_app.command("up")
def up(
    data_dir: DataDir = None,
    db: Annotated[Optional[str], typer.Option(
        "--db", callback=_postgres_url, help="Metadata DB: postgresql://user@host:port/database (LocalExecutor, created if missing). "
                     "Default: SQLite under <data-dir>/airflow.")] = None,
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port of the UI and REST API.")] = 8080,
    end_date: Annotated[Optional[str], typer.Option(
        "--end-date", help="Last logical day the schedules create runs for (YYYY-MM-DD, or 'none' for "
                           "open-ended). Default: the last day of raw events in the data dir (without any: the "
                           "generator's start_date + days - 1).")] = None,
    no_login: Annotated[bool, typer.Option(
        "--no-login", help="Everyone is admin, no login page (local demos only).")] = False,
) -> None:
    """Start Airflow in the background (pid files and logs under <data-dir>/run/airflow) and print the login."""
    from rich.console import Console
    from rich.markup import escape

    from rankflow.airflow_local import AirflowOptions, start

    settings = settings_from(data_dir)
    first_day, last_raw_day = settings.scheduled_days()
    if end_date is None:
        last_day = last_raw_day
    elif end_date.lower() == "none":
        last_day = None
    else:
        last_day = parse_day(end_date, "--end-date")
    options = AirflowOptions(data_dir=settings.data_dir, db_url=db, port=port, end_date=last_day,
                             open_access=no_login)
    console = Console()
    with console.status("Starting Airflow (db migrate, api-server, scheduler, dag-processor, triggerer)..."):
        try:
            info = start(options)
        except (RuntimeError, TimeoutError, ValueError) as error:
            Console(stderr=True).print(f"[bold red]rankflow airflow up failed:[/] {type(error).__name__}: "
                                       f"{escape(str(error))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
    console.print(f"Airflow UI:  {info.url}")
    if info.password is None:
        console.print("Login:       none needed (--no-login: everyone is admin)")
    else:
        console.print(f"Login:       {info.username} / {info.password}")
    console.print(f"Schedules:   {first_day} .. {last_day or 'open-ended'}")
    console.print(f"CLI:         export AIRFLOW_HOME={info.home}")
    console.print(f"Logs:        {options.run_dir}/   stop with: rankflow airflow down --data-dir {settings.data_dir}")


@airflow_app.command("down")
def down(data_dir: DataDir = None) -> None:
    """Stop the Airflow components `up` started for this data directory."""
    from rankflow.airflow_local import stop

    settings = settings_from(data_dir)
    stopped = stop(settings.data_dir)
    typer.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@airflow_app.command("status")
def status(data_dir: DataDir = None) -> None:
    """Which components run (pid) and what the api-server's health endpoint says."""
    from rankflow.airflow_local import COMPONENTS, AirflowOptions, health, running_components

    settings = settings_from(data_dir, reads=())
    running = running_components(settings.data_dir)
    for name in COMPONENTS:
        typer.echo(f"{name:14s} {'running pid ' + str(running[name]['pid']) if name in running else 'stopped'}")
    if running:
        port = _configured_port(AirflowOptions(settings.data_dir))
        report = health(f"http://localhost:{port}")
        typer.echo(json.dumps(report, indent=2) if report else f"health: no answer on port {port}")
    if len(running) not in (0, len(COMPONENTS)):
        raise typer.Exit(1)


def _configured_port(options) -> int:
    import configparser

    parser = configparser.ConfigParser(interpolation=None)
    parser.read(options.home / "airflow.cfg")
    return parser.getint("api", "port", fallback=8080)


def register(app: typer.Typer) -> None:
    app.add_typer(airflow_app, name="airflow")
