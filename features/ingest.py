"""Bring your own data: validate members/items/events tables and write them into the raw zone, all or nothing.

Input: three tables (CSV with a header, comma-separated, optionally .gz; or Parquet) and a schema YAML that
names the user's columns by role (docs/contracts.md, "Raw zone"):

    members: {id: member_id, timestamp: signup_ts, categorical: [...], numeric: [...], multi_valued: {skills: "|"}}
    items:   {id: item_id, timestamp: posted_ts, categorical: [...], numeric: [...], multi_valued: {genres: "|"}}
    events:  {member: member_id, item: item_id, timestamp: ts, label: label, weight: weight}

Optional keys may be left out (events: `id`, `weight`, `context`). Timestamps are Unix seconds or ISO-8601
(no offset means UTC), between 1970-01-02 and 2100-01-01. Output is exactly what the generator writes:
canonical column names and types, partitioned by event date (members/items by arrival date), sorted, with
deterministic bytes, so re-ingesting the same input changes nothing.

Ingesting into a raw zone that already holds data merges: events replace the event days the input covers
(other days stay); members and items are upserted by id (a row in the file replaces the stored row of that id,
on whatever arrival day it was stored; ids not in the file stay, and events may refer to them). After the
merge every member, item and event id must appear once in the whole raw zone, or nothing is written.

Everything is read and checked in memory first; the first problem raises one `IngestError` naming the file,
the column, the first offending rows and what was expected, before anything is written. Then every
partition that changes is staged aside and all are swapped in together (`replace_all_or_nothing`): on any
error the raw zone is exactly as it was, and an ingest killed midway is rolled back (or, if every partition
had been swapped in, completed) by the next ingest or generate into the same data directory.
"""

from __future__ import annotations

import csv
import difflib
import gzip
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from features import contract
from features.contract import EntitySchema, EventSchema, RawSchema, SchemaError
from rankflow.paths import PART_FILE, DataPaths, partition_days, recover_replacement, replace_all_or_nothing

MICROS_PER_DAY = 86_400_000_000
MAX_SHOWN_ROWS = 5
MAX_SHOWN_IDS = 10
_EPOCH = date(1970, 1, 1)
_INTEGER = re.compile(r"^[+-]?\d+$")
_DECIMAL = re.compile(r"^([+-]?)(\d+)(?:\.(\d*))?$")
# A header line without a comma but with one of these was written with another delimiter.
_WRONG_DELIMITERS = {";": "';'-separated", "\t": "tab-separated", "|": "'|'-separated"}

# Accepted timestamps: [1970-01-02, 2100-01-01) UTC. Zero, a small or a negative number is nearly always a
# placeholder or a unit mistake, and pandas cannot even hold Unix milliseconds read as seconds.
EARLIEST_TS = pd.Timestamp("1970-01-02", tz="UTC")
LATEST_TS = pd.Timestamp("2100-01-01", tz="UTC")
_EARLIEST_S, _LATEST_S = int(EARLIEST_TS.timestamp()), int(LATEST_TS.timestamp())
TIMESTAMP_WINDOW = (f"from 1970-01-02 (Unix {_EARLIEST_S}) up to, not including, 2100-01-01 "
                    f"(Unix {_LATEST_S}), UTC")
# Numbers that land in a plausible recent window once divided by one of these were given in that unit.
_UNIT_HINTS = (("milliseconds", 1_000), ("microseconds", 1_000_000), ("nanoseconds", 1_000_000_000))
_HINT_FROM_S = int(pd.Timestamp("2000-01-01", tz="UTC").timestamp())


class IngestError(ValueError):
    """Input that cannot be ingested; the message names file, column, offending rows and what was expected."""

    def __init__(self, file: Path | str, problem: str, expected: str, column: str | None = None,
                 rows: Sequence[tuple[int, Any]] = (), total: int | None = None) -> None:
        self.file, self.column, self.problem, self.expected = str(file), column, problem, expected
        self.rows = list(rows)[:MAX_SHOWN_ROWS]
        where = f"{self.file}: column '{column}'" if column else self.file
        message = f"{where}: {problem}; expected {expected}."
        if self.rows:
            shown = ", ".join(f"row {row}: {'empty' if value is None else repr(value)}" for row, value in self.rows)
            count = total if total is not None else len(rows)
            message += f" First offending rows ({count} in all; {_row_numbering(self.file)}): {shown}"
        super().__init__(message)


