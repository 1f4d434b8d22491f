"""Errors a retry cannot fix: a scheduler fails the task at once instead of retrying it (dags/_common.run_stage)."""

from __future__ import annotations


class MissingInput(FileNotFoundError):
    """An input the day needs is not there (no raw events, an earlier day quarantined); the message says what to do."""


class UnreadableInput(ValueError):
    """An input file that cannot be read (cut off, corrupt, not what it should be); the message names it."""


class PriorDeleted(MissingInput):
    """The state a day would start from was deleted by retention (`glmix_keep_days`): the day cannot be re-run.

    A run over several days skips such a day and goes on with the others (dags/_common.run_stage_days)."""
