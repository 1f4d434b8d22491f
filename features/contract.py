"""The raw-zone data contract: canonical column names and types, `raw/schema.yaml`, and reading partitions.

Both `rankflow generate` and `rankflow ingest` write exactly this shape (docs/contracts.md, "Raw zone"),
so nothing downstream can tell generated data from ingested data:

    raw/schema.yaml
    raw/members/dt=D/part-0.parquet   member_id int64, signup_ts timestamp[us, UTC], attributes...
    raw/items/dt=D/part-0.parquet     item_id int64, posted_ts timestamp[us, UTC], attributes...
    raw/events/dt=D/part-0.parquet    event_id, member_id, item_id int64, ts timestamp[us, UTC],
                                      label int8 in {0,1}, weight float32, context columns...

Attribute types: categorical -> string, numeric -> float64, multi-valued -> list<string>.
Only pyarrow, pandas and yaml here: Spark and Feast read the zone, this module must not need them.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from rankflow.paths import PART_FILE, DataPaths, atomic_write_bytes, dt_partition, partition_days  # noqa: F401 (re-exported)

TABLES = ("members", "items", "events")

# Canonical column names (ingest renames the user's columns to these).
MEMBER_ID = "member_id"
SIGNUP_TS = "signup_ts"
ITEM_ID = "item_id"
POSTED_TS = "posted_ts"
EVENT_ID = "event_id"
TS = "ts"
LABEL = "label"
WEIGHT = "weight"

# Canonical Arrow types.
ID_TYPE = pa.int64()
TIMESTAMP_TYPE = pa.timestamp("us", tz="UTC")
LABEL_TYPE = pa.int8()
WEIGHT_TYPE = pa.float32()
CATEGORICAL_TYPE = pa.string()
NUMERIC_TYPE = pa.float64()
MULTI_VALUED_TYPE = pa.list_(pa.string())

# Parquet settings shared by every writer of the zone: fixed, so equal tables give equal bytes.
PARQUET_OPTIONS: dict[str, Any] = {"compression": "zstd", "write_statistics": True}


@dataclass(frozen=True)
class EntitySchema:
    """Column roles of the members or items table (canonical names once normalised)."""

    id: str
    timestamp: str | None = None
    categorical: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()
    # column -> separator it was split on at ingest (kept so exports can join it back).
    multi_valued: dict[str, str] = field(default_factory=dict)

    @property
    def attributes(self) -> tuple[str, ...]:
        """Attribute columns in their canonical order: categorical, numeric, multi-valued."""
        return self.categorical + self.numeric + tuple(self.multi_valued)

    def arrow_schema(self, id_name: str, timestamp_name: str) -> pa.Schema:
        fields = [pa.field(id_name, ID_TYPE, nullable=False), pa.field(timestamp_name, TIMESTAMP_TYPE)]
        fields += [pa.field(name, CATEGORICAL_TYPE) for name in self.categorical]
        fields += [pa.field(name, NUMERIC_TYPE) for name in self.numeric]
        fields += [pa.field(name, MULTI_VALUED_TYPE) for name in self.multi_valued]
        return pa.schema(fields)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id}
        if self.timestamp is not None:
            out["timestamp"] = self.timestamp
        out["categorical"] = list(self.categorical)
        out["numeric"] = list(self.numeric)
        out["multi_valued"] = dict(self.multi_valued)
        return out


@dataclass(frozen=True)
class EventSchema:
    """Column roles of the events table (canonical names once normalised)."""

    member: str
    item: str
    timestamp: str
    label: str
    id: str | None = None
    weight: str | None = None
    context: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.id is not None:
            out["id"] = self.id
        out.update(member=self.member, item=self.item, timestamp=self.timestamp, label=self.label)
        if self.weight is not None:
            out["weight"] = self.weight
        out["context"] = list(self.context)
        return out


@dataclass(frozen=True)
class RawSchema:
    """The three tables' column roles, as stored in `raw/schema.yaml` (canonical names)."""

    members: EntitySchema
    items: EntitySchema
    events: EventSchema

    def to_dict(self) -> dict[str, Any]:
        return {"members": self.members.to_dict(), "items": self.items.to_dict(), "events": self.events.to_dict()}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None, width=200)

    @classmethod
    def from_dict(cls, data: Any, source: str = "schema") -> "RawSchema":
        """Build from a parsed YAML mapping; errors name `source` and the offending key."""
        return parse_schema(data, source)

    def write(self, paths: DataPaths) -> Path:
        atomic_write_bytes(paths.raw_schema, self.to_yaml().encode())
        return paths.raw_schema


class SchemaError(ValueError):
    """The schema YAML does not describe the three tables as docs/contracts.md says."""


_ENTITY_KEYS = {"id", "timestamp", "categorical", "numeric", "multi_valued"}
_EVENT_KEYS = {"id", "member", "item", "timestamp", "label", "weight", "context"}