def _row_numbering(file: str) -> str:
    """How the row numbers in a message count, for the file's format (a Parquet file has no header line)."""
    if file.lower().endswith((".parquet", ".pq")):
        return "row 1 is the first row of the table"
    return "row 1 is the first line after the header"


@dataclass(frozen=True)
class _Source:
    """One input table: where it came from (for messages) and its rows (strings for CSV, typed for Parquet)."""

    path: Path
    frame: pd.DataFrame

    def offending(self, mask: np.ndarray, column: str) -> tuple[list[tuple[int, Any]], int]:
        positions = np.flatnonzero(mask)
        values = self.frame[column].to_numpy()
        return [(int(p) + 1, _plain(values[p])) for p in positions[:MAX_SHOWN_ROWS]], len(positions)

    def fail(self, column: str, mask: np.ndarray, problem: str, expected: str) -> IngestError:
        rows, total = self.offending(mask, column)
        return IngestError(self.path, problem, expected, column=column, rows=rows, total=total)


def _plain(value: Any) -> Any:
    """A value as a person would read it in the message (numpy scalars and arrays to Python; missing -> None)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return list(value)
    if value is None or value is pd.NA or value is pd.NaT or (isinstance(value, (float, np.floating))
                                                               and np.isnan(value)):
        return None
    if isinstance(value, (pd.Timestamp, datetime, np.datetime64)):
        return pd.Timestamp(value).isoformat()
    if isinstance(value, np.generic):
        return value.item()
    return value


# --- reading ---------------------------------------------------------------------------------------------------

def _read_source(path: Path) -> _Source:
    path = Path(path)
    if not path.is_file():
        raise IngestError(path, "file not found", "an existing CSV or Parquet file")
    name = path.name.lower()
    if path.stat().st_size == 0:
        raise IngestError(path, "the file is empty", "a header line and at least one row")
    if name.endswith((".parquet", ".pq")):
        try:
            frame = pq.read_table(path).to_pandas()
        except (pa.ArrowInvalid, OSError) as error:
            raise IngestError(path, f"not a readable Parquet file ({error})", "a Parquet file") from None
    elif name.endswith((".csv", ".csv.gz")):
        _check_delimiter(path)
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], quoting=csv.QUOTE_MINIMAL)
        except pd.errors.EmptyDataError:
            raise IngestError(path, "the file is empty", "a header line and at least one row") from None
        except (pd.errors.ParserError, UnicodeDecodeError) as error:
            raise IngestError(path, f"not readable as CSV ({error})", "comma-separated UTF-8 text with a header") from None
    else:
        raise IngestError(path, "unknown file type", "a .csv, .csv.gz or .parquet file")
    if frame.empty:
        raise IngestError(path, "the file has a header but no rows", "at least one row")
    return _Source(path, frame.reset_index(drop=True))


def _check_delimiter(path: Path) -> None:
    """A header line with no comma but with ';', a tab or '|' was written with another delimiter.

    Checked on the raw first line, before pandas reads the file: with another delimiter pandas either sees one
    column named after the whole header or fails on the first data line holding a comma.
    """
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace", newline="") as handle:
            header = handle.readline().lstrip("\ufeff").rstrip("\r\n")
    except (OSError, EOFError):
        return  # not readable as text: pd.read_csv reports it
    if "," in header:
        return
    for delimiter, name in _WRONG_DELIMITERS.items():
        if delimiter in header:
            shown = header if len(header) <= 80 else header[:77] + "..."
            raise IngestError(path, f"looks like {name}; rankflow reads comma-separated CSV (header line: {shown!r})",
                              "fields separated by ',': re-save or export the file as comma-separated CSV")


def _require(source: _Source, table: str, columns: Sequence[str]) -> None:
    present = [str(c) for c in source.frame.columns]
    for column in columns:
        if column not in present:
            close = difflib.get_close_matches(column, present, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise IngestError(source.path, f"missing from the file, though the schema names it for {table}{hint}",
                              f"a column '{column}'; the file has columns {present}", column=column)


# --- converting columns to canonical types ---------------------------------------------------------------------

def _is_missing(values: pd.Series) -> np.ndarray:
    return values.isna().to_numpy()


def _ids(source: _Source, column: str) -> np.ndarray:
    values = source.frame[column]
    expected = "integer ids (string ids are not supported: map them to integers first)"
    if pd.api.types.is_integer_dtype(values.dtype) and not values.isna().any():
        return values.to_numpy(dtype=np.int64)
    if pd.api.types.is_float_dtype(values.dtype):
        bad = (values.isna() | (values != np.floor(values))).to_numpy()
        if bad.any():
            raise source.fail(column, bad, "ids must be integers", expected)
        return values.to_numpy(dtype=np.int64)
    text = values.astype("string").str.strip()
    bad = (~text.str.match(_INTEGER.pattern).fillna(False)).to_numpy()
    if bad.any():
        raise source.fail(column, bad, "ids must be integers", expected)
    try:
        return text.astype(np.int64).to_numpy()
    except (OverflowError, ValueError):
        raise IngestError(source.path, "an id does not fit in 64 bits", "ids between -2^63 and 2^63-1",
                          column=column) from None


def _decimal_seconds_to_micros(text: pd.Series) -> np.ndarray:
    """'1767225600.123456' -> µs exactly (no float rounding); every value must match _DECIMAL and be in range."""
    parts = text.str.extract(_DECIMAL.pattern)
    sign = np.where(parts[0] == "-", -1, 1)
    whole = parts[1].astype(np.int64).to_numpy()
    fraction = parts[2].fillna("").str.ljust(6, "0").str[:6].astype(np.int64).to_numpy()
    return sign * (whole * 1_000_000 + fraction)


def _check_window(source: _Source, column: str, seconds: np.ndarray, checked: np.ndarray, expected: str,
                  numbers: bool) -> None:
    """Refuse timestamps outside TIMESTAMP_WINDOW; say so when numbers look like ms, µs or ns since the epoch."""
    with np.errstate(invalid="ignore"):
        outside = checked & ~((seconds >= _EARLIEST_S) & (seconds < _LATEST_S))
    if not outside.any():
        return
    problem = "timestamps out of range"
    if numbers:
        for unit, per_second in _UNIT_HINTS:
            scaled = seconds[outside] / per_second
            if ((scaled >= _HINT_FROM_S) & (scaled < _LATEST_S)).all():
                problem += (f"; these look like {unit} since the epoch: divide them by {per_second:,} "
                            "to get Unix seconds")
                break
    raise source.fail(column, outside, problem, expected)


def _timestamps(source: _Source, column: str, required: bool) -> tuple[np.ndarray, np.ndarray]:
    """Unix seconds or ISO-8601 (naive = UTC), inside TIMESTAMP_WINDOW -> (µs since epoch, missing mask)."""
    values = source.frame[column]
    missing = _is_missing(values)
    present = ~missing
    expected = ("Unix seconds (e.g. 1767225600) or ISO-8601 (e.g. 2026-01-01T09:30:00Z), "
                f"{TIMESTAMP_WINDOW}")
    if required and missing.any():
        raise source.fail(column, missing, "missing timestamps", expected)
    micros = np.zeros(len(values), dtype=np.int64)
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        parsed = values.dt.tz_localize("UTC") if values.dt.tz is None else values.dt.tz_convert("UTC")
        micros[present] = parsed[present].astype("datetime64[us, UTC]").astype(np.int64).to_numpy()
        _check_window(source, column, micros / 1e6, present, expected, numbers=False)
        return micros, missing
    if pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype):
        seconds = values.to_numpy(dtype=np.float64, na_value=np.nan)
        _check_window(source, column, seconds, present, expected, numbers=True)
        micros[present] = np.round(seconds[present] * 1e6).astype(np.int64)
        return micros, missing
    text = values.astype("string").str.strip()
    numeric = text.fillna("").str.match(_DECIMAL.pattern).to_numpy(dtype=bool) & present
    if numeric.any():
        # Range-check as floats first: out-of-range whole seconds would overflow int64 microseconds.
        seconds = np.full(len(values), np.nan)
        seconds[numeric] = text[numeric].astype(float).to_numpy()
        _check_window(source, column, seconds, numeric, expected, numbers=True)
        micros[numeric] = _decimal_seconds_to_micros(text[numeric])
    iso = ~numeric & present
    if iso.any():
        parsed = pd.to_datetime(text[iso], format="ISO8601", utc=True, errors="coerce")
        unparsed = np.zeros(len(values), dtype=bool)
        unparsed[np.flatnonzero(iso)] = parsed.isna().to_numpy()
        if unparsed.any():
            raise source.fail(column, unparsed, "unparseable timestamps", expected)
        micros[iso] = parsed.astype("datetime64[us, UTC]").astype(np.int64).to_numpy()
        _check_window(source, column, micros / 1e6, iso, expected, numbers=False)
    return micros, missing


def _labels(source: _Source, column: str) -> np.ndarray:
    values = source.frame[column]
    numbers = pd.to_numeric(values.astype("string").str.strip() if values.dtype == object else values,
                            errors="coerce")
    bad = ~np.isin(numbers.to_numpy(dtype=np.float64, na_value=np.nan), [0.0, 1.0])
    if bad.any():
        raise source.fail(column, bad, "labels outside {0, 1}", "0 (no positive action) or 1 (e.g. applied)")
    return numbers.to_numpy(dtype=np.float64).astype(np.int8)


def _numbers(source: _Source, column: str, what: str) -> np.ndarray:
    values = source.frame[column]
    numbers = pd.to_numeric(values.astype("string").str.strip() if values.dtype == object else values,
                            errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.isnan(numbers) & ~_is_missing(values)
    if bad.any():
        raise source.fail(column, bad, f"{what} values that are not numbers", "numbers, e.g. 3 or 2.5")
    return numbers


def _weights(source: _Source, column: str) -> np.ndarray:
    weights = _numbers(source, column, "weight")
    bad = ~np.isfinite(weights) | (weights < 0)
    if bad.any():
        raise source.fail(column, bad, "weights that are missing, negative or infinite",
                          "finite weights >= 0 (leave the column out for weight 1.0)")
    return weights.astype(np.float32)


def _categorical(source: _Source, column: str) -> pa.Array:
    values = source.frame[column]
    text = values.astype("string")
    return pa.array(text.to_numpy(dtype=object, na_value=None), type=contract.CATEGORICAL_TYPE)


def _multi_valued(source: _Source, column: str, separator: str) -> pa.Array:
    """'a|b|c' -> ['a', 'b', 'c'] (pieces stripped, empty pieces dropped); lists from Parquet kept as lists."""
    lists = []
    for value in source.frame[column].to_numpy(dtype=object):
        if value is None or (isinstance(value, float) and np.isnan(value)):
            lists.append(None)
        elif isinstance(value, (list, tuple, np.ndarray)):
            lists.append([str(v) for v in value])
        else:
            lists.append([piece.strip() for piece in str(value).split(separator) if piece.strip()])
    return pa.array(lists, type=contract.MULTI_VALUED_TYPE)


def _context(source: _Source, column: str) -> pa.Array:
    """Context columns keep their kind: all-integer -> int64, all-numeric -> float64, otherwise string."""
    values = source.frame[column]
    if pd.api.types.is_bool_dtype(values.dtype) or pd.api.types.is_integer_dtype(values.dtype):
        return pa.array(values.to_numpy(dtype=object, na_value=None), type=pa.int64())
    if pd.api.types.is_float_dtype(values.dtype):
        return pa.array(values.to_numpy(dtype=np.float64), type=pa.float64(), from_pandas=True)
    text = values.astype("string").str.strip()
    present = text.dropna()
    if len(present) and present.str.match(_INTEGER.pattern).all():
        return pa.array(pd.to_numeric(text).astype("Int64"), type=pa.int64())
    numbers = pd.to_numeric(present, errors="coerce")
    if len(present) and numbers.notna().all():
        return pa.array(pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan),
                        type=pa.float64(), from_pandas=True)
    return pa.array(text.to_numpy(dtype=object, na_value=None), type=pa.string())


def _check_unique(source: _Source, column: str, ids: np.ndarray, problem: str = "duplicate ids",
                  expected: str = "each id exactly once") -> None:
    duplicated = pd.Series(ids).duplicated(keep=False).to_numpy()
    if duplicated.any():
        raise source.fail(column, duplicated, problem, expected)


# --- the three tables ------------------------------------------------------------------------------------------

@dataclass
class _Entities:
    """Canonical columns of members or items, before partitioning."""

    ids: np.ndarray
    arrived_us: np.ndarray
    arrival_missing: np.ndarray
    attributes: dict[str, pa.Array]


@dataclass
class _Events:
    event_id: np.ndarray
    member_id: np.ndarray
    item_id: np.ndarray
    ts_us: np.ndarray
    label: np.ndarray
    weight: np.ndarray
    context: dict[str, pa.Array]


def _entities(source: _Source, table: str, schema: EntitySchema) -> _Entities:
    roles = [schema.id] + ([schema.timestamp] if schema.timestamp else []) + list(schema.attributes)
    _require(source, table, roles)
    ids = _ids(source, schema.id)
    _check_unique(source, schema.id, ids)
    if schema.timestamp:
        arrived, missing = _timestamps(source, schema.timestamp, required=False)
    else:
        arrived, missing = np.zeros(len(ids), np.int64), np.ones(len(ids), bool)
    attributes: dict[str, pa.Array] = {}
    for column in schema.categorical:
        attributes[column] = _categorical(source, column)
    for column in schema.numeric:
        attributes[column] = pa.array(_numbers(source, column, "numeric"), type=contract.NUMERIC_TYPE,
                                      from_pandas=True)
    for column, separator in schema.multi_valued.items():
        attributes[column] = _multi_valued(source, column, separator)
    return _Entities(ids, arrived, missing, attributes)


def _events(source: _Source, schema: EventSchema, known_members: np.ndarray, known_items: np.ndarray,
            member_file: Path, item_file: Path) -> _Events:
    """The events table; each member / item must be in its file or already in the raw zone (`known_*`)."""
    roles = [c for c in (schema.id, schema.member, schema.item, schema.timestamp, schema.label, schema.weight) if c]
    _require(source, "events", roles + list(schema.context))
    member_id, item_id = _ids(source, schema.member), _ids(source, schema.item)
    ts_us, _ = _timestamps(source, schema.timestamp, required=True)
    label = _labels(source, schema.label)
    weight = _weights(source, schema.weight) if schema.weight else np.ones(len(label), np.float32)
    for column, ids, known, file in ((schema.member, member_id, known_members, member_file),
                                     (schema.item, item_id, known_items, item_file)):
        unknown = ~np.isin(ids, known)
        if unknown.any():
            raise source.fail(column, unknown,
                              f"events refer to ids that are neither in {Path(file).name} nor already in the raw zone",
                              f"every {column} to appear in {file} or in an earlier ingest into this data directory")
    if schema.id:
        event_id = _ids(source, schema.id)
        _check_unique(source, schema.id, event_id)
    else:
        event_id = contract.derive_event_id(member_id, item_id, ts_us)
        _check_unique(source, schema.member, event_id, problem="the same (member, item, timestamp) appears twice",
                      expected="distinct events, or an event id column named in the schema's events.id")
    context = {column: _context(source, column) for column in schema.context}
    return _Events(event_id, member_id, item_id, ts_us, label, weight, context)


def _canonical_schema(user: RawSchema, context: Sequence[str]) -> RawSchema:
    """The user's roles under canonical names (attribute and context names are kept)."""
    def entity(schema: EntitySchema, id_name: str, ts_name: str) -> EntitySchema:
        return EntitySchema(id=id_name, timestamp=ts_name, categorical=schema.categorical, numeric=schema.numeric,
                            multi_valued=dict(schema.multi_valued))

    return RawSchema(
        members=entity(user.members, contract.MEMBER_ID, contract.SIGNUP_TS),
        items=entity(user.items, contract.ITEM_ID, contract.POSTED_TS),
        events=EventSchema(id=contract.EVENT_ID, member=contract.MEMBER_ID, item=contract.ITEM_ID,
                           timestamp=contract.TS, label=contract.LABEL, weight=contract.WEIGHT,
                           context=tuple(context)),
    )


