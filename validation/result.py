"""What a validation returns, and the exception a failed one raises.

Both carry a short human summary (which expectation, which column, observed vs expected, a few
example values) and where the full report lives: the JSON result kept per suite per day and the
Great Expectations Data Docs page rendered from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from pathlib import Path


@dataclass(frozen=True)
class ValidationResult:
    """The outcome of one suite run on one logical day."""

    success: bool
    suite: str
    day: date
    statistics: dict
    """GX statistics (evaluated/successful/unsuccessful expectations, success_percent) + rows, seconds."""
    failures: list[str] = field(default_factory=list)
    """One readable line per failed expectation; empty when the suite passed."""
    report_path: Path | None = None
    """`reports/validation/<suite>/dt=D/result.json`."""
    data_docs_page: Path | None = None
    """The Data Docs HTML page of this validation (under `reports/data_docs/`)."""

    @property
    def summary(self) -> str:
        """A few lines a person reads in a log or an Airflow task failure."""
        verdict = "passed" if self.success else f"FAILED ({len(self.failures)} expectation(s))"
        lines = [f"validation suite '{self.suite}' for {self.day.isoformat()} {verdict}"]
        lines += [f"  - {line}" for line in self.failures]
        if self.report_path is not None:
            lines.append(f"  report: {self.report_path}")
        if self.data_docs_page is not None:
            lines.append(f"  data docs: {self.data_docs_page}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-serialisable form, for stage functions that return it to XCom / the CLI."""
        return {
            "success": self.success,
            "suite": self.suite,
            "day": self.day.isoformat(),
            "statistics": self.statistics,
            "failures": list(self.failures),
            "report_path": str(self.report_path) if self.report_path else None,
            "data_docs_page": str(self.data_docs_page) if self.data_docs_page else None,
        }


class ValidationFailed(Exception):
    """A suite failed: nothing downstream may run for this day.

    `summary` says what failed in a few lines; `report_path` is the JSON result file and
    `data_docs_page` the rendered Data Docs page; `result` is the full `ValidationResult`.
    """

    def __init__(self, result: ValidationResult):
        self.result = result
        self.suite = result.suite
        self.day = result.day
        self.summary = result.summary
        self.report_path = result.report_path
        self.data_docs_page = result.data_docs_page
        super().__init__(self.summary)

    def __reduce__(self):
        # Airflow and multiprocessing pickle exceptions; rebuild from the result, not from args.
        return (type(self), (self.result,))