def _names(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise SchemaError(f"{where}: expected a list of column names, got {value!r}")
    return tuple(value)


def _name(value: Any, where: str, required: bool) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise SchemaError(f"{where}: expected a column name, got {value!r}")
    return value


def _parse_entity(data: Any, source: str, table: str) -> EntitySchema:
    if not isinstance(data, dict):
        raise SchemaError(f"{source}: '{table}' must be a mapping with at least 'id', got {data!r}")
    unknown = set(data) - _ENTITY_KEYS
    if unknown:
        raise SchemaError(f"{source}: '{table}' has unknown key(s) {sorted(unknown)}; expected {sorted(_ENTITY_KEYS)}")
    multi = data.get("multi_valued") or {}
    if not isinstance(multi, dict) or not all(isinstance(k, str) and isinstance(v, str) and v for k, v in multi.items()):
        raise SchemaError(f"{source}: '{table}.multi_valued' must map column -> separator, e.g. {{skills: '|'}}; got {multi!r}")
    schema = EntitySchema(
        id=_name(data.get("id"), f"{source}: '{table}.id'", required=True),
        timestamp=_name(data.get("timestamp"), f"{source}: '{table}.timestamp'", required=False),
        categorical=_names(data.get("categorical"), f"{source}: '{table}.categorical'"),
        numeric=_names(data.get("numeric"), f"{source}: '{table}.numeric'"),
        multi_valued=dict(multi),
    )
    _check_unique([schema.id, schema.timestamp, *schema.attributes], source, table)
    return schema


def _parse_events(data: Any, source: str) -> EventSchema:
    if not isinstance(data, dict):
        raise SchemaError(f"{source}: 'events' must be a mapping with 'member', 'item', 'timestamp', 'label'; got {data!r}")
    unknown = set(data) - _EVENT_KEYS
    if unknown:
        raise SchemaError(f"{source}: 'events' has unknown key(s) {sorted(unknown)}; expected {sorted(_EVENT_KEYS)}")
    schema = EventSchema(
        member=_name(data.get("member"), f"{source}: 'events.member'", required=True),
        item=_name(data.get("item"), f"{source}: 'events.item'", required=True),
        timestamp=_name(data.get("timestamp"), f"{source}: 'events.timestamp'", required=True),
        label=_name(data.get("label"), f"{source}: 'events.label'", required=True),
        id=_name(data.get("id"), f"{source}: 'events.id'", required=False),
        weight=_name(data.get("weight"), f"{source}: 'events.weight'", required=False),
        context=_names(data.get("context"), f"{source}: 'events.context'"),
    )
    _check_unique([schema.id, schema.member, schema.item, schema.timestamp, schema.label, schema.weight,
                   *schema.context], source, "events")
    return schema


def _check_unique(columns: list[str | None], source: str, table: str) -> None:
    named = [c for c in columns if c is not None]
    repeated = sorted({c for c in named if named.count(c) > 1})
    if repeated:
        raise SchemaError(f"{source}: '{table}' gives column(s) {repeated} more than one role")


def parse_schema(data: Any, source: str = "schema") -> RawSchema:
    """Validate a parsed schema mapping (user's or canonical column names) into a RawSchema."""
    if not isinstance(data, dict):
        raise SchemaError(f"{source}: expected a mapping with keys members, items, events; got {type(data).__name__}")
    missing = [t for t in TABLES if t not in data]
    unknown = sorted(set(data) - set(TABLES))
    if missing or unknown:
        raise SchemaError(f"{source}: expected exactly the keys members, items, events; "
                          f"missing {missing}, unknown {unknown}")
    return RawSchema(
        members=_parse_entity(data["members"], source, "members"),
        items=_parse_entity(data["items"], source, "items"),
        events=_parse_events(data["events"], source),
    )


def end_of_day(day: date) -> datetime:
    """The instant day D's feature rows are stamped with and valid from: D+1 00:00 UTC."""
    return datetime.combine(day + timedelta(days=1), time(0), tzinfo=timezone.utc)


def load_raw_schema(paths: DataPaths) -> RawSchema:
    """The normalised schema of a data directory's raw zone (canonical column names)."""
    path = paths.raw_schema
    if not path.exists():
        raise FileNotFoundError(f"{path}: no raw zone here; run `rankflow generate` or `rankflow ingest` first")
    return parse_schema(yaml.safe_load(path.read_text()), str(path))


def members_arrow_schema(schema: EntitySchema) -> pa.Schema:
    return schema.arrow_schema(MEMBER_ID, SIGNUP_TS)


def items_arrow_schema(schema: EntitySchema) -> pa.Schema:
    return schema.arrow_schema(ITEM_ID, POSTED_TS)


def events_arrow_schema(context_types: dict[str, pa.DataType]) -> pa.Schema:
    """Events columns; context columns keep their type (int64, float64 or string)."""
    fields = [
        pa.field(EVENT_ID, ID_TYPE, nullable=False),
        pa.field(MEMBER_ID, ID_TYPE, nullable=False),
        pa.field(ITEM_ID, ID_TYPE, nullable=False),
        pa.field(TS, TIMESTAMP_TYPE, nullable=False),
        pa.field(LABEL, LABEL_TYPE, nullable=False),
        pa.field(WEIGHT, WEIGHT_TYPE, nullable=False),
    ]
    fields += [pa.field(name, dtype) for name, dtype in context_types.items()]
    return pa.schema(fields)


def parquet_bytes(table: pa.Table) -> bytes:
    """Serialise a table with the zone's fixed Parquet options (deterministic bytes)."""
    sink = io.BytesIO()
    # Dictionary-encode the strings only: on ids, timestamps and weights it costs time (3-5x) and bytes.
    dictionary = [f.name for f in table.schema if pa.types.is_string(f.type)]
    dictionary += [f"{f.name}.list.element" for f in table.schema if pa.types.is_list(f.type)]
    pq.write_table(table, sink, use_dictionary=dictionary, **PARQUET_OPTIONS)
    return sink.getvalue()


def write_partition(staging_dir: Path, table: pa.Table) -> None:
    """Write one partition's single file into a directory staged by `atomic_directory`."""
    (Path(staging_dir) / PART_FILE).write_bytes(parquet_bytes(table))


def raw_days(paths: DataPaths, table: str = "events") -> list[date]:
    """Days that have a partition in a raw table, oldest first."""
    _check_table(table)
    return partition_days(paths.raw_table(table))


def _check_table(table: str) -> None:
    if table not in TABLES:
        raise ValueError(f"unknown raw table {table!r}; expected one of {TABLES}")


def read_partitions(directory: Path, day: date | None = None, start: date | None = None,
                    end: date | None = None) -> pd.DataFrame:
    """Read `directory/dt=*/part-0.parquet` for one day or an inclusive range (either bound optional)."""
    directory = Path(directory)
    if day is not None and (start is not None or end is not None):
        raise ValueError("give either day or start/end, not both")
    if day is not None:
        start = end = day
    available = partition_days(directory)
    if not available:
        raise FileNotFoundError(f"{directory}: no dt=YYYY-MM-DD partitions")
    chosen = [d for d in available if (start is None or d >= start) and (end is None or d <= end)]
    if not chosen:
        empty_schema = pq.read_schema(directory / dt_partition(available[0]) / PART_FILE)
        return empty_schema.empty_table().to_pandas()
    tables = [pq.read_table(directory / dt_partition(d) / PART_FILE) for d in chosen]
    # Later partitions may carry columns earlier ones lack (e.g. the training set gains meta_embedding once
    # personalisation has run): missing columns read as nulls.
    return pa.concat_tables(tables, promote_options="default").to_pandas()


def read_raw(paths: DataPaths, table: str, day: date | None = None, start: date | None = None,
             end: date | None = None) -> pd.DataFrame:
    """One raw table as a DataFrame, for a day, an inclusive range of days, or (no dates) all of it.

    Days select partitions: members and items by arrival date, events by event date. Timestamps come
    back as `datetime64[us, UTC]`, multi-valued attributes as arrays of strings.
    """
    _check_table(table)
    return read_partitions(paths.raw_table(table), day=day, start=start, end=end)


_MIX_1 = 0xBF58476D1CE4E5B9
_MIX_2 = 0x94D049BB133111EB
_GOLDEN = 0x9E3779B97F4A7C15


def _splitmix64(values: "np.ndarray") -> "np.ndarray":
    """SplitMix64's finaliser: a bijective, well-mixing hash of uint64 values (wrap-around arithmetic)."""
    values = values ^ (values >> np.uint64(30))
    values = values * np.uint64(_MIX_1)
    values = values ^ (values >> np.uint64(27))
    values = values * np.uint64(_MIX_2)
    return values ^ (values >> np.uint64(31))


def derive_event_id(member_id: "np.ndarray", item_id: "np.ndarray", ts_us: "np.ndarray") -> "np.ndarray":
    """A stable int64 id (>= 0) for events that come without one, from (member_id, item_id, ts in µs).

    The generator uses it too, so generated and ingested events carry the same ids for the same rows.
    Collisions between different triples are possible in principle (63-bit hash: ~1e-5 for 20M events);
    ingest and the generator both check for duplicate ids.
    """
    with np.errstate(over="ignore"):
        h = _splitmix64(np.asarray(member_id, dtype=np.int64).view(np.uint64) + np.uint64(_GOLDEN))
        h = _splitmix64(h ^ np.asarray(item_id, dtype=np.int64).view(np.uint64))
        h = _splitmix64(h ^ np.asarray(ts_us, dtype=np.int64).view(np.uint64))
    return (h >> np.uint64(1)).astype(np.int64)