def _check_names(path: Path, canonical: RawSchema) -> None:
    """Attribute and context names must not shadow the canonical columns they will sit beside."""
    reserved = {
        "members": {contract.MEMBER_ID, contract.SIGNUP_TS},
        "items": {contract.ITEM_ID, contract.POSTED_TS},
        "events": {contract.EVENT_ID, contract.MEMBER_ID, contract.ITEM_ID, contract.TS, contract.LABEL,
                   contract.WEIGHT},
    }
    named = {"members": canonical.members.attributes, "items": canonical.items.attributes,
             "events": canonical.events.context}
    for table, columns in named.items():
        clash = sorted(set(columns) & reserved[table])
        if clash:
            raise IngestError(path, f"{table} attribute/context column(s) {clash} clash with canonical names",
                              f"other names than {sorted(reserved[table])} for attribute columns")


def load_user_schema(path: Path) -> RawSchema:
    path = Path(path)
    if not path.is_file():
        raise IngestError(path, "schema file not found", "a YAML file naming the columns of members, items, events")
    try:
        data = yaml.safe_load(path.read_text())
        return RawSchema.from_dict(data, str(path))
    except yaml.YAMLError as error:
        raise IngestError(path, f"not valid YAML ({error})", "a YAML mapping") from None
    except SchemaError as error:
        raise IngestError(path, str(error).removeprefix(f"{path}: "),
                          "the schema shape in docs/contracts.md") from None


