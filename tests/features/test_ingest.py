"""Bring your own data: round trip with the generator, seven kinds of bad input, idempotence."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from features.contract import TABLES, partition_days, read_raw
from features.ingest import IngestError, ingest
from rankflow.paths import DataPaths

USER_SCHEMA = """
members: {id: member_id, timestamp: signup_ts, categorical: [industry, seniority, region], numeric: [years_experience], multi_valued: {skills: "|"}}
items:   {id: item_id, timestamp: posted_ts, categorical: [company, industry, seniority, region], numeric: [salary], multi_valued: {skills: "|"}}
events:  {member: member_id, item: item_id, timestamp: ts, label: label, context: [position]}
"""


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under root (hidden ones included) -> sha256 of its bytes."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def exported(tiny_data_dir, tmp_path_factory) -> dict[str, Path]:
    """The tiny generated marketplace exported the way a user would hold it: CSV, '|'-joined skills.

    Members carry ISO-8601 timestamps, items Unix seconds, events ISO-8601 without event_id and weight
    (ingest derives the ids and defaults the weights, as the generator does).
    """
    paths, out = DataPaths(tiny_data_dir), tmp_path_factory.mktemp("export")
    members = read_raw(paths, "members")
    members["signup_ts"] = members.signup_ts.map(lambda t: t.isoformat())
    members["skills"] = members.skills.map("|".join)
    items = read_raw(paths, "items")
    items["posted_ts"] = items.posted_ts.map(lambda t: f"{t.value // 1000 / 1e6:.6f}")
    items["skills"] = items.skills.map("|".join)
    events = read_raw(paths, "events").drop(columns=["event_id", "weight"])
    events["ts"] = events.ts.map(lambda t: t.isoformat())
    files = {"schema": out / "schema.yaml", "members": out / "members.csv", "items": out / "items.csv",
             "events": out / "events.csv"}
    files["schema"].write_text(USER_SCHEMA)
    members.to_csv(files["members"], index=False)
    items.to_csv(files["items"], index=False)
    events.to_csv(files["events"], index=False)
    return files


def run_ingest(files: dict[str, Path], root: Path, **replaced: Path) -> dict:
    chosen = {**files, **replaced}
    return ingest(chosen["schema"], chosen["members"], chosen["items"], chosen["events"], DataPaths(root))


@pytest.fixture(scope="module")
def ingested(exported, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ingested")
    run_ingest(exported, root)
    return root


def test_generate_export_ingest_gives_the_same_raw_zone(tiny_data_dir, ingested):
    generated, again = DataPaths(tiny_data_dir), DataPaths(ingested)
    assert (ingested / "raw" / "schema.yaml").read_text() == generated.raw_schema.read_text()
    for table in TABLES:
        days = partition_days(generated.raw_table(table))
        assert days and partition_days(again.raw_table(table)) == days, table
        for day in days:
            expected, actual = read_raw(generated, table, day=day), read_raw(again, table, day=day)
            pd.testing.assert_frame_equal(actual, expected, check_exact=True)
            # same Arrow schema (types, nullability) and even the same bytes
            assert (pq.read_schema(again.raw_partition(table, day) / "part-0.parquet")
                    == pq.read_schema(generated.raw_partition(table, day) / "part-0.parquet"))
            assert ((again.raw_partition(table, day) / "part-0.parquet").read_bytes()
                    == (generated.raw_partition(table, day) / "part-0.parquet").read_bytes()), (table, day)


def test_reingesting_the_same_input_changes_no_byte(exported, ingested):
    before = tree_digest(ingested)
    summary = run_ingest(exported, ingested)
    assert tree_digest(ingested) == before
    assert summary["events"] == 8_000 and summary["start"] == "2026-01-01" and summary["end"] == "2026-01-04"


def test_parquet_input_with_event_ids_and_weights(tmp_path, tiny_data_dir):
    paths = DataPaths(tiny_data_dir)
    for table in TABLES:
        read_raw(paths, table).to_parquet(tmp_path / f"{table}.parquet")
    schema = USER_SCHEMA.replace("events:  {member", "events:  {id: event_id, weight: weight, member")
    (tmp_path / "schema.yaml").write_text(schema)
    files = {"schema": tmp_path / "schema.yaml", **{t: tmp_path / f"{t}.parquet" for t in TABLES}}
    run_ingest(files, tmp_path / "out")
    for table in TABLES:
        pd.testing.assert_frame_equal(read_raw(DataPaths(tmp_path / "out"), table), read_raw(paths, table))


def test_missing_timestamps_and_unix_seconds_and_defaults(tmp_path):
    (tmp_path / "schema.yaml").write_text(
        "members: {id: uid}\nitems: {id: job, categorical: [kind], multi_valued: {tags: ';'}}\n"
        "events: {member: uid, item: job, timestamp: when, label: applied}\n")
    (tmp_path / "m.csv").write_text("uid\n7\n8\n")
    (tmp_path / "i.csv").write_text('job,kind,tags\n1,a,"x; y"\n2,b,\n')
    (tmp_path / "e.csv").write_text("uid,job,when,applied\n7,1,1767225600,1\n8,2,2026-01-02T05:00:00+01:00,0\n")
    root = tmp_path / "out"
    ingest(tmp_path / "schema.yaml", tmp_path / "m.csv", tmp_path / "i.csv", tmp_path / "e.csv", DataPaths(root))
    paths = DataPaths(root)
    events = read_raw(paths, "events")
    assert events.ts.dt.strftime("%Y-%m-%dT%H:%M").tolist() == ["2026-01-01T00:00", "2026-01-02T04:00"]
    assert events.weight.tolist() == [1.0, 1.0] and events.label.tolist() == [1, 0]
    # no signup_ts: a member lands on its first event day, with a null timestamp
    assert read_raw(paths, "members", day=pd.Timestamp("2026-01-02").date()).member_id.tolist() == [8]
    assert read_raw(paths, "members").signup_ts.isna().all()
    assert [list(t) if t is not None else None for t in read_raw(paths, "items").tags] == [["x", "y"], None]


# --- bad input: each fails with one message naming file, column, rows, expectation; raw zone unchanged ---

def _write(path: Path, frame: pd.DataFrame, sep: str = ",") -> Path:
    frame.to_csv(path, index=False, sep=sep)
    return path


def bad_missing_column(files, tmp):
    frame = pd.read_csv(files["members"], dtype=str).rename(columns={"member_id": "membr_id"})
    return {"members": _write(tmp / "members.csv", frame)}


def bad_label(files, tmp):
    frame = pd.read_csv(files["events"], dtype=str)
    frame.loc[[2, 9], "label"] = ["2", "yes"]
    return {"events": _write(tmp / "events.csv", frame)}


def bad_timestamp(files, tmp):
    frame = pd.read_csv(files["events"], dtype=str)
    frame.loc[4, "ts"] = "2026-13-45 25:61"
    return {"events": _write(tmp / "events.csv", frame)}


def bad_unknown_member(files, tmp):
    frame = pd.read_csv(files["events"], dtype=str)
    frame.loc[6, "member_id"] = "999999"
    return {"events": _write(tmp / "events.csv", frame)}


def bad_duplicate_ids(files, tmp):
    frame = pd.read_csv(files["items"], dtype=str)
    frame.loc[3, "item_id"] = frame.loc[1, "item_id"]
    return {"items": _write(tmp / "items.csv", frame)}


def bad_empty_file(files, tmp):
    (tmp / "items.csv").write_bytes(b"")
    return {"items": tmp / "items.csv"}


def bad_delimiter(files, tmp):
    frame = pd.read_csv(files["events"], dtype=str)
    return {"events": _write(tmp / "events.csv", frame, sep=";")}


def bad_string_ids(files, tmp):
    frame = pd.read_csv(files["members"], dtype=str)
    frame.loc[0, "member_id"] = "m-1"
    return {"members": _write(tmp / "members.csv", frame)}


BAD_INPUTS = {
    # case: (make the bad file, file name, column, fragments the message must hold)
    "missing column": (bad_missing_column, "members.csv", "member_id", ["missing from the file", "did you mean 'membr_id'"]),
    "label outside 0/1": (bad_label, "events.csv", "label", ["row 3: '2'", "row 10: 'yes'", "2 in all", "0 (no"]),
    "unparseable timestamp": (bad_timestamp, "events.csv", "ts", ["row 5: '2026-13-45 25:61'", "ISO-8601"]),
    "unknown member": (bad_unknown_member, "events.csv", "member_id", ["row 7: '999999'", "members.csv"]),
    "duplicate ids": (bad_duplicate_ids, "items.csv", "item_id", ["duplicate ids", "row 2", "row 4", "exactly once"]),
    "empty file": (bad_empty_file, "items.csv", None, ["empty", "a header line"]),
    "wrong delimiter": (bad_delimiter, "events.csv", None, ["looks like ';'-separated", "comma-separated CSV"]),
    "string ids": (bad_string_ids, "members.csv", "member_id", ["ids must be integers", "row 1: 'm-1'"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_fails_with_a_clear_message_and_leaves_the_raw_zone_unchanged(case, exported, ingested,
                                                                                 tmp_path):
    make_bad, file_name, column, fragments = BAD_INPUTS[case]
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    bad_files = make_bad(exported, bad_dir)
    before = tree_digest(ingested)
    with pytest.raises(IngestError) as caught:
        run_ingest(exported, ingested, **bad_files)
    message = str(caught.value)
    assert file_name in message and "expected" in message
    if column:
        assert f"column '{column}" in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert message.count("row ") <= 5 + message.count("rows ")  # at most five rows shown
    assert tree_digest(ingested) == before
    # into an empty data directory, nothing at all is created
    with pytest.raises(IngestError):
        run_ingest(exported, tmp_path / "fresh", **bad_files)
    assert not (tmp_path / "fresh").exists()


def test_cli_prints_the_error_and_exits_2_without_traceback(exported, tmp_path):
    from rankflow.cli import app

    bad = bad_label(exported, tmp_path)["events"]
    args = ["ingest", "--schema", str(exported["schema"]), "--members", str(exported["members"]),
            "--items", str(exported["items"]), "--events", str(bad), "--data-dir", str(tmp_path / "d")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "labels outside {0, 1}" in result.output and "Traceback" not in result.output
    good = CliRunner().invoke(app, args[:-3] + [str(exported["events"]), "--data-dir", str(tmp_path / "d")])
    assert good.exit_code == 0, good.output
    assert json.loads(good.stdout[good.stdout.index("{"):])["events"] == 8_000
