"""Processes as /proc shows them: every process's stat fields, and the tree under one process (benchmarks that
measure a command together with the processes it starts: a service's workers, Spark's JVM)."""

from __future__ import annotations

import os
from pathlib import Path

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def proc_stats() -> dict[int, tuple[str, list[str]]]:
    """pid -> (command name, the /proc/<pid>/stat fields after it) of every process."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                text = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            stats[int(entry)] = (text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split())
    return stats


def tree(root: int, stats: dict[int, tuple[str, list[str]]]) -> list[int]:
    """`root` and all its descendants that `stats` holds."""
    children: dict[int, list[int]] = {}
    for pid, (_, fields) in stats.items():
        children.setdefault(int(fields[1]), []).append(pid)  # ppid, field 4 of stat
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        if pid in stats:
            found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def rss_bytes(fields: list[str]) -> int:
    return int(fields[21]) * PAGE_BYTES  # rss in pages, field 24 of stat