# --- merging with the raw zone, partitioning and writing -------------------------------------------------------

def _day_of(micros: np.ndarray) -> np.ndarray:
    return micros // MICROS_PER_DAY


def _epoch_day(day: date) -> int:
    return (day - _EPOCH).days


@dataclass
class _Stored:
    """What a raw table already holds: its rows and the day (since the epoch) of the partition each was read from."""

    table: pa.Table
    days: np.ndarray


def _read_stored(paths: DataPaths, table: str, arrow_schema: pa.Schema | None, skip_days: set[int] = frozenset(),
                 columns: Sequence[str] | None = None) -> _Stored:
    """Every partition of a raw table but `skip_days`: all columns cast to `arrow_schema`, or only `columns`."""
    tables, days = [], []
    for day in partition_days(paths.raw_table(table)):
        if _epoch_day(day) in skip_days:
            continue
        part = paths.raw_partition(table, day) / PART_FILE
        try:
            stored = pq.read_table(part, columns=list(columns) if columns else None)
            if arrow_schema is not None:
                stored = stored.select(arrow_schema.names).cast(arrow_schema)
        except (pa.ArrowException, KeyError, OSError) as error:
            raise IngestError(part, f"this stored partition cannot be merged with the input ({error})",
                              f"{table} partitions as rankflow writes them, with the columns of {paths.raw_schema}"
                              ) from None
        tables.append(stored)
        days.append(np.full(stored.num_rows, _epoch_day(day), dtype=np.int64))
    if not tables:
        schema = arrow_schema if arrow_schema is not None else pa.schema([(c, contract.ID_TYPE) for c in columns])
        return _Stored(schema.empty_table(), np.empty(0, np.int64))
    return _Stored(pa.concat_tables(tables), np.concatenate(days))


