"""Bring your own data: validate members/items/events tables and write them into the raw zone, all or nothing.

Input: three tables (CSV with a header, comma-separated, optionally .gz; or Parquet) and a schema YAML that
names the user's columns by role (docs/contracts.md, "Raw zone"):

    members: {id: member_id, timestamp: signup_ts, categorical: [...], numeric: [...], multi_valued: {skills: "|"}}
    items:   {id: item_id, timestamp: posted_ts, categorical: [...], numeric: [...], multi_valued: {genres: "|"}}
    events:  {member: member_id, item: item_id, timestamp: ts, label: label, weight: weight}

Optional keys may be left out (events: `id`, `weight`, `context`). Timestamps are Unix seconds or ISO-8601
(no offset means UTC). Output is exactly what the generator writes: canonical column names and types,
partitioned by event date (members/items by arrival date), sorted, with deterministic bytes, so
re-ingesting the same input changes nothing.

Everything is read and checked in memory first; the first problem raises one `IngestError` naming the file,
the column, the first offending rows and what was expected, before anything is written. Then every
partition is staged aside and swapped in together (`atomic_directory`), so on any error the raw zone is
exactly as it was.
"""

from __future__ import annotations

import csv
import difflib
import re
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from features import contract
from features.contract import EntitySchema, EventSchema, RawSchema, SchemaError
from rankflow.paths import DataPaths, atomic_directory

MICROS_PER_DAY = 86_400_000_000
MAX_SHOWN_ROWS = 5
_EPOCH = pd.Timestamp("1970-01-01")
_INTEGER = re.compile(r"^[+-]?\d+$")
_DECIMAL = re.compile(r"^([+-]?)(\d+)(?:\.(\d*))?$")
_WRONG_DELIMITERS = {";": "semicolons", "\t": "tabs", "|": "pipes"}


class IngestError(ValueError):
    """Input that cannot be ingested; the message names file, column, offending rows and what was expected."""

    def __init__(self, file: Path | str, problem: str, expected: str, column: str | None = None,
                 rows: Sequence[tuple[int, Any]] = (), total: int | None = None) -> None:
        self.file, self.column, self.problem, self.expected = str(file), column, problem, expected
        self.rows = list(rows)[:MAX_SHOWN_ROWS]
        where = f"{self.file}: column '{column}'" if column else self.file
        message = f"{where}: {problem}; expected {expected}."
        if self.rows:
            shown = ", ".join(f"row {row}: {value!r}" for row, value in self.rows)
            count = total if total is not None else len(rows)
            message += f" First offending rows ({count} in all; data rows counted from 1 after the header): {shown}"
        super().__init__(message)


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
    """A value as a person would read it in the message (numpy scalars and arrays to Python)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
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
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], quoting=csv.QUOTE_MINIMAL)
        except pd.errors.EmptyDataError:
            raise IngestError(path, "the file is empty", "a header line and at least one row") from None
        except (pd.errors.ParserError, UnicodeDecodeError) as error:
            raise IngestError(path, f"not readable as CSV ({error})", "comma-separated UTF-8 text with a header") from None
        _check_delimiter(path, frame)
    else:
        raise IngestError(path, "unknown file type", "a .csv, .csv.gz or .parquet file")
    if frame.empty:
        raise IngestError(path, "the file has a header but no rows", "at least one row")
    return _Source(path, frame.reset_index(drop=True))


def _check_delimiter(path: Path, frame: pd.DataFrame) -> None:
    """A CSV read with ',' whose header holds ';' or tabs was written with another delimiter."""
    for column in frame.columns:
        for delimiter, name in _WRONG_DELIMITERS.items():
            if delimiter in str(column) and (delimiter != "|" or len(frame.columns) == 1):
                mask = frame[column].astype(str).str.contains(re.escape(delimiter), na=False).to_numpy()
                rows, total = _Source(path, frame).offending(mask, column)
                raise IngestError(path, f"the header {column!r} looks delimited by {name} ({delimiter!r})",
                                  "comma-separated values: re-save the file with ',' as the delimiter",
                                  column=str(column), rows=rows, total=total)


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


def _decimal_seconds_to_micros(text: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """'1767225600.123456' -> µs exactly (no float rounding); returns (micros, matched)."""
    parts = text.str.extract(_DECIMAL.pattern)
    matched = parts[1].notna().to_numpy()
    micros = np.zeros(len(text), dtype=np.int64)
    if matched.any():
        sign = np.where(parts[0][matched] == "-", -1, 1)
        whole = parts[1][matched].astype(np.int64).to_numpy()
        fraction = parts[2][matched].fillna("").str.ljust(6, "0").str[:6].astype(np.int64).to_numpy()
        micros[matched] = sign * (whole * 1_000_000 + fraction)
    return micros, matched


def _timestamps(source: _Source, column: str, required: bool) -> tuple[np.ndarray, np.ndarray]:
    """Unix seconds or ISO-8601 (naive = UTC) -> (µs since epoch, missing mask)."""
    values = source.frame[column]
    missing = _is_missing(values)
    expected = "Unix seconds (e.g. 1767225600) or ISO-8601 (e.g. 2026-01-01T09:30:00Z)"
    if required and missing.any():
        raise source.fail(column, missing, "missing timestamps", expected)
    micros = np.zeros(len(values), dtype=np.int64)
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        parsed = values.dt.tz_localize("UTC") if values.dt.tz is None else values.dt.tz_convert("UTC")
        micros[~missing] = parsed[~missing].astype("datetime64[us, UTC]").astype(np.int64).to_numpy()
        return micros, missing
    if pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype):
        micros[~missing] = np.round(values[~missing].to_numpy(dtype=np.float64) * 1e6).astype(np.int64)
        return micros, missing
    text = values.astype("string").str.strip()
    numeric_micros, numeric = _decimal_seconds_to_micros(text.fillna(""))
    micros[numeric] = numeric_micros[numeric]
    iso = ~numeric & ~missing
    if iso.any():
        parsed = pd.to_datetime(text[iso], format="ISO8601", utc=True, errors="coerce")
        unparsed = np.zeros(len(values), dtype=bool)
        unparsed[np.flatnonzero(iso)] = parsed.isna().to_numpy()
        if unparsed.any():
            raise source.fail(column, unparsed, "unparseable timestamps", expected)
        micros[iso] = parsed.astype("datetime64[us, UTC]").astype(np.int64).to_numpy()
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


def _events(source: _Source, schema: EventSchema, members: _Entities, items: _Entities,
            member_file: Path, item_file: Path) -> _Events:
    roles = [c for c in (schema.id, schema.member, schema.item, schema.timestamp, schema.label, schema.weight) if c]
    _require(source, "events", roles + list(schema.context))
    member_id, item_id = _ids(source, schema.member), _ids(source, schema.item)
    ts_us, _ = _timestamps(source, schema.timestamp, required=True)
    label = _labels(source, schema.label)
    weight = _weights(source, schema.weight) if schema.weight else np.ones(len(label), np.float32)
    for column, ids, known, file in ((schema.member, member_id, members.ids, member_file),
                                     (schema.item, item_id, items.ids, item_file)):
        unknown = ~np.isin(ids, known)
        if unknown.any():
            raise source.fail(column, unknown, f"events refer to ids that are not in {Path(file).name}",
                              f"every {column} to appear in {file}")
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


# --- partitioning and writing ----------------------------------------------------------------------------------

def _day_of(micros: np.ndarray) -> np.ndarray:
    return micros // MICROS_PER_DAY


def _arrival_days(entities: _Entities, event_ids: np.ndarray, event_days: np.ndarray) -> np.ndarray:
    """Arrival date; without a timestamp, the entity's first event day (or the first event day of all)."""
    days = _day_of(entities.arrived_us)
    if entities.arrival_missing.any():
        first = pd.Series(event_days).groupby(event_ids).min()
        fallback = first.reindex(entities.ids[entities.arrival_missing]).fillna(event_days.min())
        days[entities.arrival_missing] = fallback.to_numpy(dtype=np.int64)
    return days


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


