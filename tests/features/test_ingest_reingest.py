"""Re-ingesting into a data directory: members and items are upserted by id, so every id is stored once.

Members and items are stored by arrival day, events by event day. A second ingest replaces the event days
its input covers and upserts members and items by id (a row in the new file replaces the stored row of that
id wherever it was stored; ids not in the file stay), and refuses to leave any id twice in the raw zone.
"""

from __future__ import annotations

import hashlib
from datetime import date
from pathlib import Path

import pyarrow as pa
import pytest

from features import contract
from features.contract import partition_days, read_raw
from features.ingest import IngestError, ingest
from rankflow.paths import DataPaths, atomic_directory

NO_TIMESTAMPS = "members: {id: uid}\nitems: {id: job}\nevents: {member: uid, item: job, timestamp: ts, label: y}\n"
WITH_TIMESTAMPS = ("members: {id: uid, timestamp: signup, categorical: [city]}\n"
                   "items: {id: job, timestamp: posted}\n"
                   "events: {member: uid, item: job, timestamp: ts, label: y}\n")
DAY_1, DAY_4 = date(2026, 1, 1), date(2026, 1, 4)


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def run(folder: Path, root: Path, members: str, items: str, events: str, schema: str = NO_TIMESTAMPS) -> dict:
    return ingest(write(folder, "schema.yaml", schema), write(folder, "members.csv", members),
                  write(folder, "items.csv", items), write(folder, "events.csv", events), DataPaths(root))


def ids_once(paths: DataPaths, table: str) -> list[int]:
    ids = read_raw(paths, table)[f"{'member' if table == 'members' else 'item'}_id"]
    duplicated = sorted(set(ids[ids.duplicated()]))
    assert not duplicated, f"{table}: ids stored more than once: {duplicated}"
    return sorted(ids)


def test_next_day_without_member_timestamps_keeps_each_member_once_on_its_first_day(tmp_path):
    """Repro A: no signup timestamps, the full members table again with the next day's events."""
    root, paths = tmp_path / "data", DataPaths(tmp_path / "data")
    members, items = "uid\n1\n2\n3\n", "job\n10\n11\n"
    run(tmp_path, root, members, items, "uid,job,ts,y\n1,10,2026-01-01T08:00:00Z,1\n2,11,2026-01-01T09:00:00Z,0\n")
    run(tmp_path, root, members, items, "uid,job,ts,y\n2,10,2026-01-04T08:00:00Z,1\n3,11,2026-01-04T09:00:00Z,0\n")

    assert ids_once(paths, "members") == [1, 2, 3] and ids_once(paths, "items") == [10, 11]
    # members 1 and 2 arrived with their first events (day 1); member 3, without events then, too
    assert partition_days(paths.raw_table("members")) == [DAY_1]
    assert partition_days(paths.raw_table("events")) == [DAY_1, DAY_4]
    # every event's member and item is known on the event's day (the raw-events validation rule)
    for day in (DAY_1, DAY_4):
        events = read_raw(paths, "events", day=day)
        assert set(events.member_id) <= set(read_raw(paths, "members", end=day).member_id)
        assert set(events.item_id) <= set(read_raw(paths, "items", end=day).item_id)


def test_corrected_signup_moves_the_member_and_leaves_no_copy_behind(tmp_path):
    """Repro B: a corrected members.csv whose signup_ts changed replaces the stored row wherever it was."""
    root, paths = tmp_path / "data", DataPaths(tmp_path / "data")
    items = "job,posted\n10,2025-12-20T00:00:00Z\n"
    events = "uid,job,ts,y\n1,10,2026-01-04T08:00:00Z,1\n2,10,2026-01-04T09:00:00Z,0\n"
    run(tmp_path, root, "uid,signup,city\n1,2025-12-01T00:00:00Z,paris\n2,2025-12-02T00:00:00Z,lyon\n",
        items, events, WITH_TIMESTAMPS)
    run(tmp_path, root, "uid,signup,city\n1,2025-12-01T00:00:00Z,paris\n2,2025-12-03T12:00:00Z,nice\n",
        items, events, WITH_TIMESTAMPS)

    assert ids_once(paths, "members") == [1, 2]
    # dt=2025-12-02 held only member 2: it is gone, not left empty
    assert partition_days(paths.raw_table("members")) == [date(2025, 12, 1), date(2025, 12, 3)]
    moved = read_raw(paths, "members", day=date(2025, 12, 3))
    assert moved.member_id.tolist() == [2] and moved.city.tolist() == ["nice"]
    assert str(moved.signup_ts.iloc[0]) == "2025-12-03 12:00:00+00:00"
    assert not [p.name for p in paths.raw_table("members").iterdir() if p.name.startswith(".")]


def test_corrected_posted_ts_moves_the_item(tmp_path):
    root, paths = tmp_path / "data", DataPaths(tmp_path / "data")
    members = "uid,signup,city\n1,2025-12-01T00:00:00Z,paris\n"
    events = "uid,job,ts,y\n1,10,2026-01-04T08:00:00Z,1\n1,11,2026-01-04T09:00:00Z,0\n"
    # posted 2025-12-20 and 2025-12-19; item 11's date is corrected to 2025-12-21
    run(tmp_path, root, members, "job,posted\n10,1766188800\n11,1766102400\n", events, WITH_TIMESTAMPS)
    run(tmp_path, root, members, "job,posted\n10,1766188800\n11,1766275200\n", events, WITH_TIMESTAMPS)
    assert ids_once(paths, "items") == [10, 11]
    assert partition_days(paths.raw_table("items")) == [date(2025, 12, 20), date(2025, 12, 21)]
    assert read_raw(paths, "items", day=date(2025, 12, 21)).item_id.tolist() == [11]