def _first_days(ids: np.ndarray, days: np.ndarray) -> pd.Series:
    """id -> earliest day it appears on."""
    return pd.Series(days, dtype=np.int64).groupby(ids).min()


@dataclass
class _Merged:
    """A members or items table after the upsert: every row, its arrival day, and the days whose partition changes."""

    table: pa.Table
    days: np.ndarray
    changed: set[int]

    def partitions(self) -> list[tuple[int, pa.Table | None]]:
        """The changed days' new partitions, rows sorted by id; None where no row is left on that day."""
        ids = self.table.column(0).to_numpy()
        order = np.argsort(ids, kind="stable")
        out = []
        for day in sorted(self.changed):
            rows = order[self.days[order] == day]
            out.append((day, self.table.take(pa.array(rows)).combine_chunks() if len(rows) else None))
        return out


def _merge_entities(entities: _Entities, stored: _Stored, arrow_schema: pa.Schema, first_event_day: pd.Series,
                    default_day: int) -> _Merged:
    """Upsert the input's rows by id into what the table holds.

    Arrival day: the timestamp's day; without a timestamp, the earliest of the id's first event day (over the raw
    zone after this ingest) and the day it was stored on before, else the input's first event day. Stored rows
    without a timestamp move earlier when events now show them earlier, so every event's member and item is
    known on the event's day.
    """
    stored_ids = stored.table.column(0).to_numpy()
    replaced = np.isin(stored_ids, entities.ids)
    days = _day_of(entities.arrived_us).copy()
    missing = entities.arrival_missing
    if missing.any():
        ids = entities.ids[missing]
        earliest = pd.concat([first_event_day.reindex(ids), _first_days(stored_ids, stored.days).reindex(ids)],
                             axis=1).min(axis=1)
        days[missing] = earliest.fillna(default_day).to_numpy(dtype=np.int64)

    kept = ~replaced
    kept_ids, old_days = stored_ids[kept], stored.days[kept]
    kept_days = old_days.copy()
    untimed = stored.table.column(1).is_null().to_numpy(zero_copy_only=False)[kept]
    if untimed.any():
        first = first_event_day.reindex(kept_ids[untimed]).to_numpy(dtype=np.float64)
        kept_days[untimed] = np.fmin(old_days[untimed], first).astype(np.int64)
    moved = kept_days != old_days

    changed = set(days.tolist()) | set(stored.days[replaced].tolist())
    changed |= set(old_days[moved].tolist()) | set(kept_days[moved].tolist())
    table = pa.concat_tables([stored.table.filter(pa.array(kept)),
                              _entity_table(entities, np.arange(len(entities.ids)), arrow_schema)])
    return _Merged(table, np.concatenate([kept_days, days]), changed)


