"""rankflow: the application layer — one configuration, one path helper, one logging setup, one CLI.

The work itself lives in the packages the design names (features/, training/, validation/,
serving/, kernels/); `rankflow.stages` holds the per-day stage functions that both the CLI
and the Airflow DAGs call, so there is exactly one way to run each step.
"""
