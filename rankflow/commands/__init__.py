"""CLI subcommands, one module per area. Each module exposes `register(app)`.

Command bodies import their heavy dependencies lazily so `rankflow --help` stays fast,
and call the same `rankflow.stages` functions the DAGs call.
"""