def _check_zone_unique(paths: DataPaths, table: str, id_name: str, ids: np.ndarray, expected: str) -> None:
    """Every id once in the whole raw table, as it will be after this ingest."""
    repeated = np.unique(ids[pd.Series(ids).duplicated(keep=False).to_numpy()])
    if len(repeated):
        shown = repeated[:MAX_SHOWN_IDS].tolist()
        more = f" and {len(repeated) - MAX_SHOWN_IDS} more" if len(repeated) > MAX_SHOWN_IDS else ""
        raise IngestError(paths.raw_table(table),
                          f"after this ingest, {len(repeated)} {id_name}(s) would be stored more than once in the "
                          f"raw zone's {table}: {shown}{more}", expected)


def _entity_table(entities: _Entities, rows: np.ndarray, arrow_schema: pa.Schema) -> pa.Table:
    arrived = pa.array(entities.arrived_us[rows], type=contract.TIMESTAMP_TYPE,
                       mask=entities.arrival_missing[rows])
    columns = [pa.array(entities.ids[rows], type=contract.ID_TYPE), arrived]
    columns += [entities.attributes[name].take(pa.array(rows)) for name in arrow_schema.names[2:]]
    return pa.Table.from_arrays(columns, schema=arrow_schema)


def _events_table(events: _Events, rows: np.ndarray) -> pa.Table:
    context = {name: array.take(pa.array(rows)) for name, array in events.context.items()}
    arrow_schema = contract.events_arrow_schema({name: array.type for name, array in context.items()})
    columns = [
        pa.array(events.event_id[rows], type=contract.ID_TYPE),
        pa.array(events.member_id[rows], type=contract.ID_TYPE),
        pa.array(events.item_id[rows], type=contract.ID_TYPE),
        pa.array(events.ts_us[rows], type=contract.TIMESTAMP_TYPE),
        pa.array(events.label[rows], type=contract.LABEL_TYPE),
        pa.array(events.weight[rows], type=contract.WEIGHT_TYPE),
        *context.values(),
    ]
    return pa.Table.from_arrays(columns, schema=arrow_schema)


