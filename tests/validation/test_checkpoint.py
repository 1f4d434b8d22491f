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
    html = index.read_text().replace("%3D", "=")
    for day in (DAY, DAY + timedelta(days=1)):
        assert f"validations/raw_events/dt={day}" in html, day


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


def test_a_suite_changed_between_runs_is_the_one_validated_and_stored_under_the_same_ids(reports_dir):
    """run_suite replaces the suite, its validation definition and checkpoint in place (not add_or_update)."""
    from validation.checkpoint import gx_context, gx_modules, run_suite

    _, gxe = gx_modules()
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0]})
    loose = run_suite("probe", DAY, frame, [gxe.ExpectColumnValuesToBeBetween(column="x", min_value=0, max_value=5)],
                      reports_dir=reports_dir, raise_on_failure=False)
    context = gx_context(reports_dir)
    ids = context.validation_definitions.get(name="probe").id, context.checkpoints.get(name="probe").id
    tight = run_suite("probe", DAY, frame, [gxe.ExpectColumnValuesToBeBetween(column="x", min_value=0, max_value=2)],
                      reports_dir=reports_dir, raise_on_failure=False)
    assert loose.success and not tight.success
    stored = context.checkpoints.get(name="probe").validation_definitions[0].suite.expectations
    assert [e.max_value for e in stored] == [2]
    assert (context.validation_definitions.get(name="probe").id, context.checkpoints.get(name="probe").id) == ids


def test_data_docs_templates_compile_once_per_process(reports_dir, monkeypatch):
    """Every Data Docs view builds its own jinja2 Environment; the shared bytecode cache spares recompiling."""
    import jinja2

    validate(good_events(), DAY, reports_dir)  # GX imported, the templates compiled once
    compiled = []
    original = jinja2.Environment.compile
    monkeypatch.setattr(jinja2.Environment, "compile", lambda self, *a, **k: compiled.append(1) or original(self, *a, **k))
    result = validate(good_events(), DAY + timedelta(days=1), reports_dir)
    assert result.data_docs_page.exists() and "Succeeded" in result.data_docs_page.read_text()
    assert compiled == []


def test_gx_sees_only_the_columns_its_expectations_read_unless_one_reads_the_whole_table():
    """Each column expectation makes GX's pandas engine copy the whole frame: columns no expectation reads
    (a training set's dense values, checked through flag columns) are left out of the frame it is given; a
    table-level expectation (the column set) gets every column. Flags and vector lengths as before."""
    import great_expectations.expectations as gxe
    import numpy as np

    from validation.checkpoint import Flag, _gx_view

    frame = pd.DataFrame({"event_id": [3, 1, 2], "label": [0, 1, 0], "dense": [0.5, np.nan, 1.0],
                          "vector": [np.zeros(2), None, np.ones(3)]}, index=[10, 11, 12])
    finite = Flag(source="dense", rule="finite", passed=pd.Series([True, False, True], index=frame.index))
    by_column = [gxe.ExpectTableRowCountToBeBetween(min_value=1),
                 gxe.ExpectColumnValuesToBeUnique(column="event_id"),
                 gxe.ExpectCompoundColumnsToBeUnique(column_list=["event_id", "vector"]),
                 gxe.ExpectColumnValuesToBeInSet(column=finite.column, value_set=[True])]
    view = _gx_view(frame, [finite], by_column)
    assert list(view.columns) == ["event_id", "vector", finite.column]
    assert list(view.index) == [10, 11, 12] and view["event_id"].dtype == np.int64
    assert view["vector"].tolist()[0::2] == [2.0, 3.0] and np.isnan(view["vector"].iloc[1])
    assert view[finite.column].tolist() == [True, False, True]
    assert view._mgr.is_consolidated()

    whole = _gx_view(frame, [finite], [*by_column, gxe.ExpectTableColumnsToMatchSet(column_set=list(frame.columns))])
    assert list(whole.columns) == ["event_id", "label", "dense", "vector", finite.column]
    assert whole["dense"].equals(frame["dense"])
