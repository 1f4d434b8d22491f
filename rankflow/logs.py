"""The one logging setup. Call `configure_logging()` once at process start (CLI, DAG task, service).

Airflow and Great Expectations both configure logging (structlog) on import; importing them
together floods the console. We route everything through the standard library at one level
and quieten the known-noisy loggers.
"""

from __future__ import annotations

import logging
import os
import re
import warnings

_NOISY = ("py4j", "httpx", "httpcore", "great_expectations", "feast", "urllib3", "filelock", "matplotlib", "bentoml",
          "alembic", "sqlalchemy", "fsspec", "asyncio", "numexpr")
_configured = False
# Third-party deprecations a user cannot act on: pathspec's (through Feast's .feastignore handling) and
# pydantic 2.11's about BentoML 1.4's own models (once per request in the service's log).
_IGNORED_WARNINGS = (r"GitWildMatchPattern \('gitwildmatch'\) is deprecated",
                     r"Accessing the 'model_fields' attribute on the instance is deprecated",
                     r"The `__get_pydantic_core_schema__` method of the `BaseModel` class is deprecated")


class _DropKnownWarnings(logging.Filter):
    """Drops captured warnings matching _IGNORED_WARNINGS. A logging filter, not a warnings filter: imports
    that run later (Airflow, Feast, GX) install warnings filters in front of any we would add."""

    pattern = re.compile("|".join(_IGNORED_WARNINGS))

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def _one_line(message, category, filename, lineno, line=None) -> str:
    """A warning as one log line: where and what, not the source line of the call that raised it."""
    return f"{filename}:{lineno}: {category.__name__}: {message}"


def configure_logging(level: int | str = logging.INFO) -> None:
    """Idempotent: the first call wins."""
    global _configured
    if _configured:
        return
    _configured = True
    # GX prints usage-statistics banners and checks for updates unless told not to.
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.formatwarning = _one_line
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").addFilter(_DropKnownWarnings())


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)