def _partitions(order: np.ndarray, days: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Rows (already in output order) grouped by day."""
    ordered_days = days[order]
    return [(int(day), order[ordered_days == day]) for day in np.unique(ordered_days)]


def ingest(schema_path: Path | str, members_path: Path | str, items_path: Path | str, events_path: Path | str,
           paths: DataPaths) -> dict[str, Any]:
    """Validate the three tables against the schema and merge them into `paths.raw`; return a summary.

    Events replace the event days they cover; members and items are upserted by id (module docstring).
    Raises IngestError (before anything is written) on the first problem found. First rolls back (or completes)
    a replacement that a killed ingest or generate left half done, so the stored zone read here is whole.
    """
    recover_replacement(paths.root)
    user_schema = load_user_schema(Path(schema_path))
    members_source, items_source, events_source = (_read_source(Path(p)) for p in (members_path, items_path,
                                                                                    events_path))
    canonical = _canonical_schema(user_schema, user_schema.events.context)
    _check_names(Path(schema_path), canonical)
    if paths.raw_schema.exists() and paths.raw_schema.read_text() != canonical.to_yaml():
        raise IngestError(paths.raw_schema, "this data directory already holds a raw zone with a different schema",
                          "a new --data-dir, or the same schema as the data already there")

    members = _entities(members_source, "members", user_schema.members)
    items = _entities(items_source, "items", user_schema.items)
    schemas = {"members": contract.members_arrow_schema(canonical.members),
               "items": contract.items_arrow_schema(canonical.items)}
    stored = {table: _read_stored(paths, table, schemas[table]) for table in schemas}
    known = {table: np.union1d(entities.ids, stored[table].table.column(0).to_numpy())
             for table, entities in (("members", members), ("items", items))}
    events = _events(events_source, user_schema.events, known["members"], known["items"], members_source.path,
                     items_source.path)

    # The raw zone after this ingest: the input's event days replace the stored ones; other days stay.
    event_days = _day_of(events.ts_us)
    kept_events = _read_stored(paths, "events", None, skip_days=set(event_days.tolist()),
                               columns=(contract.EVENT_ID, contract.MEMBER_ID, contract.ITEM_ID))
    _check_zone_unique(paths, "events", contract.EVENT_ID,
                       np.concatenate([kept_events.table.column(0).to_numpy(), events.event_id]),
                       "each event id once over every day in the raw zone: an event of a day this input does not "
                       "cover has the same id (give ids that are unique over all your ingests)")
    plan: list[tuple[str, int, pa.Table | None]] = []
    for table, entities, owner, id_name in (("members", members, events.member_id, contract.MEMBER_ID),
                                            ("items", items, events.item_id, contract.ITEM_ID)):
        first_event_day = _first_days(np.concatenate([kept_events.table.column(id_name).to_numpy(), owner]),
                                      np.concatenate([kept_events.days, event_days]))
        merged = _merge_entities(entities, stored[table], schemas[table], first_event_day, int(event_days.min()))
        _check_zone_unique(paths, table, id_name, merged.table.column(0).to_numpy(),
                           f"each {id_name} once in the raw zone: include these ids in the {table} file (its row "
                           "replaces every stored copy), or ingest into a new --data-dir")
        plan += [(table, day, arrow_table) for day, arrow_table in merged.partitions()]
    for day, rows in _partitions(np.lexsort((events.event_id, events.ts_us)), event_days):
        plan.append(("events", day, _events_table(events, rows)))

    # Stage every changed partition (and the schema of a new raw zone), then swap them all in together.
    with replace_all_or_nothing(paths.root) as replacement:
        for table, day, arrow_table in plan:
            target = paths.raw_partition(table, _EPOCH + timedelta(days=day))
            if arrow_table is None:  # a partition left without rows
                replacement.remove(target)
            else:
                staging = replacement.stage(target)
                staging.mkdir()
                contract.write_partition(staging, arrow_table)
        if not paths.raw_schema.exists():  # else it holds this schema already (checked above)
            replacement.stage(paths.raw_schema).write_bytes(canonical.to_yaml().encode())

    input_days = sorted(set(event_days.tolist()))
    return {
        "data_dir": str(paths.root),
        "members": int(len(members.ids)),
        "items": int(len(items.ids)),
        "events": int(len(events.event_id)),
        "partitions": sum(1 for _, _, arrow_table in plan if arrow_table is not None),
        "start": (_EPOCH + timedelta(days=input_days[0])).isoformat(),
        "end": (_EPOCH + timedelta(days=input_days[-1])).isoformat(),
        "apply_rate": round(float(events.label.mean()), 4),
    }
