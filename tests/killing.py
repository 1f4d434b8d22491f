"""Stand-ins for a process killed halfway, shared by the tests of rankflow.paths and of GLMix retention."""

from __future__ import annotations

import subprocess
import sys


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs, not even the rollback."""


def dead_pid() -> int:
    """The pid of a process that has already exited (as a killed writer's would be)."""
    process = subprocess.Popen([sys.executable, "-c", ""])
    process.wait()
    return process.pid
