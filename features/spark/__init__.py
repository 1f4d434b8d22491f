"""Spark jobs that turn the raw zone into daily feature tables (one idea per module)."""
