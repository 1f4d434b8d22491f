"""How results are kept: one JSON per suite per day, replaced when the day is validated again, a Data
Docs page per suite and day; and `import validation` stays cheap (GX is imported only to run a suite)."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from datetime import timedelta

import pandas as pd

from tests.validation.frames import DAY, EVENT_COLUMNS, ITEMS, MEMBERS, good_events
from validation import ValidationFailed, build_data_docs, check_raw_events


def validate(events, day, reports_dir):
    events = events.assign(ts=events["ts"] + pd.Timedelta(days=(day - DAY).days))
    return check_raw_events(events, day, expected_columns=EVENT_COLUMNS, known_member_ids=MEMBERS,
                            known_item_ids=ITEMS, reports_dir=reports_dir, raise_on_failure=False)


def test_results_are_kept_per_day_and_replaced_on_rerun(reports_dir):
    next_day = DAY + timedelta(days=1)
    broken = good_events()
    broken.loc[0, "label"] = 2
    first = validate(broken, DAY, reports_dir)
    other_day = validate(good_events(), next_day, reports_dir)
    assert not first.success and other_day.success
    suite_dir = reports_dir / "validation" / "raw_events"
    assert sorted(path.name for path in suite_dir.iterdir()) == [f"dt={DAY}", f"dt={next_day}"]

    fixed = validate(good_events(), DAY, reports_dir)  # the day is fixed and validated again
    assert fixed.success and fixed.report_path == first.report_path
    assert sorted(path.name for path in (suite_dir / f"dt={DAY}").iterdir()) == ["result.json"]  # no temp files left
    assert json.loads(fixed.report_path.read_text())["success"] is True
    assert json.loads(other_day.report_path.read_text())["day"] == next_day.isoformat()  # untouched

    # Data Docs: the rerun replaced the day's page instead of adding a second one.
    pages = sorted((reports_dir / "data_docs" / "validations" / "raw_events").rglob("*.html"))
    assert pages == sorted([fixed.data_docs_page, other_day.data_docs_page])
    assert "Succeeded" in fixed.data_docs_page.read_text()


def test_build_data_docs_links_every_suite_day(reports_dir):
    validate(good_events(), DAY, reports_dir)
    validate(good_events(), DAY + timedelta(days=1), reports_dir)
    index = build_data_docs(reports_dir)
    assert index == (reports_dir / "data_docs" / "index.html").resolve()
    html = index.read_text()
    assert html.count("validations/raw_events/dt%3D") + html.count("validations/raw_events/dt=") >= 2


def test_validation_failed_survives_pickling(reports_dir):
    """Airflow ships a task's exception between processes."""
    broken = good_events()
    broken.loc[0, "label"] = 2
    failure = ValidationFailed(validate(broken, DAY, reports_dir))
    copy = pickle.loads(pickle.dumps(failure))
    assert (copy.suite, copy.day, copy.summary, copy.report_path) == (
        failure.suite, failure.day, failure.summary, failure.report_path)


def test_importing_validation_does_not_import_great_expectations():
    code = "import sys, validation; print('great_expectations' in sys.modules)"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert output.stdout.strip() == "False"
