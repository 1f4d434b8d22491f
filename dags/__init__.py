"""rankflow: dags."""