def _partitions(order: np.ndarray, days: np.ndarray) -> list[tuple[pd.Timestamp, np.ndarray]]:
    """Rows (already in output order) grouped by day."""
    ordered_days = days[order]
    return [(_EPOCH + pd.Timedelta(days=int(day)), order[ordered_days == day]) for day in np.unique(ordered_days)]


def ingest(schema_path: Path | str, members_path: Path | str, items_path: Path | str, events_path: Path | str,
           paths: DataPaths) -> dict[str, Any]:
    """Validate the three tables against the schema and write them into `paths.raw`; return a summary.

    Raises IngestError (before anything is written) on the first problem found.
    """
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
    events = _events(events_source, user_schema.events, members, items, members_source.path, items_source.path)

    event_days = _day_of(events.ts_us)
    plan: list[tuple[str, pd.Timestamp, pa.Table]] = []
    for table, entities, schema, event_owner in (
            ("members", members, contract.members_arrow_schema(canonical.members), events.member_id),
            ("items", items, contract.items_arrow_schema(canonical.items), events.item_id)):
        order = np.argsort(entities.ids, kind="stable")
        for day, rows in _partitions(order, _arrival_days(entities, event_owner, event_days)):
            plan.append((table, day, _entity_table(entities, rows, schema)))
    for day, rows in _partitions(np.lexsort((events.event_id, events.ts_us)), event_days):
        plan.append(("events", day, _events_table(events, rows)))

    # Stage every partition, then swap them all in; an error while staging removes every staged copy.
    with ExitStack() as stack:
        for table, day, arrow_table in plan:
            staging = stack.enter_context(atomic_directory(paths.raw_partition(table, day.date())))
            contract.write_partition(staging, arrow_table)
    canonical.write(paths)

    event_dates = sorted({day.date() for table, day, _ in plan if table == "events"})
    return {
        "data_dir": str(paths.root),
        "members": int(len(members.ids)),
        "items": int(len(items.ids)),
        "events": int(len(events.event_id)),
        "partitions": len(plan),
        "start": event_dates[0].isoformat(),
        "end": event_dates[-1].isoformat(),
        "apply_rate": round(float(events.label.mean()), 4),
    }
