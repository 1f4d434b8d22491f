"""Write FeatureView rows into Feast's online store, byte-for-byte in Feast's own layout, vectorised.

Feast 0.67 writes a row at a time in Python (Arrow -> a dict of ValueProto objects -> SerializeToString ->
redis-py / sqlite3), about 5,000 rows/s on two cores. The layout it produces is small and fixed
(feast/infra/online_stores/{redis,sqlite}.py, feast/infra/key_encoding_utils.py), so we emit the same bytes
from numpy and send them in large batches:

    entity key  = <u32 #keys> (<u32 STRING=2> <u32 len> join_key)* (<u32 value type> <u32 len> value)*   (v3)
    Redis       one hash per entity: key = entity key + project; field mmh3_32("<view>:<feature>") (4 bytes,
                little-endian) -> ValueProto bytes; field "_ts:<view>" -> google.protobuf.Timestamp bytes
    SQLite      table "<project>_<view>", one row per entity x feature:
                (entity_key, feature_name, ValueProto bytes, value_text, event_ts, created_ts)

ValueProto of the common types is a tag and a payload (protobuf wire format):
    int64_val    0x20 varint(v as uint64)         float_val  0x35 <f32 LE>       double_val  0x29 <f64 LE>
    string_val   0x12 varint(len) utf8            string_list_val  0x62 varint(len) (0x0a varint(len) s)*
    float_list_val  0x82 0x01 varint(len) [0x0a varint(4k) <k x f32 LE>]   (empty list: 0x82 0x01 0x00)
Fixed-width values are built as uint8 matrices (one row per entity); categorical strings are encoded once
per distinct value; any other type, and any column holding a null or NaN, goes through Feast's own
converter (`python_values_to_proto_values`), so the bytes are Feast's by construction there too.
tests/features/test_store.py compares every key and field with Feast's online_write_batch.

Never roll back: the online store must hold the newest value of every entity (design.md). A row is written
when its event time is >= the stored one (equal passes: re-running a day replaces that day). Redis: one
pipelined HMGET of the `_ts:<view>` fields, then HSETs of the rows that pass (`guard="hmget"`), or a Lua
compare-and-set per entity (`guard="lua"`, atomic against concurrent writers, slower: see
benchmarks/results/features-*.md). SQLite: one SELECT of the stored event_ts per entity. Feast's Redis
writer skips equal times and its SQLite writer checks nothing; ours treats both stores alike.

`materialize_day(settings, day)` pushes one day of the Spark feature tables; `stock_materialize` runs
Feast's own `FeatureStore.materialize` over the same rows for the benchmark (benchmarks/bench_features.py).
"""

from __future__ import annotations

import sqlite3
import struct
import threading
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from itertools import chain, compress, repeat
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from rankflow.config import Settings

WRITE_BATCH_ROWS = 20_000  # rows per Redis round trip / SQLite transaction: bounded memory, few round trips
CRLF = b"\r\n"

# Feast ValueType numbers (feast.value_type.ValueType) used by the fast paths.
INT64, FLOAT, DOUBLE, STRING, STRING_LIST, FLOAT_LIST = 4, 6, 5, 2, 12, 16
SCALAR_TEXT_TYPES = (STRING, 3, INT64, DOUBLE, FLOAT, 7)  # string, int32, int64, double, float, bool


@dataclass(frozen=True)
class OnlineWrite:
    """What an online write did: rows written, rows skipped because the store holds newer values."""

    view: str
    written: int
    skipped_older: int

    def to_dict(self) -> dict:
        return {"view": self.view, "written": self.written, "skipped_older": self.skipped_older}


# ---------------------------------------------------------------------------------------------- encoding

_SMALL_VARINTS = [bytes([i]) for i in range(128)]


def varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int."""
    if value < 128:
        return _SMALL_VARINTS[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _varint_matrix(values: np.ndarray, tag: bytes) -> list[tuple[np.ndarray, np.ndarray]]:
    """tag + varint(v) for uint64 `values`, as (row indices, uint8 matrix) groups of equal length."""
    bits = np.zeros(len(values), np.int64)
    rest = values.copy()
    while rest.any():  # bit length, one shift per 7 bits (at most 10 passes)
        bits += (rest > 0)
        rest >>= np.uint64(7)
    lengths = np.maximum(bits, 1)
    groups = []
    for length in np.unique(lengths):
        index = np.flatnonzero(lengths == length)
        group = values[index]
        matrix = np.empty((len(index), len(tag) + int(length)), np.uint8)
        matrix[:, :len(tag)] = np.frombuffer(tag, np.uint8)
        for i in range(int(length)):
            byte = ((group >> np.uint64(7 * i)) & np.uint64(0x7F)).astype(np.uint8)
            matrix[:, len(tag) + i] = byte | (0x80 if i < length - 1 else 0)
        groups.append((index, matrix))
    return groups


def _fixed(tag: bytes, payload: np.ndarray) -> list[tuple[None, np.ndarray]]:
    """tag + a fixed-width little-endian payload per row, as one uint8 matrix."""
    width = payload.dtype.itemsize
    matrix = np.empty((len(payload), len(tag) + width), np.uint8)
    matrix[:, :len(tag)] = np.frombuffer(tag, np.uint8)
    matrix[:, len(tag):] = payload.view(np.uint8).reshape(len(payload), width)
    return [(None, matrix)]


def _string_proto(text: str) -> bytes:
    raw = text.encode("utf8")
    return b"\x12" + varint(len(raw)) + raw


def _varints(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Protobuf varints of non-negative int64 `values`: a (n, 10) uint8 matrix (row i's bytes first) and lengths."""
    values = values.astype(np.uint64)
    lengths = np.ones(len(values), np.int64)
    rest = values >> np.uint64(7)
    while rest.any():
        lengths += rest > 0
        rest >>= np.uint64(7)
    width = int(lengths.max()) if len(values) else 1
    matrix = np.zeros((len(values), width), np.uint8)
    for i in range(width):
        matrix[:, i] = ((values >> np.uint64(7 * i)) & np.uint64(0x7F)).astype(np.uint8) | \
            np.where(lengths > i + 1, 0x80, 0).astype(np.uint8)
    return matrix, lengths


