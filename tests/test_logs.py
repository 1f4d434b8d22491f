"""The one logging setup: warnings arrive as single log lines, known third-party deprecations not at all."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import warnings
from rankflow.logs import configure_logging
configure_logging()
warnings.simplefilter("default")  # what a later import may do: filters in front of any the setup added
warnings.warn("data/x.parquet: column c absent; read as 0", UserWarning)
warnings.warn("GitWildMatchPattern ('gitwildmatch') is deprecated. Use 'gitignore'", DeprecationWarning)
warnings.warn("Accessing the 'model_fields' attribute on the instance is deprecated", DeprecationWarning)
"""


def test_warnings_are_one_log_line_and_third_party_deprecations_are_dropped():
    run = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert " WARNING py.warnings: " in lines[0]
    assert lines[0].endswith("UserWarning: data/x.parquet: column c absent; read as 0")
