"""Moving a partition that failed validation aside, with the report that says why.

Layout of `quarantine_dir` (e.g. `DataPaths.quarantine("events", day)` = `quarantine/events/dt=D/`):

    partition/     the failing partition's files, exactly as they were
    result.json    the suite's JSON result (copy of reports/validation/<suite>/dt=D/result.json)
    summary.txt    the human summary (expectation, column, observed vs expected, examples)

The partition leaves its zone by one rename, so readers of the zone never see half of it; the report
is written first, so a quarantined partition always has its reason next to it. Quarantining the same
day again replaces the earlier quarantine.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from rankflow.logs import get_logger
from rankflow.paths import atomic_directory
from validation.result import ValidationFailed

log = get_logger(__name__)


def quarantine(partition_dir: Path, quarantine_dir: Path, failure: ValidationFailed) -> Path:
    """Move `partition_dir` to `quarantine_dir/partition` and write the report beside it; return `quarantine_dir`."""
    partition_dir, quarantine_dir = Path(partition_dir), Path(quarantine_dir)
    if not partition_dir.is_dir():
        raise FileNotFoundError(f"cannot quarantine {partition_dir}: no such partition directory")
    with atomic_directory(quarantine_dir) as staging:
        (staging / "summary.txt").write_text(failure.summary + "\n")
        if failure.report_path is not None and Path(failure.report_path).exists():
            shutil.copyfile(failure.report_path, staging / "result.json")
        # Last step inside the block: if anything above failed, the partition is still in its zone.
        try:
            os.replace(partition_dir, staging / "partition")
        except OSError as error:
            if error.errno != errno.EXDEV:
                raise
            shutil.move(str(partition_dir), str(staging / "partition"))  # zone and quarantine on two devices
    log.warning("quarantined %s -> %s (%s, %s)", partition_dir, quarantine_dir, failure.suite, failure.day)
    return quarantine_dir