def test_members_already_ingested_may_be_left_out_of_the_next_file(tmp_path):
    """Upsert: ids not in the new file stay, and events may refer to them."""
    root, paths = tmp_path / "data", DataPaths(tmp_path / "data")
    run(tmp_path, root, "uid\n1\n2\n", "job\n10\n", "uid,job,ts,y\n1,10,2026-01-01T08:00:00Z,1\n")
    run(tmp_path, root, "uid\n3\n", "job\n10\n",
        "uid,job,ts,y\n1,10,2026-01-04T08:00:00Z,0\n3,10,2026-01-04T09:00:00Z,1\n")
    assert ids_once(paths, "members") == [1, 2, 3]
    assert read_raw(paths, "members", day=DAY_4).member_id.tolist() == [3]
    # an id neither in the file nor in the raw zone is still refused
    with pytest.raises(IngestError, match=r"neither in members.csv nor already in the raw zone.*row 1: '9'"):
        run(tmp_path, root, "uid\n3\n", "job\n10\n", "uid,job,ts,y\n9,10,2026-01-05T08:00:00Z,0\n")


def test_reingesting_an_earlier_day_moves_members_without_timestamps_earlier(tmp_path):
    """A member first seen on day 4 whose day-2 events arrive later must be known on day 2."""
    root, paths = tmp_path / "data", DataPaths(tmp_path / "data")
    run(tmp_path, root, "uid\n1\n", "job\n10\n", "uid,job,ts,y\n1,10,2026-01-04T08:00:00Z,1\n")
    run(tmp_path, root, "uid\n2\n", "job\n10\n", "uid,job,ts,y\n1,10,2026-01-02T08:00:00Z,1\n2,10,2026-01-02T09:00:00Z,0\n")
    assert ids_once(paths, "members") == [1, 2]
    assert partition_days(paths.raw_table("members")) == [date(2026, 1, 2)]


def _duplicate_member_partition(paths: DataPaths, source: date, copy: date) -> None:
    """What rankflow before this fix left behind: the same members stored on two days."""
    arrow_schema = contract.members_arrow_schema(contract.load_raw_schema(paths).members)
    rows = read_raw(paths, "members", day=source)
    with atomic_directory(paths.raw_partition("members", copy)) as staging:
        contract.write_partition(staging, pa.Table.from_pandas(rows, schema=arrow_schema, preserve_index=False))


def test_ids_left_twice_in_the_raw_zone_are_refused_with_table_and_ids(tmp_path):
    root, paths = tmp_path / "data", DataPaths(tmp_path / "data")
    run(tmp_path, root, "uid\n1\n2\n", "job\n10\n", "uid,job,ts,y\n1,10,2026-01-01T08:00:00Z,1\n")
    _duplicate_member_partition(paths, DAY_1, DAY_4)
    before = tree_digest(root)
    with pytest.raises(IngestError) as caught:
        run(tmp_path, root, "uid\n3\n", "job\n10\n", "uid,job,ts,y\n3,10,2026-01-05T08:00:00Z,1\n")
    message = str(caught.value)
    assert "members" in message and "[1, 2]" in message and "more than once" in message, message
    assert tree_digest(root) == before
    # the full members table replaces every stored copy: the zone is repaired
    run(tmp_path, root, "uid\n1\n2\n3\n", "job\n10\n", "uid,job,ts,y\n3,10,2026-01-05T08:00:00Z,1\n")
    assert ids_once(paths, "members") == [1, 2, 3]


def test_event_ids_repeated_on_another_day_are_refused(tmp_path):
    root = tmp_path / "data"
    schema = "members: {id: uid}\nitems: {id: job}\nevents: {id: eid, member: uid, item: job, timestamp: ts, label: y}\n"
    run(tmp_path, root, "uid\n1\n", "job\n10\n", "eid,uid,job,ts,y\n5,1,10,2026-01-01T08:00:00Z,1\n", schema)
    before = tree_digest(root)
    with pytest.raises(IngestError, match=r"more than once in the raw zone's events: \[5\]"):
        run(tmp_path, root, "uid\n1\n", "job\n10\n", "eid,uid,job,ts,y\n5,1,10,2026-01-02T08:00:00Z,1\n", schema)
    assert tree_digest(root) == before


def test_a_failure_while_staging_the_merge_leaves_the_raw_zone_as_it_was(tmp_path, monkeypatch):
    root, paths = tmp_path / "data", DataPaths(tmp_path / "data")
    items = "job,posted\n10,2025-12-20T00:00:00Z\n"
    events = "uid,job,ts,y\n1,10,2026-01-04T08:00:00Z,1\n2,10,2026-01-04T09:00:00Z,0\n"
    run(tmp_path, root, "uid,signup,city\n1,2025-12-01T00:00:00Z,a\n2,2025-12-02T00:00:00Z,b\n", items, events,
        WITH_TIMESTAMPS)
    before = tree_digest(root)
    written = []

    def failing_write(staging, table):
        written.append(staging)
        if len(written) == 3:
            raise OSError("disk full")
        return original(staging, table)

    original = contract.write_partition
    monkeypatch.setattr(contract, "write_partition", failing_write)
    with pytest.raises(OSError, match="disk full"):
        run(tmp_path, root, "uid,signup,city\n1,2025-12-01T00:00:00Z,a\n2,2025-12-05T00:00:00Z,c\n", items, events,
            WITH_TIMESTAMPS)
    assert tree_digest(root) == before
    assert not [p for p in root.rglob(".*")], "staging copies left behind"
