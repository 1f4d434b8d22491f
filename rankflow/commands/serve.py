"""`rankflow serve`: run the ranking service; `serve rollback`, `serve skew-check`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from rankflow.commands.common import (DataDir, DateOpt, OnlineStore, check_online_store_answers, parse_day,
                                      print_json, settings_from)

console = Console()
serve_app = typer.Typer(help="Run the ranking service (BentoML), roll it back, check training/serving skew.",
                        invoke_without_command=True, no_args_is_help=False)


def register(app: typer.Typer) -> None:
    app.add_typer(serve_app, name="serve")


def _positive(value: float | None) -> float | None:
    if value is not None and not value > 0:
        raise typer.BadParameter(f"must be > 0, got {value}")
    return value


def _http_url(value: str | None) -> str | None:
    if value is not None and not value.startswith(("http://", "https://")):
        raise typer.BadParameter(f"expected the service's base URL, e.g. http://localhost:3000, got {value!r}")
    return value


@serve_app.callback()
def serve(
    ctx: typer.Context,
    data_dir: DataDir = None,
    online_store: OnlineStore = None,
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="HTTP port of POST /rank.")] = 3000,
    host: Annotated[str, typer.Option("--host", help="Interface to bind.")] = "127.0.0.1",
    batching: Annotated[Optional[bool], typer.Option("--batching/--no-batching", help="Adaptive batching of model scoring.")] = None,
    max_candidates: Annotated[Optional[int], typer.Option("--max-candidates", min=1, help="Longest accepted candidate list.")] = None,
    deadline_ms: Annotated[Optional[float], typer.Option(
        "--deadline-ms", callback=_positive, help="Feature-store deadline before default features.")] = None,
) -> None:
    """Serve POST /rank from this data dir's promoted models and online store (until Ctrl-C)."""
    if ctx.invoked_subcommand is not None:
        return
    from rankflow.config import redacted
    from rankflow.stages.publish import ServeOptions, check_port_free, serve_foreground
    from serving.config import load_serving_config
    from serving.models import resolve_tags

    settings = settings_from(data_dir, reads=(), online_store=online_store)
    check_port_free(host, port)  # taken: one line now, not BentoML's traceback after the models have loaded
    options = ServeOptions(port=port, host=host, adaptive_batching=batching, max_candidates=max_candidates,
                           feature_deadline_ms=deadline_ms)
    # serving.yaml and the flags, checked as the service will read them: a bad value fails here, before "serving ..."
    load_serving_config(settings, environ={}, adaptive_batching=batching, max_candidates=max_candidates,
                        feature_deadline_ms=deadline_ms)
    resolve_tags(settings)  # no loadable serving ranker: say so now, not through the service workers' crash loop
    store = redacted(settings.online_store)
    if settings.online_store != "sqlite":
        from redis.exceptions import RedisError

        try:
            check_online_store_answers(settings)
        except RedisError as error:  # the service starts anyway and serves default features until the store answers
            console.print(f"[yellow]warning:[/] the online store {store} does not answer ({error}): the service "
                          "starts degraded, with default features, until it does", highlight=False, soft_wrap=True)
    console.print(f"serving {settings.data_dir.resolve()} on http://{host}:{port}/rank "
                  f"(online store {store}); /readyz, /metrics; Ctrl-C stops", soft_wrap=True)
    raise typer.Exit(serve_foreground(settings, options))


@serve_app.command("rollback")
def rollback(data_dir: DataDir = None) -> None:
    """Serve the previous ranker and Bento again (a running service picks the ranker up by itself)."""
    from rankflow.stages.publish import rollback as rollback_stage

    print_json(console, rollback_stage(settings_from(data_dir, reads=())))


@serve_app.command("skew-check")
def skew_check(
    data_dir: DataDir = None,
    online_store: OnlineStore = None,
    day: DateOpt = None,
    sample: Annotated[int, typer.Option("--sample", min=1, help="Requests (member + that day's impressed jobs) to check.")] = 50,
    url: Annotated[Optional[str], typer.Option("--url", callback=_http_url, help="Ask a running service (its POST /features) instead of reading in-process.")] = None,
) -> None:
    """Training/serving skew: the features the service reads equal the offline feature table of --date."""
    from serving.skew import skew_check as run

    if not day:
        raise typer.BadParameter("give --date D (the newest materialised day)")
    settings = settings_from(data_dir, reads=("features",), online_store=online_store)
    if url is None:  # read in-process from the online store
        check_online_store_answers(settings)
    report = run(settings, parse_day(day), sample, url=url)
    console.print(report.summary())
    if not report.ok:
        raise typer.Exit(1)
