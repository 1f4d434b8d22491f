"""Ingest's refusals read like the others: file, column, rows, what was expected (exit 2 from the CLI).

Timestamps outside [1970-01-02, 2100-01-01) UTC are refused (with a hint when they look like milliseconds
or microseconds); empty values read "empty"; row numbers are explained for CSV and for Parquet; a file
written with ';' or tabs is named as such instead of one giant "column".
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from features.ingest import IngestError, ingest
from rankflow.paths import DataPaths

SCHEMA = ("members: {id: uid, timestamp: signup}\nitems: {id: job}\n"
          "events: {member: uid, item: job, timestamp: ts, label: y}\n")
MEMBERS = "uid,signup\n1,2025-12-01T00:00:00Z\n2,\n"
ITEMS = "job\n10\n"


def files(folder: Path, events: str, members: str = MEMBERS, items: str = ITEMS) -> dict[str, Path]:
    out = {"schema": folder / "schema.yaml", "members": folder / "members.csv", "items": folder / "items.csv",
           "events": folder / "events.csv"}
    for name, text in (("schema", SCHEMA), ("members", members), ("items", items), ("events", events)):
        out[name].write_text(text)
    return out


def refused(chosen: dict[str, Path], root: Path) -> str:
    with pytest.raises(IngestError) as caught:
        ingest(chosen["schema"], chosen["members"], chosen["items"], chosen["events"], DataPaths(root))
    assert not root.exists(), "a refused ingest wrote something"
    return str(caught.value)


@pytest.mark.parametrize("value, hint", [("1769904000000", "milliseconds"), ("1769904000000000", "microseconds")])
def test_timestamps_in_milliseconds_or_microseconds_are_refused_with_a_hint(tmp_path, value, hint):
    message = refused(files(tmp_path, f"uid,job,ts,y\n1,10,1767225600,1\n2,10,{value},0\n"), tmp_path / "d")
    assert "events.csv: column 'ts'" in message and f"row 2: '{value}'" in message
    assert hint in message and "1970-01-02" in message and "2100-01-01" in message, message


def test_one_out_of_range_value_names_its_row(tmp_path):
    events = "uid,job,ts,y\n" + "".join(f"1,10,{1767225600 + i},1\n" for i in range(5)) + "2,10,99999999999,0\n"
    message = refused(files(tmp_path, events), tmp_path / "d")
    assert "column 'ts'" in message and "row 6: '99999999999'" in message and "1 in all" in message, message


@pytest.mark.parametrize("value", ["-5", "0", "86399", "1969-12-31T23:00:00Z", "2100-01-01T00:00:00Z", "2150-06-01"])
def test_timestamps_before_1970_01_02_or_after_2099_are_refused(tmp_path, value):
    message = refused(files(tmp_path, f"uid,job,ts,y\n1,10,{value},1\n"), tmp_path / "d")
    assert "column 'ts'" in message and f"row 1: '{value}'" in message and "1970-01-02" in message, message


def test_the_window_edges_are_accepted(tmp_path):
    chosen = files(tmp_path, "uid,job,ts,y\n1,10,86400,1\n2,10,2099-12-31T23:59:59Z,0\n")
    summary = ingest(chosen["schema"], chosen["members"], chosen["items"], chosen["events"], DataPaths(tmp_path / "d"))
    assert summary["start"] == "1970-01-02" and summary["end"] == "2099-12-31"


def test_member_signup_in_milliseconds_is_refused(tmp_path):
    message = refused(files(tmp_path, "uid,job,ts,y\n1,10,1767225600,1\n", members="uid,signup\n1,1764547200000\n"),
                      tmp_path / "d")
    assert "members.csv: column 'signup'" in message and "milliseconds" in message, message


def test_parquet_timestamps_in_milliseconds_are_refused_with_parquet_row_wording(tmp_path):
    chosen = files(tmp_path, "")
    events = tmp_path / "events.parquet"
    pd.DataFrame({"uid": [1, 2], "job": [10, 10], "ts": [1767225600, 1769904000000], "y": [1, 0]}).to_parquet(events)
    chosen["events"] = events
    message = refused(chosen, tmp_path / "d")
    assert "events.parquet: column 'ts'" in message and "row 2: 1769904000000" in message, message
    assert "milliseconds" in message and "header" not in message and "row 1 is the first row" in message, message


def test_csv_row_wording_names_the_header(tmp_path):
    message = refused(files(tmp_path, "uid,job,ts,y\n1,10,1767225600,7\n"), tmp_path / "d")
    assert "row 1: '7'" in message and "row 1 is the first line after the header" in message, message


def test_empty_values_read_empty_not_none(tmp_path):
    message = refused(files(tmp_path, "uid,job,ts,y\n1,10,1767225600,1\n1,10,1767225601,\n"), tmp_path / "d")
    assert "row 2: empty" in message and "None" not in message, message
    chosen = files(tmp_path, "")
    pd.DataFrame({"uid": [1, 2], "job": [10, 10], "ts": [1767225600, 1767225601],
                  "y": [1.0, float("nan")]}).to_parquet(tmp_path / "events.parquet")
    chosen["events"] = tmp_path / "events.parquet"
    message = refused(chosen, tmp_path / "d")
    assert "row 2: empty" in message and "None" not in message and "nan" not in message, message


@pytest.mark.parametrize("separator, named", [(";", "';'-separated"), ("\t", "tab-separated")])
def test_a_file_with_another_delimiter_is_named_as_such(tmp_path, separator, named):
    rows = "".join(f"1{separator}10{separator}{1767225600 + i}{separator}1\n" for i in range(8))
    message = refused(files(tmp_path, f"uid{separator}job{separator}ts{separator}y\n" + rows), tmp_path / "d")
    assert f"events.csv: looks like {named}; rankflow reads comma-separated CSV" in message, message
    assert "column '" not in message and "row " not in message, message


def test_semicolon_file_whose_fields_hold_commas_is_named_as_such(tmp_path):
    """pandas fails on such a file before any header check could run: the header is sniffed first."""
    message = refused(files(tmp_path, "uid,job,ts,y\n1,10,1767225600,1\n",
                            members='uid;signup;note\n1;2025-12-01;"a, b"\n2;2025-12-01;c,d,e\n'), tmp_path / "d")
    assert "members.csv: looks like ';'-separated" in message, message


def test_cli_exits_2_naming_file_column_and_row_for_millisecond_timestamps(tmp_path):
    from rankflow.cli import app

    chosen = files(tmp_path, "uid,job,ts,y\n1,10,1769904000000,1\n")
    result = CliRunner().invoke(app, ["ingest", *[f"--{k}={v}" for k, v in chosen.items()],
                                      "--data-dir", str(tmp_path / "d")], env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    assert "column 'ts'" in result.output and "row 1: '1769904000000'" in result.output
    assert "milliseconds" in result.output and "OutOfBounds" not in result.output