def _length_prefixed(tag: bytes, data: np.ndarray, offsets: np.ndarray,
                     omit_empty: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Row i -> tag + varint(len) + data[offsets[i]:offsets[i+1]] (a protobuf length-delimited field), for
    every row at once: (bytes, row offsets). With omit_empty an empty row stays empty (packed repeated fields)."""
    offsets = np.asarray(offsets, np.int64)
    lengths = np.diff(offsets)
    varint_bytes, varint_lengths = _varints(lengths)
    head = len(tag) + varint_lengths
    if omit_empty:
        head = np.where(lengths > 0, head, 0)
    out_offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(head + lengths, out=out_offsets[1:])
    out = np.empty(int(out_offsets[-1]), np.uint8)
    starts = out_offsets[:-1]
    present = starts[head > 0] if omit_empty else starts
    payload = np.ones(len(out), bool)  # every byte that is not a head byte, in order: the data run
    for i, byte in enumerate(tag):
        out[present + i] = byte
        payload[present + i] = False
    for i in range(varint_bytes.shape[1]):
        rows = np.flatnonzero((varint_lengths > i) & (head > 0))
        out[starts[rows] + len(tag) + i] = varint_bytes[rows, i]
        payload[starts[rows] + len(tag) + i] = False
    out[payload] = data[offsets[0]:offsets[-1]]
    return out, out_offsets


def _split(buffer: np.ndarray, offsets: np.ndarray) -> list[bytes]:
    """The rows of a (bytes, row offsets) pair as bytes objects."""
    raw = buffer.tobytes()
    bounds = offsets.tolist()
    return [raw[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _list_offsets(column: pa.ListArray) -> np.ndarray:
    offsets = column.offsets.to_numpy().astype(np.int64)
    return offsets - offsets[0]


def _string_list_protos(column: pa.ListArray) -> list[bytes]:
    """string_list_val of every row: 0x62 varint(len) (0x0a varint(len) utf8)*, built column-wise."""
    flat = column.flatten()
    width = np.int64 if pa.types.is_large_string(flat.type) else np.int32
    validity, string_offsets, data = flat.buffers()
    string_offsets = np.frombuffer(string_offsets, width)[flat.offset:flat.offset + len(flat) + 1]
    data = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
    elements, element_offsets = _length_prefixed(b"\x0a", data, string_offsets)
    return _split(*_length_prefixed(b"\x62", elements, element_offsets[_list_offsets(column)]))


def _float_list_protos(column: pa.ListArray) -> list[bytes]:
    """float_list_val of every row: 0x82 0x01 varint(len) [0x0a varint(4k) <k x f32 LE>], built column-wise."""
    flat = np.frombuffer(column.flatten().to_numpy(zero_copy_only=False).astype("<f4").tobytes(), np.uint8)
    packed, packed_offsets = _length_prefixed(b"\x0a", flat, 4 * _list_offsets(column), omit_empty=True)
    return _split(*_length_prefixed(b"\x82\x01", packed, packed_offsets))


def _by_distinct(values: np.ndarray, encode) -> list[bytes]:
    """Encode each distinct value once (categorical columns hold a handful of values)."""
    codes, uniques = pd.factorize(values)
    return np.asarray([encode(u) for u in uniques] + [b""], dtype=object)[codes].tolist()


def _has_missing(column: pa.Array) -> bool:
    if column.null_count:
        return True
    if pa.types.is_floating(column.type):
        return bool(np.isnan(column.to_numpy(zero_copy_only=False)).any())
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        flat = column.flatten()
        if flat.null_count:
            return True
        if pa.types.is_floating(flat.type):
            return not bool(np.isfinite(flat.to_numpy(zero_copy_only=False)).all())
    return False


@dataclass
class EncodedColumn:
    """ValueProto bytes of one column: fixed-width matrix groups (fast) or a list of bytes."""

    groups: list[tuple[np.ndarray | None, np.ndarray]] | None = None
    values: list[bytes] | None = None

    def as_bytes(self, n: int) -> list[bytes]:
        """The raw ValueProto bytes of every row."""
        return self.values if self.values is not None else self._rows(n, b"", b"")

    def resp_pieces(self, n: int, field: bytes) -> list:
        """Columns of pieces whose row-wise concatenation is `<field bulk> <value bulk>` (RESP) per row."""
        if self.values is None:
            return [self._rows(n, field, CRLF, resp=True)]
        lengths = list(map(len, self.values))
        heads = {length: field + b"$%d\r\n" % length for length in set(lengths)}
        return [list(map(heads.__getitem__, lengths)), self.values, repeat(CRLF, n)]

    def _rows(self, n: int, head: bytes, tail: bytes, resp: bool = False) -> list[bytes]:
        """head [+ RESP length line] + value + tail per row, built as one uint8 matrix per width."""
        out = np.empty(n, dtype=object)
        for index, matrix in self.groups:
            lead = head + (b"$%d\r\n" % matrix.shape[1] if resp else b"")
            full = np.empty((matrix.shape[0], len(lead) + matrix.shape[1] + len(tail)), np.uint8)
            full[:, :len(lead)] = np.frombuffer(lead, np.uint8)
            full[:, len(lead):len(lead) + matrix.shape[1]] = matrix
            full[:, len(lead) + matrix.shape[1]:] = np.frombuffer(tail, np.uint8)
            rows = full.view(f"V{full.shape[1]}").ravel().tolist()
            if index is None:
                out[:] = rows
            else:
                out[index] = rows
        return out.tolist()


def encode_column(column: pa.Array, value_type: int) -> EncodedColumn:
    """The ValueProto bytes Feast would store for each value of `column` declared as `value_type`."""
    arrow_type = column.type
    if not _has_missing(column):
        if value_type == INT64 and pa.types.is_integer(arrow_type):
            values = column.to_numpy(zero_copy_only=False).astype(np.int64).view(np.uint64)
            return EncodedColumn(groups=_varint_matrix(values, b"\x20"))
        if value_type == FLOAT and (pa.types.is_floating(arrow_type) or pa.types.is_integer(arrow_type)):
            return EncodedColumn(groups=_fixed(b"\x35", column.to_numpy(zero_copy_only=False).astype("<f4")))
        if value_type == DOUBLE and (pa.types.is_floating(arrow_type) or pa.types.is_integer(arrow_type)):
            return EncodedColumn(groups=_fixed(b"\x29", column.to_numpy(zero_copy_only=False).astype("<f8")))
        if value_type == STRING and pa.types.is_string(arrow_type):
            return EncodedColumn(values=_by_distinct(column.to_numpy(zero_copy_only=False), _string_proto))
        if pa.types.is_list(arrow_type) and value_type == STRING_LIST and pa.types.is_string(arrow_type.value_type):
            return EncodedColumn(values=_string_list_protos(column))
        if pa.types.is_list(arrow_type) and value_type == FLOAT_LIST and pa.types.is_floating(arrow_type.value_type):
            return EncodedColumn(values=_float_list_protos(column))
    from feast.type_map import python_values_to_proto_values
    from feast.value_type import ValueType

    protos = python_values_to_proto_values(column.to_numpy(zero_copy_only=False), ValueType(value_type))
    return EncodedColumn(values=[p.SerializeToString() for p in protos])


def value_texts(column: pa.Array, value_type: int, encoded: EncodedColumn) -> list[str | None]:
    """SQLite's `value_text` (feast...helpers.extract_text_and_num): str() of scalars, None for lists."""
    if value_type not in SCALAR_TEXT_TYPES:  # extract_text_and_num has no text for any other oneof
        return [None] * len(column)
    if value_type in (INT64, FLOAT, DOUBLE) and encoded.groups is not None:
        numbers = column.to_numpy(zero_copy_only=False)
        numbers = numbers.astype(np.int64) if value_type == INT64 else \
            numbers.astype(np.float32 if value_type == FLOAT else np.float64).astype(np.float64)
        return list(map(str, numbers.tolist()))
    if value_type == STRING and encoded.groups is None and not _has_missing(column) \
            and pa.types.is_string(column.type):
        return column.to_pylist()
    from feast.infra.online_stores.helpers import extract_text_and_num
    from feast.protos.feast.types.Value_pb2 import Value

    texts = []
    for raw in encoded.as_bytes(len(column)):
        proto = Value()
        proto.ParseFromString(raw)
        texts.append(extract_text_and_num(proto, False)[0])
    return texts


def entity_keys(table: pa.Table, join_keys: dict[str, int], version: int) -> list[bytes]:
    """serialize_entity_key(...) of every row (fast for one int64 join key, Feast's own code otherwise)."""
    if len(join_keys) == 1 and version >= 3:
        (name, value_type), = join_keys.items()
        column = table.column(name).combine_chunks()
        if value_type == INT64 and pa.types.is_integer(column.type) and not column.null_count:
            raw = name.encode("utf8")
            head = struct.pack("<III", 1, STRING, len(raw)) + raw + struct.pack("<II", INT64, 8)
            ids = column.to_numpy(zero_copy_only=False).astype("<i8")
            return EncodedColumn(groups=_fixed(head, ids)).as_bytes(len(ids))
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.type_map import python_values_to_proto_values
    from feast.value_type import ValueType

    names = list(join_keys)
    columns = [python_values_to_proto_values(table.column(n).to_numpy(zero_copy_only=False), ValueType(t))
               for n, t in join_keys.items()]
    return [serialize_entity_key(EntityKey(join_keys=names, entity_values=list(values)),
                                 entity_key_serialization_version=version) for values in zip(*columns)]


def _nanos(column: pa.Array) -> np.ndarray:
    """Epoch nanoseconds of a timestamp column (naive columns are UTC, as in Feast)."""
    values = column.to_numpy(zero_copy_only=False)
    return pd.to_datetime(values, utc=True).as_unit("ns").asi8 if len(values) else np.zeros(0, np.int64)


def _timestamp_proto(nanos: int) -> bytes:
    """google.protobuf.Timestamp bytes Feast writes for an event time (seconds, nanos as microseconds*1000)."""
    from google.protobuf.timestamp_pb2 import Timestamp

    stamp = Timestamp()
    moment = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=nanos // 1000)
    stamp.FromDatetime(moment)
    return stamp.SerializeToString()


def _stored_nanos(raw: bytes | None, cache: dict) -> int:
    """Nanoseconds of a stored `_ts` Timestamp (-1 when the entity has none)."""
    if raw is None:
        return -1
    if raw not in cache:
        from google.protobuf.timestamp_pb2 import Timestamp

        stamp = Timestamp()
        stamp.ParseFromString(raw)
        cache[raw] = stamp.seconds * 1_000_000_000 + stamp.nanos
    return cache[raw]


def _newest_per_entity(keys: list[bytes], event_nanos: np.ndarray, created_nanos: np.ndarray) -> np.ndarray:
    """Row indices keeping one row per entity: the newest event time, then the newest created time."""
    if len(set(keys)) == len(keys):
        return np.arange(len(keys))
    codes, _ = pd.factorize(pd.Series(keys, dtype=object))
    order = np.lexsort((np.arange(len(keys)), created_nanos, event_nanos, codes))
    last = np.r_[codes[order][1:] != codes[order][:-1], True]
    return np.sort(order[last])


# ---------------------------------------------------------------------------------------------- view rows

@dataclass
class ViewRows:
    """One batch of a FeatureView's rows, encoded: entity keys, ValueProto columns, timestamps."""

    names: list[str]
    types: list[int]
    table: pa.Table
    keys: list[bytes]
    event_nanos: np.ndarray
    created_nanos: np.ndarray

    def take(self, index: np.ndarray) -> "ViewRows":
        return ViewRows(self.names, self.types, self.table.take(pa.array(index, pa.int64())),
                        [self.keys[i] for i in index.tolist()], self.event_nanos[index], self.created_nanos[index])

    def encoded(self) -> list[EncodedColumn]:
        return [encode_column(self.table.column(n).combine_chunks(), t) for n, t in zip(self.names, self.types)]


def _view_rows(store, feature_view, frame: pa.Table) -> ViewRows:
    join_keys = {}
    for name in feature_view.entities:
        entity = store.get_entity(name)
        join_keys[entity.join_key] = entity.value_type.value
    names = [f.name for f in feature_view.features]
    types = [f.dtype.to_value_type().value for f in feature_view.features]
    source = feature_view.batch_source
    missing = [c for c in (*join_keys, *names, source.timestamp_field) if c not in frame.column_names]
    if missing:
        raise ValueError(f"online write of {feature_view.name}: frame lacks column(s) {missing}")
    created_column = source.created_timestamp_column or None
    has_created = created_column in frame.column_names
    table = frame.select([*join_keys, *names, source.timestamp_field] + ([created_column] if has_created else []))
    keys = entity_keys(table, join_keys, store.config.entity_key_serialization_version)
    event = _nanos(table.column(source.timestamp_field))
    created = _nanos(table.column(created_column)) if has_created else np.zeros(len(keys), np.int64)
    rows = ViewRows(names, types, table, keys, event, created)
    newest = _newest_per_entity(keys, event, created)
    return rows if len(newest) == len(keys) else rows.take(newest)


# ---------------------------------------------------------------------------------------------- Redis

def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


_RECV_BYTES = 1 << 20


def _read_replies(connection, replies: int) -> list:
    """`replies` replies off the connection's socket, parsed by one hiredis Reader in C.

    redis-py's read_response costs ~10 us of Python per reply (health checks, push handling, error mapping):
    most of a pipelined write of small HSET replies. Errors come back as ResponseError objects, not raised.
    Falls back to read_response when hiredis or the raw socket is unavailable.
    """
    from redis.exceptions import ResponseError

    sock = getattr(connection, "_sock", None)
    try:
        import hiredis
    except ImportError:
        hiredis = None
    if hiredis is None or sock is None:
        out = []
        for _ in range(replies):
            try:
                out.append(connection.read_response())
            except ResponseError as error:  # keep reading: the connection must stay in step with its replies
                out.append(error)
        return out
    reader = hiredis.Reader(replyError=ResponseError)
    buffer = bytearray(_RECV_BYTES)
    out = []
    while len(out) < replies:
        reply = reader.gets()
        if reply is False:
            received = sock.recv_into(buffer)
            if received == 0:
                raise ConnectionError(f"Redis closed the connection after {len(out)} of {replies} replies")
            reader.feed(buffer, 0, received)
        else:
            out.append(reply)
    if reader.gets() is not False:
        raise ConnectionError("Redis sent more replies than commands")
    return out


@contextmanager
def _connection(client):
    """One pooled connection for a pipeline; a half-read one is dropped, never handed back as it is."""
    connection = client.connection_pool.get_connection()
    try:
        yield connection
    except BaseException:
        connection.disconnect()
        raise
    finally:
        client.connection_pool.release(connection)


def _replies(connection, count: int) -> list:
    """Every reply of `count` pipelined commands; the first error reply is raised once all are read."""
    from redis.exceptions import ResponseError

    out = _read_replies(connection, count)
    first_error = next((reply for reply in out if isinstance(reply, ResponseError)), None)
    if first_error is not None:
        raise first_error
    return out


def _roundtrip(client, payload: bytes, replies: int) -> list:
    """Send pre-packed commands on one connection and read every reply (a pipeline without redis-py's packing)."""
    with _connection(client) as connection:
        connection.send_packed_command([payload])
        return _replies(connection, replies)


class _Sender(threading.Thread):
    """Sends a packed pipeline in the background (the GIL is released in sendall), so Redis works on it
    while this process encodes; join() re-raises a send error."""

    def __init__(self, connection, payload: bytes):
        super().__init__(daemon=True)
        self.connection, self.payload, self.error = connection, payload, None
        self.start()

    def run(self) -> None:
        try:
            self.connection.send_packed_command([self.payload])
        except BaseException as error:  # handed to the caller's thread
            self.error = error

    def join(self, timeout: float | None = None) -> None:
        super().join(timeout)
        if self.error is not None:
            raise self.error


LUA_NEWEST_WINS = """
-- Newest wins, for a chunk of entities in one call (atomic: no writer can slip between check and set).
-- KEYS: entity hashes. ARGV: '_ts:<view>', F, F field names, then per key: event time in microseconds,
-- Timestamp bytes, F values. A key is written when its stored time (if any) is not newer.
local ts_field, nfields = ARGV[1], tonumber(ARGV[2])
local stride, base = nfields + 2, nfields + 2
local function held_micros(raw)  -- google.protobuf.Timestamp: 1 = seconds, 2 = nanos (varints)
  local seconds, nanos, i = 0, 0, 1
  while i <= #raw do
    local tag = string.byte(raw, i); i = i + 1
    local value, shift, b = 0, 1, 128
    while b >= 128 do
      b = string.byte(raw, i); i = i + 1
      value = value + (b % 128) * shift; shift = shift * 128
    end
    if tag == 8 then seconds = value elseif tag == 16 then nanos = value end
  end
  return seconds * 1000000 + math.floor(nanos / 1000)
end
local args, written = {ts_field, false}, 0
for j = 1, nfields do args[2 * j + 1] = ARGV[2 + j] end
for i, key in ipairs(KEYS) do
  local at = base + (i - 1) * stride
  local held = redis.call('HGET', key, ts_field)
  if not held or held_micros(held) <= tonumber(ARGV[at + 1]) then
    args[2] = ARGV[at + 2]
    for j = 1, nfields do args[2 * j + 2] = ARGV[at + 2 + j] end
    redis.call('HSET', key, unpack(args))
    written = written + 1
  end
end
return written
"""
LUA_CHUNK_KEYS = 1_000


def _redis_write(store, feature_view, rows: ViewRows, guard: str) -> tuple[int, int]:
    from feast.infra.online_stores.helpers import _mmh3, compute_versioned_name

    config = store.config
    client = store._get_provider().online_store._get_client(config.online_store)
    view = compute_versioned_name(feature_view, config.registry.enable_online_feature_view_versioning)
    ts_field = f"_ts:{view}".encode()
    project = config.project.encode("utf8")
    n = len(rows.keys)
    redis_keys = [k + project for k in rows.keys]
    key_parts = [_bulk(k) for k in redis_keys]
    stamps = {nanos: _timestamp_proto(nanos) for nanos in np.unique(rows.event_nanos).tolist()}
    fields = [_mmh3(f"{view}:{name}") for name in rows.names]

    if guard == "lua":
        return _redis_write_lua(client, rows, redis_keys, ts_field, stamps, fields)
    if guard != "hmget":
        raise ValueError(f"guard {guard!r}: expected 'hmget' or 'lua'")

    # Pass 1: the stored event time of every entity, one pipelined HMGET, sent in the background while every
    # row's HSET record is encoded (nearly all rows pass the guard; the others are left out afterwards).
    probe_tail = b"$%d\r\n%s\r\n" % (len(ts_field), ts_field)
    probe = b"".join(b"*3\r\n$5\r\nHMGET\r\n" + part + probe_tail for part in key_parts)
    with _connection(client) as connection:
        sender = _Sender(connection, probe)
        try:
            head = b"*%d\r\n$4\r\nHSET\r\n" % (4 + 2 * len(fields))
            ts_parts = {nanos: _bulk(ts_field) + _bulk(stamp) for nanos, stamp in stamps.items()}
            ts_column = [ts_parts[t] for t in rows.event_nanos.tolist()]
            pieces = [p for field, column in zip(fields, rows.encoded()) for p in column.resp_pieces(n, _bulk(field))]
        finally:
            sender.join()
        cache: dict = {}
        held = np.fromiter((_stored_nanos(reply[0], cache) for reply in _replies(connection, n)), np.int64, n)
        keep = rows.event_nanos >= held
        written = int(keep.sum())
        if written == 0:
            return 0, n

        # Pass 2: HSET key _ts:<view> <Timestamp> field value ..., the rows that pass, in one send.
        records = zip(repeat(head, n), key_parts, ts_column, *pieces)
        if written < n:
            records = compress(records, keep.tolist())
        connection.send_packed_command([b"".join(chain.from_iterable(records))])
        _replies(connection, written)
    return written, n - written


def _redis_write_lua(client, rows: ViewRows, redis_keys, ts_field, stamps, fields) -> tuple[int, int]:
    """Guard "lua": chunks of LUA_CHUNK_KEYS entities per EVALSHA of LUA_NEWEST_WINS, one reply per chunk."""
    sha = client.script_load(LUA_NEWEST_WINS)
    sha = sha.encode() if isinstance(sha, str) else sha
    n = len(redis_keys)
    times = [_bulk(str(t // 1000).encode()) + _bulk(stamps[t]) for t in rows.event_nanos.tolist()]
    values = [p for column in rows.encoded() for p in column.resp_pieces(n, b"")]
    per_key = list(zip(times, *values))
    names = _bulk(ts_field) + _bulk(str(len(fields)).encode()) + b"".join(map(_bulk, fields))
    calls = []
    for start in range(0, n, LUA_CHUNK_KEYS):
        chunk = redis_keys[start:start + LUA_CHUNK_KEYS]
        head = b"*%d\r\n$7\r\nEVALSHA\r\n" % (3 + len(chunk) + 2 + len(fields) + len(chunk) * (2 + len(fields)))
        calls.append(b"".join((head, _bulk(sha), _bulk(str(len(chunk)).encode()), *map(_bulk, chunk), names,
                               *chain.from_iterable(per_key[start:start + LUA_CHUNK_KEYS]))))
    written = sum(_roundtrip(client, b"".join(calls), len(calls)))
    return written, n - written


# ---------------------------------------------------------------------------------------------- SQLite

def _sqlite_path(store) -> Path:
    path = Path(store.config.online_store.path)
    return path if path.is_absolute() else Path(store.repo_path) / path


def _epoch_seconds(nanos: np.ndarray) -> list[int]:
    """What Feast's sqlite3 adapter stores for a naive-UTC datetime: int(datetime.timestamp())."""
    out = {}
    for value in np.unique(nanos).tolist():
        moment = datetime(1970, 1, 1) + timedelta(microseconds=value // 1000)
        out[value] = int(moment.timestamp())
    return [out[v] for v in nanos.tolist()]


def _sqlite_write(store, feature_view, rows: ViewRows) -> tuple[int, int]:
    from feast.infra.online_stores.helpers import compute_table_id

    config = store.config
    table = compute_table_id(config.project, feature_view, config.registry.enable_online_feature_view_versioning)
    quoted = '"' + table.replace('"', '""') + '"'
    n = len(rows.keys)
    with closing(sqlite3.connect(_sqlite_path(store))) as connection, connection:
        try:
            stored = dict(connection.execute(f"SELECT entity_key, MAX(event_ts) FROM {quoted} GROUP BY entity_key"))
        except sqlite3.OperationalError as error:
            raise RuntimeError(f"{_sqlite_path(store)}: no table {table} ({error}); feast apply creates it "
                               "(features.store.feature_store(settings) applies the repo)") from error
        event_seconds = _epoch_seconds(rows.event_nanos)
        if stored:
            # Feast keeps whole epoch seconds: compare at that resolution (equal passes).
            keep = np.fromiter((stored.get(k) is None or s >= int(stored[k])
                                for k, s in zip(rows.keys, event_seconds)), bool, n)
            if not keep.all():
                index = np.flatnonzero(keep)
                rows = rows.take(index)
                event_seconds = [event_seconds[i] for i in index.tolist()]
        m = len(rows.keys)
        created_seconds = _epoch_seconds(rows.created_nanos) if rows.created_nanos.any() else [None] * m
        upsert = (f"INSERT INTO {quoted} (entity_key, feature_name, value, value_text, event_ts, created_ts) "
                  "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(entity_key, feature_name) DO UPDATE SET "
                  "value = excluded.value, value_text = excluded.value_text, event_ts = excluded.event_ts, "
                  "created_ts = excluded.created_ts;")
        # Rows in primary-key order (entity_key, feature_name): B-tree inserts land next to each other,
        # about 3x faster than feature-major order on a fresh table.
        order = sorted(range(m), key=rows.keys.__getitem__)
        per_feature = {}
        for name, value_type, encoded in zip(rows.names, rows.types, rows.encoded()):
            column = rows.table.column(name).combine_chunks()
            values, texts = encoded.as_bytes(m), value_texts(column, value_type, encoded)
            per_feature[name] = [(rows.keys[i], name, values[i], texts[i], event_seconds[i], created_seconds[i])
                                 for i in order]
        by_key = zip(*(per_feature[name] for name in sorted(per_feature)))
        connection.executemany(upsert, chain.from_iterable(by_key))
    return m, n - m


# ---------------------------------------------------------------------------------------------- entry points

def _fast_path(store) -> str | None:
    """'redis' / 'sqlite' when our writer reproduces the configured store exactly, else None (use Feast's)."""
    online = store.config.online_store
    redis_type = getattr(getattr(online, "redis_type", None), "value", None)
    if online.type == "redis" and redis_type == "redis" and not online.key_ttl_seconds:
        return "redis"
    if online.type == "sqlite" and not online.vector_enabled \
            and not getattr(online, "enable_openai_compatible_store", False):
        return "sqlite"
    return None


def online_write(store, view: str, frame: pd.DataFrame | pa.Table, batch_rows: int = WRITE_BATCH_ROWS,
                 guard: str = "hmget") -> OnlineWrite:
    """Push rows of one FeatureView to the online store (Feast's layout), never replacing a newer value.

    `frame` (pandas or Arrow) holds the view's join key(s), features, event timestamp and created timestamp.
    """
    feature_view = store.get_feature_view(view)
    table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
    path = _fast_path(store)
    written = skipped = 0
    for start in range(0, table.num_rows, batch_rows):
        batch = table.slice(start, batch_rows)
        rows = _view_rows(store, feature_view, batch)
        skipped += batch.num_rows - len(rows.keys)  # older rows of an entity that appears twice
        if path == "redis":
            done, older = _redis_write(store, feature_view, rows, guard)
        elif path == "sqlite":
            done, older = _sqlite_write(store, feature_view, rows)
        else:
            done, older = _feast_write(store, feature_view, rows)
        written, skipped = written + done, skipped + older
    return OnlineWrite(view=view, written=written, skipped_older=skipped)


def _feast_write(store, feature_view, rows: ViewRows) -> tuple[int, int]:
    """Other online stores: Feast's converter and writer (its own freshness rules apply)."""
    from feast.utils import _convert_arrow_to_proto

    join_keys = {store.get_entity(n).join_key: store.get_entity(n).value_type for n in feature_view.entities}
    protos = _convert_arrow_to_proto(rows.table.combine_chunks().to_batches()[0], feature_view, join_keys)
    store._get_provider().online_write_batch(store.config, feature_view, protos, progress=None)
    return len(protos), 0


def materialize_day(settings: Settings, day: date, tables: tuple[str, ...] | None = None,
                    guard: str = "hmget") -> dict:
    """Write day D's rows of every feature table into the online store; newer stored values are kept."""
    from features.spark.build import FEATURE_TABLES
    import pyarrow.parquet as pq

    from features.contract import PART_FILE
    from features.store import feature_store

    store = feature_store(settings)
    started = time.perf_counter()
    results = {}
    for table in tables or FEATURE_TABLES:
        part = settings.paths.feature_partition(table, day) / PART_FILE
        if not part.exists():
            raise FileNotFoundError(f"{part.parent}: build the day before materialising it "
                                    f"(`rankflow features build --date {day}`)")
        results[table] = online_write(store, table, pq.read_table(part), guard=guard).to_dict()
    seconds = time.perf_counter() - started
    rows = sum(r["written"] + r["skipped_older"] for r in results.values())
    return {"day": day.isoformat(), "tables": results, "rows": rows, "seconds": round(seconds, 3),
            "rows_per_second": round(rows / seconds, 1) if seconds else None}


def stock_materialize(settings: Settings, day: date, tables: tuple[str, ...] | None = None) -> float:
    """Feast's own `materialize` over the day's validity instant; returns seconds taken."""
    from features.spark.build import FEATURE_TABLES, end_of_day
    from features.store import feature_store

    store = feature_store(settings)
    instant = end_of_day(day)
    started = time.perf_counter()
    store.materialize(start_date=instant - timedelta(seconds=1), end_date=instant + timedelta(seconds=1),
                      feature_views=list(tables or FEATURE_TABLES))
    return time.perf_counter() - started
