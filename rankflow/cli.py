"""`rankflow`: the one command-line interface. Subcommands call the same functions the DAGs call.

Errors a user can act on (bad arguments, missing inputs, files that fail their checks: the stages raise
ValueError or OSError with a message that names the day, file, column or field) are printed as one line
on stderr, exit status 1, without a traceback; `RANKFLOW_DEBUG=1` shows the traceback instead.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

app = typer.Typer(
    name="rankflow",
    help="An open ML platform pipeline for personalised ranking.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

# One module per area; each exposes register(app). Order is the order of `rankflow --help`.
_COMMAND_MODULES = ("data", "features", "personalise", "meta", "ranker", "serve", "airflow", "demo")

for _name in _COMMAND_MODULES:
    try:
        _module = importlib.import_module(f"rankflow.commands.{_name}")
    except ModuleNotFoundError as error:
        if error.name != f"rankflow.commands.{_name}":
            raise
        continue  # that area has not landed yet
    _module.register(app)


def main() -> None:
    """The `rankflow` console script: `app` with the error boundary described above."""
    try:
        app()
    except (ValueError, OSError) as error:
        if os.environ.get("RANKFLOW_DEBUG"):
            raise
        from rich.console import Console
        from rich.markup import escape

        command = next((arg for arg in sys.argv[1:] if not arg.startswith("-")), "")
        Console(stderr=True, soft_wrap=True).print(
            f"[bold red]rankflow {escape(command)} failed:[/] {type(error).__name__}: {escape(str(error))}\n"
            "[dim](RANKFLOW_DEBUG=1 shows the traceback)[/]", highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
