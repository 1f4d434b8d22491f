"""Errors a retry cannot fix: a scheduler fails the task at once instead of retrying it (dags/_common.run_stage)."""

from __future__ import annotations


class MissingInput(FileNotFoundError):
    """An input the day needs is not there (no raw events, an earlier day quarantined); the message says what to do."""


class UnreadableInput(ValueError):
    """An input file that cannot be read (cut off, corrupt, not what it should be); the message names it."""
