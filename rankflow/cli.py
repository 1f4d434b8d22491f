"""`rankflow`: the one command-line interface. Subcommands call the same functions the DAGs call.

Errors a user can act on (missing inputs, files that fail their checks, a configuration that cannot be used, an
online store that does not answer: the stages raise ValueError or OSError with a message that names the day,
file, column or field) are printed as one line on stderr, `rankflow <command> failed: ...`, exit status 1,
without a traceback; `RANKFLOW_DEBUG=1` shows the traceback instead. Bad flags are click's usage errors
(exit status 2), checked before any work starts.
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


def command_path(argv: list[str]) -> str:
    """`rankflow features build` for argv `features build --date D ...`: the (sub)commands named, options skipped."""
    command = typer.main.get_command(app)  # (typer's own copy of click: duck-typed below)
    names = ["rankflow"]
    args = iter(argv)
    for arg in args:
        if arg.startswith("-"):
            option = next((p for p in command.params if getattr(p, "param_type_name", "") == "option"
                           and arg.split("=", 1)[0] in (*p.opts, *p.secondary_opts)), None)
            if option is not None and not (option.is_flag or option.count) and "=" not in arg:
                next(args, None)  # the option's value
            continue
        subcommands = getattr(command, "commands", {})
        if arg not in subcommands:
            break
        names.append(arg)
        command = subcommands[arg]
    return " ".join(names)


def _online_store_errors() -> tuple[type[BaseException], ...]:
    try:
        from redis.exceptions import ConnectionError, TimeoutError
    except ImportError:
        return ()
    return ConnectionError, TimeoutError


def _validation_failed() -> tuple[type[BaseException], ...]:
    try:
        from validation import ValidationFailed
    except ImportError:
        return ()
    return (ValidationFailed,)


def _describe(error: BaseException) -> str:
    if isinstance(error, _validation_failed()):  # personalisation outputs that fail their suite (NaN, ...)
        return f"validation failed: {error}"
    if isinstance(error, _online_store_errors()):
        from rankflow.commands.common import loaded_settings
        from rankflow.config import redacted

        settings = loaded_settings()
        store = f"the online store {redacted(settings.online_store)}" if settings else "the online store"
        return (f"{store} does not answer ({type(error).__name__}: {error}); start it, or give another "
                "--online-store")
    return f"{type(error).__name__}: {error}"


def main() -> None:
    """The `rankflow` console script: `app` with the error boundary described above."""
    try:
        app()
    except Exception as error:  # not SystemExit: a normal exit imports neither redis nor validation
        if not isinstance(error, (ValueError, OSError, *_online_store_errors(), *_validation_failed())):
            raise
        if os.environ.get("RANKFLOW_DEBUG"):
            raise
        from rich.console import Console
        from rich.markup import escape

        Console(stderr=True, soft_wrap=True).print(
            f"[bold red]{escape(command_path(sys.argv[1:]))} failed:[/] {escape(_describe(error))}\n"
            "[dim](RANKFLOW_DEBUG=1 shows the traceback)[/]", highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
