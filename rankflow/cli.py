"""`rankflow`: the one command-line interface. Subcommands call the same functions the DAGs call."""

from __future__ import annotations

import importlib

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


if __name__ == "__main__":
    app()
