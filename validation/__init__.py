"""rankflow validation: Great Expectations suites that gate every data hand-off.

`check_raw_events`, `check_feature_table`, `check_training_set`, `check_personalisation` take a
pandas frame and a logical day, run the suite as a GX checkpoint, keep the result under
`reports/validation/<suite>/dt=D/result.json`, update the Data Docs site in `reports/data_docs/`,
and raise `ValidationFailed` (with a short human summary) when the day must not go further.
`quarantine` moves a failing partition aside with its report; `refresh_data_docs_index` rebuilds the
site's index page, `build_data_docs` the whole site.

Great Expectations itself is imported only when a suite runs, so importing this package is cheap.
"""

from validation.checkpoint import build_data_docs, refresh_data_docs_index
from validation.feature_table import check_feature_table
from validation.personalisation import check_personalisation
from validation.quarantine import quarantine
from validation.raw_events import check_raw_events
from validation.result import ValidationFailed, ValidationResult
from validation.training_set import check_training_set

__all__ = [
    "ValidationFailed",
    "ValidationResult",
    "build_data_docs",
    "check_feature_table",
    "check_personalisation",
    "check_raw_events",
    "check_training_set",
    "quarantine",
    "refresh_data_docs_index",
]
