"""Write FeatureView rows into Feast's online store, byte-for-byte in Feast's own layout, column-wise.

Feast 0.67 writes a row at a time in Python (Arrow -> a dict of ValueProto objects -> SerializeToString ->
redis-py / sqlite3), about 5,000 rows/s on two cores. The layout it produces is small and fixed
(feast/infra/online_stores/{redis,sqlite}.py, feast/infra/key_encoding_utils.py), so we emit the same bytes
for whole columns at once and send them in large batches:

    entity key  = <u32 #keys> (<u32 STRING=2> <u32 len> join_key)* (<u32 value type> <u32 len> value)*   (v3;
                  one int64 key: features/entity_key.py)
    Redis       one hash per entity: key = entity key + project; field mmh3_32("<view>:<feature>") (4 bytes,
                little-endian) -> ValueProto bytes; field "_ts:<view>" -> google.protobuf.Timestamp bytes
    SQLite      table "<project>_<view>", one row per entity x feature:
                (entity_key, feature_name, ValueProto bytes, value_text, event_ts, created_ts)

ValueProto of the common types is a tag and a payload (protobuf wire format):
    int64_val    0x20 varint(v as uint64)         float_val  0x35 <f32 LE>       double_val  0x29 <f64 LE>
    string_val   0x12 varint(len) utf8            string_list_val  0x62 varint(len) (0x0a varint(len) s)*
    float_list_val  0x82 0x01 varint(len) [0x0a varint(4k) <k x f32 LE>]   (empty list: 0x82 0x01 0x00)
An encoded column is an Arrow binary array (one value per row): fixed-width values and varints are built as
numpy uint8 matrices, length-delimited ones by Arrow's row-wise joins, dictionary-encoded strings (as
materialize_day reads them from Parquet) once per distinct value. The Redis pipeline itself is built the
same way: each HSET command is one row of a binary array (runs of fixed-width parts packed by numpy, the
rest joined by Arrow), and the array's data buffer is sent as it is: no Python object per row. Any other
type, and any column holding a null or NaN, goes through Feast's own converter
(`python_values_to_proto_values`), so the bytes are Feast's by construction there too.
tests/features/test_store.py and tests/features/test_materialize_bytes.py compare every key and field with
Feast's online_write_batch.

Never roll back: the online store must hold the newest value of every entity (design.md). A row is written
when its event time is >= the stored one (equal passes: re-running a day replaces that day). Redis: one
pipelined read of the `_ts:<view>` fields (HGET per entity), then HSETs of the rows that pass
(`guard="hmget"`, the read-first guard), or a Lua compare-and-set per entity (`guard="lua"`, atomic against
concurrent writers, slower: see benchmarks/results/features-*.md). SQLite: one SELECT of the stored
event_ts per entity, and one transaction per view, or per day in `materialize_day` (the store in WAL mode:
readers keep the committed values meanwhile). Feast's Redis writer skips equal times and its SQLite writer
checks nothing; ours treats both stores alike.

`materialize_day(settings, day)` pushes one day of the Spark feature tables, and of each personalisation view
(glmix_member, glmix_job, meta_embedding) that has a partition of that day, so materialising a range of days
fills a new online store with everything the service reads; `stock_materialize` runs
Feast's own `FeatureStore.materialize` over the same rows for the benchmark (benchmarks/bench_features.py).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import closing, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from itertools import chain
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.entity_key import int64_key_prefix
from rankflow.config import Settings
from rankflow.errors import UnreadableInput

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
#
# Every encoded column is an Arrow large_binary array, one value per row. Arrow's binary kernels
# (binary_join_element_wise, binary_join, take, filter) concatenate such columns row by row in C++, so a
# ValueProto, a whole RESP command and a whole pipeline are built without one Python object per row.

BINARY = pa.large_binary()
NO_SEPARATOR = pa.scalar(b"", BINARY)


def _binary_rows(data: np.ndarray, offsets: np.ndarray) -> pa.Array:
    """Row i = data[offsets[i]:offsets[i + 1]], as an Arrow binary array over the same memory."""
    offsets = np.ascontiguousarray(offsets, np.int64)
    return pa.LargeBinaryArray.from_buffers(BINARY, len(offsets) - 1, [
        None, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(data, np.uint8))])


def _matrix_rows(matrix: np.ndarray) -> pa.Array:
    """Row i = matrix row i (an (n, width) uint8 matrix), as an Arrow binary array."""
    return _binary_rows(matrix.reshape(-1), np.arange(matrix.shape[0] + 1, dtype=np.int64) * matrix.shape[1])


def _prefix_rows(matrix: np.ndarray, lengths: np.ndarray) -> pa.Array:
    """Row i = the first lengths[i] bytes of matrix row i."""
    if len(lengths) and lengths.min() == lengths.max() == matrix.shape[1]:  # every row full: no compaction
        return _matrix_rows(matrix)
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return _binary_rows(matrix[np.arange(matrix.shape[1]) < lengths[:, None]], offsets)


def _fixed(tag: bytes, payload: np.ndarray) -> pa.Array:
    """tag + a fixed-width little-endian payload per row."""
    width = payload.dtype.itemsize
    matrix = np.empty((len(payload), len(tag) + width), np.uint8)
    matrix[:, :len(tag)] = np.frombuffer(tag, np.uint8)
    matrix[:, len(tag):] = payload.view(np.uint8).reshape(len(payload), width)
    return _matrix_rows(matrix)


def _tagged_varints(tag: bytes, values: np.ndarray, omit_zero: bool = False) -> pa.Array:
    """tag + varint(v) per row for uint64 `values` (int64 values viewed as uint64, as protobuf does);
    with omit_zero a 0 gives an empty row."""
    values = values.astype(np.uint64, copy=False)
    lengths = np.ones(len(values), np.int64)
    rest = values >> np.uint64(7)
    while rest.any():  # one pass per 7 bits: at most 10
        lengths += rest > 0
        rest >>= np.uint64(7)
    width = int(lengths.max()) if len(values) else 1
    matrix = np.empty((len(values), len(tag) + width), np.uint8)
    matrix[:, :len(tag)] = np.frombuffer(tag, np.uint8)
    for i in range(width):
        more = np.where(lengths > i + 1, 0x80, 0).astype(np.uint8)
        matrix[:, len(tag) + i] = ((values >> np.uint64(7 * i)) & np.uint64(0x7F)).astype(np.uint8) | more
    lengths += len(tag)
    if omit_zero:
        lengths[values == 0] = 0
    return _prefix_rows(matrix, lengths)


def _offsets(rows: pa.Array) -> np.ndarray:
    """The row offsets of a binary array (into its data buffer)."""
    if rows.type != BINARY:
        raise TypeError(f"expected a {BINARY} array, got {rows.type}")
    return np.frombuffer(rows.buffers()[1], np.int64)[rows.offset:rows.offset + len(rows) + 1]


def _width(part: pa.Array | bytes) -> int | None:
    """The byte width of every row of `part` when they are all alike (a constant always is), else None."""
    if isinstance(part, bytes):
        return len(part)
    offsets = _offsets(part)
    if len(part) == 0 or offsets[-1] - offsets[0] != len(part) * (offsets[1] - offsets[0]):
        return None  # most variable-width columns fail this O(1) test
    lengths = np.diff(offsets)
    return int(lengths[0]) if lengths.min() == lengths.max() else None


def _matrix(part: pa.Array, width: int) -> np.ndarray:
    """The rows of a fixed-width binary array as an (n, width) uint8 view."""
    start = _offsets(part)[0]
    data = np.frombuffer(part.buffers()[2], np.uint8) if width else np.zeros(0, np.uint8)
    return data[start:start + len(part) * width].reshape(len(part), width)


def _pack(parts: list, widths: list[int], n: int) -> pa.Array:
    """Row-wise concatenation of fixed-width parts, as one (n, total width) matrix: a strided copy each."""
    matrix = np.empty((n, sum(widths)), np.uint8)
    at = 0
    for part, width in zip(parts, widths):
        matrix[:, at:at + width] = np.frombuffer(part, np.uint8) if isinstance(part, bytes) else _matrix(part, width)
        at += width
    return _matrix_rows(matrix)


def _join(*parts: pa.Array | bytes) -> pa.Array:
    """Row-wise concatenation of binary columns and constant bytes (at least one part is a column).

    Each run of fixed-width parts (constants, numbers, keys) is packed into one matrix by numpy first;
    Arrow's kernel then joins what is left, at a cost per row and argument."""
    n = len(next(p for p in parts if not isinstance(p, bytes)))
    arguments, run, widths = [], [], []
    for part in (*parts, None):
        width = _width(part) if part is not None else None
        if width is not None:
            run.append(part)
            widths.append(width)
            continue
        if len(run) == 1 and isinstance(run[0], pa.Array):
            arguments.append(run[0])
        elif run and all(isinstance(p, bytes) for p in run):
            arguments.append(pa.scalar(b"".join(run), BINARY))
        elif run:
            arguments.append(_pack(run, widths, n))
        run, widths = [], []
        if part is not None:
            arguments.append(part)
    if len(arguments) == 1 and isinstance(arguments[0], pa.Array):
        return arguments[0]
    return pc.binary_join_element_wise(*arguments, NO_SEPARATOR)


def _length_delimited(tag: bytes, payload: pa.Array, omit_empty: bool = False) -> pa.Array:
    """tag + varint(len) + payload per row (a protobuf length-delimited field); with omit_empty an empty
    payload gives an empty row (a packed repeated field with no elements is left out)."""
    lengths = pc.binary_length(payload).to_numpy()
    return _join(_tagged_varints(tag, lengths, omit_zero=omit_empty), payload)


def _list_offsets(column: pa.ListArray) -> np.ndarray:
    offsets = column.offsets.to_numpy().astype(np.int64)
    return offsets - offsets[0]


def _int64_protos(column: pa.Array) -> pa.Array:
    """int64_val: 0x20 varint(v as uint64)."""
    return _tagged_varints(b"\x20", column.to_numpy(zero_copy_only=False).astype(np.int64).view(np.uint64))


def _float_protos(column: pa.Array) -> pa.Array:
    """float_val: 0x35 <f32 LE> (a double beyond float32's range becomes +-inf, as in Feast's converter)."""
    with np.errstate(over="ignore"):
        return _fixed(b"\x35", column.to_numpy(zero_copy_only=False).astype("<f4"))


def _double_protos(column: pa.Array) -> pa.Array:
    """double_val: 0x29 <f64 LE>."""
    return _fixed(b"\x29", column.to_numpy(zero_copy_only=False).astype("<f8"))


def _strings(column: pa.Array, encode) -> pa.Array:
    """encode(values) for a string column; a dictionary column encodes its dictionary once and picks per row
    (materialize_day reads string columns as Parquet stores them: dictionary-encoded)."""
    if pa.types.is_dictionary(column.type):
        return encode(column.dictionary.cast(BINARY)).take(column.indices)
    return encode(column.cast(BINARY))


def _string_protos(column: pa.Array) -> pa.Array:
    """string_val: 0x12 varint(len) utf8."""
    return _strings(column, lambda values: _length_delimited(b"\x12", values))


def _string_list_protos(column: pa.ListArray) -> pa.Array:
    """string_list_val: 0x62 varint(len) (0x0a varint(len) utf8)*."""
    elements = _strings(column.flatten(), lambda values: _length_delimited(b"\x0a", values))
    lists = pa.LargeListArray.from_arrays(pa.array(_list_offsets(column)), elements)
    return _length_delimited(b"\x62", pc.binary_join(lists, NO_SEPARATOR))


def _float_list_protos(column: pa.ListArray) -> pa.Array:
    """float_list_val: 0x82 0x01 varint(len) [0x0a varint(4k) <k x f32 LE>] (empty list: 0x82 0x01 0x00)."""
    floats = column.flatten().to_numpy(zero_copy_only=False).astype("<f4")
    packed = _binary_rows(floats.view(np.uint8), 4 * _list_offsets(column))
    return _length_delimited(b"\x82\x01", _length_delimited(b"\x0a", packed, omit_empty=True))


def _has_missing(column: pa.Array) -> bool:
    if column.null_count:
        return True
    if pa.types.is_dictionary(column.type):  # a null in the dictionary is a null where a row points at it
        return _has_missing(column.dictionary)
    if pa.types.is_floating(column.type):
        return bool(np.isnan(column.to_numpy(zero_copy_only=False)).any())
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        flat = column.flatten()
        if pa.types.is_floating(flat.type):
            return flat.null_count > 0 or not bool(np.isfinite(flat.to_numpy(zero_copy_only=False)).all())
        return _has_missing(flat)
    return False


def _is_string(arrow_type: pa.DataType) -> bool:
    """Plain or dictionary-encoded strings."""
    return pa.types.is_string(arrow_type) or \
        (pa.types.is_dictionary(arrow_type) and pa.types.is_string(arrow_type.value_type))


def _plain(column: pa.Array) -> pa.Array:
    """The column with dictionary-encoded strings (alone or in lists) decoded, for Feast's converter."""
    if pa.types.is_dictionary(column.type):
        return column.dictionary_decode()
    if pa.types.is_list(column.type) and pa.types.is_dictionary(column.type.value_type):
        return column.cast(pa.list_(column.type.value_type.value_type))
    return column


def _our_encoder(column: pa.Array, value_type: int):
    """The vectorised encoder of `column` declared as `value_type`, or None where Feast's converter must
    write it (a null or NaN in the column, or a type without a fast path)."""
    arrow_type = column.type
    numeric = pa.types.is_floating(arrow_type) or pa.types.is_integer(arrow_type)
    if _has_missing(column):
        return None
    if value_type == INT64 and pa.types.is_integer(arrow_type):
        return _int64_protos
    if value_type == FLOAT and numeric:
        return _float_protos
    if value_type == DOUBLE and numeric:
        return _double_protos
    if value_type == STRING and _is_string(arrow_type):
        return _string_protos
    if pa.types.is_list(arrow_type) and value_type == STRING_LIST and _is_string(arrow_type.value_type):
        return _string_list_protos
    if pa.types.is_list(arrow_type) and value_type == FLOAT_LIST and pa.types.is_floating(arrow_type.value_type):
        return _float_list_protos
    return None


def encode_column(column: pa.Array, value_type: int) -> pa.Array:
    """The ValueProto bytes Feast would store for each value of `column` declared as `value_type`."""
    encoder = _our_encoder(column, value_type)
    if encoder is not None:
        return encoder(column)
    from feast.type_map import python_values_to_proto_values
    from feast.value_type import ValueType

    values = _plain(column).to_numpy(zero_copy_only=False)
    protos = python_values_to_proto_values(values, ValueType(value_type))
    return pa.array([p.SerializeToString() for p in protos], BINARY)


def value_texts(column: pa.Array, value_type: int, encoded: pa.Array) -> list[str | None]:
    """SQLite's `value_text` (feast...helpers.extract_text_and_num): str() of scalars, None for lists."""
    if value_type not in SCALAR_TEXT_TYPES:  # extract_text_and_num has no text for any other oneof
        return [None] * len(column)
    encoder = _our_encoder(column, value_type)
    if encoder in (_int64_protos, _float_protos, _double_protos):
        numbers = column.to_numpy(zero_copy_only=False)
        with np.errstate(over="ignore"):
            numbers = numbers.astype(np.int64) if value_type == INT64 else \
                numbers.astype(np.float32 if value_type == FLOAT else np.float64).astype(np.float64)
        return list(map(str, numbers.tolist()))
    if encoder is _string_protos:
        return column.to_pylist()
    from feast.infra.online_stores.helpers import extract_text_and_num
    from feast.protos.feast.types.Value_pb2 import Value

    return [extract_text_and_num(Value.FromString(raw), False)[0] for raw in encoded.to_pylist()]


def entity_keys(table: pa.Table, join_keys: dict[str, int], version: int) -> pa.Array:
    """serialize_entity_key(...) of every row (fast for one int64 join key, Feast's own code otherwise)."""
    if len(join_keys) == 1 and version >= 3:
        (name, value_type), = join_keys.items()
        column = table.column(name).combine_chunks()
        if value_type == INT64 and pa.types.is_integer(column.type) and not column.null_count:
            return _fixed(int64_key_prefix(name), column.to_numpy(zero_copy_only=False).astype("<i8"))
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.type_map import python_values_to_proto_values
    from feast.value_type import ValueType

    names = list(join_keys)
    columns = [python_values_to_proto_values(table.column(n).to_numpy(zero_copy_only=False), ValueType(t))
               for n, t in join_keys.items()]
    return pa.array([serialize_entity_key(EntityKey(join_keys=names, entity_values=list(values)),
                                          entity_key_serialization_version=version)
                     for values in zip(*columns)], BINARY)


def _nanos(column: pa.Array) -> np.ndarray:
    """Epoch nanoseconds of a timestamp column (naive columns are UTC, as in Feast)."""
    if pa.types.is_timestamp(column.type) and not column.null_count:  # Arrow keeps UTC epoch values
        return column.cast(pa.timestamp("ns", column.type.tz)).cast(pa.int64()).to_numpy()
    values = column.to_numpy(zero_copy_only=False)
    return pd.to_datetime(values, utc=True).as_unit("ns").asi8 if len(values) else np.zeros(0, np.int64)


def _timestamp_proto(nanos: int) -> bytes:
    """google.protobuf.Timestamp bytes Feast writes for an event time (seconds, nanos as microseconds*1000)."""
    from google.protobuf.timestamp_pb2 import Timestamp

    stamp = Timestamp()
    moment = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=nanos // 1000)
    stamp.FromDatetime(moment)
    return stamp.SerializeToString()


def _stored_nanos(raw: bytes | None) -> int:
    """Nanoseconds of a stored `_ts` Timestamp (-1 when the entity has none)."""
    if raw is None:
        return -1
    from google.protobuf.timestamp_pb2 import Timestamp

    stamp = Timestamp.FromString(raw)
    return stamp.seconds * 1_000_000_000 + stamp.nanos


def _newest_per_entity(keys: pa.Array, event_nanos: np.ndarray, created_nanos: np.ndarray) -> np.ndarray:
    """Row indices keeping one row per entity: the newest event time, then the newest created time."""
    if pc.count_distinct(keys).as_py() == len(keys):
        return np.arange(len(keys))
    codes = keys.dictionary_encode().indices.to_numpy()
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
    keys: pa.Array
    event_nanos: np.ndarray
    created_nanos: np.ndarray

    def take(self, index: np.ndarray) -> "ViewRows":
        index = pa.array(index, pa.int64())
        return ViewRows(self.names, self.types, self.table.take(index), self.keys.take(index),
                        self.event_nanos[index], self.created_nanos[index])

    def encoded(self) -> list[pa.Array]:
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
#
# A pipeline is written as RESP bytes built column-wise (one Arrow binary row per command) and sent with
# one sendall; replies are parsed by one hiredis Reader straight off the socket.

def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _bulks(values: pa.Array) -> list:
    """_join parts that make the RESP bulk string `$<len>\\r\\n<value>\\r\\n` of every row."""
    lengths = pc.binary_length(values)
    sizes = lengths.to_numpy()
    if len(sizes) and sizes.min() == sizes.max():  # fixed-width values (keys, numbers): a constant length line
        return [b"$%d\r\n" % sizes[0], values, CRLF]
    return [b"$", pc.cast(pc.cast(lengths, pa.string()), BINARY), CRLF, values, CRLF]


def _wire_bytes(commands: pa.Array) -> memoryview:
    """The commands' bytes back to back, as they go on the wire (a view of the array's data, no copy)."""
    bounds, data = _offsets(commands), commands.buffers()[2]
    return memoryview(data)[bounds[0]:bounds[-1]] if data is not None else memoryview(b"")


_RECV_BYTES = 1 << 20
_NOT_ENOUGH_DATA = object()  # hiredis's "no complete reply yet" marker (False would equal an integer reply 0)


def _read_replies(connection, replies: int) -> list:
    """`replies` replies off the connection's socket, parsed by one hiredis Reader in C.

    redis-py's read_response costs ~10 us of Python per reply (health checks, push handling, error mapping):
    most of a pipelined write of small HSET replies. Here every complete reply in a received chunk is taken
    by iterating the Reader from C, with no Python bytecode per reply. Errors come back as ResponseError
    objects, not raised. Falls back to read_response when hiredis or the raw socket is unavailable.
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
    reader = hiredis.Reader(replyError=ResponseError, notEnoughData=_NOT_ENOUGH_DATA)
    buffer = bytearray(_RECV_BYTES)
    out: list = []
    while len(out) < replies:
        received = sock.recv_into(buffer)
        if received == 0:
            raise ConnectionError(f"Redis closed the connection after {len(out)} of {replies} replies")
        reader.feed(buffer, 0, received)
        out.extend(iter(reader.gets, _NOT_ENOUGH_DATA))
    if len(out) > replies or reader.gets() is not _NOT_ENOUGH_DATA:
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
    if any(issubclass(kind, ResponseError) for kind in set(map(type, out))):  # one type check per kind, in C
        raise next(reply for reply in out if isinstance(reply, ResponseError))
    return out


def _roundtrip(client, payload: bytes, replies: int) -> list:
    """Send pre-packed commands on one connection and read every reply (a pipeline without redis-py's packing)."""
    with _connection(client) as connection:
        connection.send_packed_command([payload])
        return _replies(connection, replies)


class _Sender(threading.Thread):
    """Sends a packed pipeline in the background (the GIL is released in sendall), so Redis works on it
    while this process encodes; join() re-raises a send error."""

    def __init__(self, connection, payload):
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


def _held_nanos(replies: list) -> np.ndarray:
    """The stored event time of each entity from its `HGET key _ts:<view>` reply (-1: none stored)."""
    nanos = {stamp: _stored_nanos(stamp) for stamp in set(replies)}  # a day's rows share a few event times
    return np.fromiter(map(nanos.__getitem__, replies), np.int64, len(replies))


def _per_row(distinct: list[bytes], which: np.ndarray) -> pa.Array:
    """distinct[which[i]] for every row i."""
    return pa.array(distinct, BINARY).take(pa.array(which))


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

    if guard not in ("hmget", "lua"):
        raise ValueError(f"guard {guard!r}: expected 'hmget' or 'lua'")
    n = len(rows.keys)
    if n == 0:
        return 0, 0
    config = store.config
    client = store._get_provider().online_store._get_client(config.online_store)
    view = compute_versioned_name(feature_view, config.registry.enable_online_feature_view_versioning)
    ts_field = f"_ts:{view}".encode()
    fields = [_mmh3(f"{view}:{name}") for name in rows.names]
    key_bulks = _bulks(_join(rows.keys, config.project.encode("utf8")))  # Redis key = entity key + project
    instants, which = np.unique(rows.event_nanos, return_inverse=True)
    stamps = [_timestamp_proto(t) for t in instants.tolist()]
    if guard == "lua":
        times = _per_row([_bulk(b"%d" % (t // 1000)) + _bulk(s) for t, s in zip(instants.tolist(), stamps)], which)
        return _redis_write_lua(client, _join(*key_bulks), times, rows.encoded(), ts_field, fields)

    # Pass 1: the stored event time of every entity, one pipelined HGET per entity (bare bulk replies: no
    # list per reply, so no garbage-collector passes over a pipeline of lists), sent in the background while
    # every row's HSET command is encoded (nearly all rows pass the guard; the others are filtered out after).
    probe = _join(b"*3\r\n$4\r\nHGET\r\n", *key_bulks, _bulk(ts_field))
    with _connection(client) as connection:
        sender = _Sender(connection, _wire_bytes(probe))
        try:
            stamp_bulks = _per_row([_bulk(ts_field) + _bulk(stamp) for stamp in stamps], which)
            columns = rows.encoded()
            # Fixed-width values first (field order within a hash is free): they pack into one matrix.
            order = sorted(range(len(columns)), key=lambda i: _width(columns[i]) is None)
            values = [part for i in order for part in (_bulk(fields[i]), *_bulks(columns[i]))]
            commands = _join(b"*%d\r\n$4\r\nHSET\r\n" % (4 + 2 * len(fields)), *key_bulks, stamp_bulks, *values)
        finally:
            sender.join()
        keep = rows.event_nanos >= _held_nanos(_replies(connection, n))
        written = int(keep.sum())
        if written == 0:
            return 0, n

        # Pass 2: HSET key _ts:<view> <Timestamp> field value ..., the rows that pass, in one send.
        if written < n:
            commands = commands.filter(pa.array(keep))
        connection.send_packed_command([_wire_bytes(commands)])
        _replies(connection, written)
    return written, n - written


def _redis_write_lua(client, key_bulks: pa.Array, times: pa.Array, columns: list[pa.Array], ts_field: bytes,
                     fields: list[bytes]) -> tuple[int, int]:
    """Guard "lua": chunks of LUA_CHUNK_KEYS entities per EVALSHA of LUA_NEWEST_WINS, one reply per chunk."""
    sha = client.script_load(LUA_NEWEST_WINS)
    sha = sha.encode() if isinstance(sha, str) else sha
    n = len(key_bulks)
    per_key = _join(times, *(part for column in columns for part in _bulks(column)))
    names = _bulk(ts_field) + _bulk(b"%d" % len(fields)) + b"".join(map(_bulk, fields))
    calls = []
    for start in range(0, n, LUA_CHUNK_KEYS):
        count = min(LUA_CHUNK_KEYS, n - start)
        head = b"*%d\r\n$7\r\nEVALSHA\r\n" % (3 + count + 2 + len(fields) + count * (2 + len(fields)))
        calls.append(b"".join((head, _bulk(sha), _bulk(b"%d" % count), _wire_bytes(key_bulks.slice(start, count)),
                               names, _wire_bytes(per_key.slice(start, count)))))
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


SQLITE_LOCK_WAIT_S = 600.0  # another writer's day (personalise, a backfill) holds the store: wait for it


@contextmanager
def sqlite_transaction(store):
    """One write transaction on the SQLite online store: what it writes appears at its commit, all at once.

    The store is in WAL mode (set here; it stays with the file): readers, the service included, go on reading
    the committed values while a day is written, and are never locked out by a long transaction. An error,
    or a kill, before the commit leaves the store as it was. Damaged pages met on the way raise ValueError
    naming the file.
    """
    path = _sqlite_path(store)
    with closing(sqlite3.connect(path, timeout=SQLITE_LOCK_WAIT_S, isolation_level=None)) as connection:
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                if connection.in_transaction:  # SQLite ends it by itself on some I/O errors: keep the first error
                    connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
        except sqlite3.OperationalError:
            raise
        except sqlite3.DatabaseError as error:  # damaged pages behind the header and schema features.store checks
            from features.store import REBUILD_SQLITE_ONLINE_STORE

            raise ValueError(f"{path}: the SQLite online store is damaged ({error}); "
                             f"{REBUILD_SQLITE_ONLINE_STORE}") from None


class _SqliteTable:
    """One view's SQLite table inside a write transaction (nothing else writes it meanwhile), so the stored event
    time of every entity is read once, at the first batch, and kept up to date by this writer: one scan of the
    table per view, not one per batch."""

    def __init__(self, connection, store, feature_view) -> None:
        from feast.infra.online_stores.helpers import compute_table_id

        config = store.config
        self.connection, self.path = connection, _sqlite_path(store)
        self.table = compute_table_id(config.project, feature_view,
                                      config.registry.enable_online_feature_view_versioning)
        self.quoted = '"' + self.table.replace('"', '""') + '"'
        self._stored: dict[bytes, int] | None = None

    def stored(self) -> dict[bytes, int]:
        if self._stored is None:
            try:
                self._stored = {key: int(seconds) for key, seconds in self.connection.execute(
                    f"SELECT entity_key, MAX(event_ts) FROM {self.quoted} GROUP BY entity_key")}
            except sqlite3.OperationalError as error:
                if "no such table" not in str(error):
                    raise
                raise RuntimeError(f"{self.path}: no table {self.table} ({error}); feast apply creates it "
                                   "(features.store.feature_store(settings) applies the repo)") from error
        return self._stored

    def write(self, rows: ViewRows) -> tuple[int, int]:
        n = len(rows.keys)
        stored = self.stored()
        keys = rows.keys.to_pylist()
        event_seconds = _epoch_seconds(rows.event_nanos)
        if stored:
            # Feast keeps whole epoch seconds: compare at that resolution (equal passes).
            keep = np.fromiter((stored.get(k) is None or s >= stored[k] for k, s in zip(keys, event_seconds)), bool, n)
            if not keep.all():
                index = np.flatnonzero(keep)
                rows = rows.take(index)
                keys = [keys[i] for i in index.tolist()]
                event_seconds = [event_seconds[i] for i in index.tolist()]
        m = len(keys)
        created_seconds = _epoch_seconds(rows.created_nanos) if rows.created_nanos.any() else [None] * m
        upsert = (f"INSERT INTO {self.quoted} (entity_key, feature_name, value, value_text, event_ts, created_ts) "
                  "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(entity_key, feature_name) DO UPDATE SET "
                  "value = excluded.value, value_text = excluded.value_text, event_ts = excluded.event_ts, "
                  "created_ts = excluded.created_ts;")
        # Rows in primary-key order (entity_key, feature_name): B-tree inserts land next to each other,
        # about 3x faster than feature-major order on a fresh table.
        order = sorted(range(m), key=keys.__getitem__)
        per_feature = {}
        for name, value_type, encoded in zip(rows.names, rows.types, rows.encoded()):
            column = rows.table.column(name).combine_chunks()
            values, texts = encoded.to_pylist(), value_texts(column, value_type, encoded)
            per_feature[name] = [(keys[i], name, values[i], texts[i], event_seconds[i], created_seconds[i])
                                 for i in order]
        by_key = zip(*(per_feature[name] for name in sorted(per_feature)))
        self.connection.executemany(upsert, chain.from_iterable(by_key))
        stored.update(zip(keys, event_seconds))
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
                 guard: str = "hmget", sqlite=None) -> OnlineWrite:
    """Push rows of one FeatureView to the online store (Feast's layout), never replacing a newer value.

    `frame` (pandas or Arrow) holds the view's join key(s), features, event timestamp and created timestamp.
    SQLite: the view's rows are one transaction, or part of the caller's (`sqlite`, from sqlite_transaction).
    """
    feature_view = store.get_feature_view(view)
    table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
    path = _fast_path(store)
    own = sqlite is None and path == "sqlite"
    written = skipped = 0
    with sqlite_transaction(store) if own else nullcontext(sqlite) as connection:
        sqlite_table = _SqliteTable(connection, store, feature_view) if path == "sqlite" else None
        for start in range(0, table.num_rows, batch_rows):
            batch = table.slice(start, batch_rows)
            rows = _view_rows(store, feature_view, batch)
            skipped += batch.num_rows - len(rows.keys)  # older rows of an entity that appears twice
            if path == "redis":
                done, older = _redis_write(store, feature_view, rows, guard)
            elif path == "sqlite":
                done, older = sqlite_table.write(rows)
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


def unreadable_partition(path: Path, error: BaseException) -> UnreadableInput:
    """The error for a feature partition that cannot be read: the file first, then what to do."""
    reason = " ".join(str(error).split()) or type(error).__name__
    return UnreadableInput(f"{path}: not a readable Parquet partition ({type(error).__name__}: {reason}); rebuild its "
                      f"day (`rankflow features build --date {path.parent.name.removeprefix('dt=')}`)")


def _partition_schema(path: Path) -> pa.Schema:
    """The Arrow schema from a partition's Parquet footer (the end of the file: a cut-off file fails here)."""
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).schema_arrow
    except (pa.ArrowException, OSError) as error:
        raise unreadable_partition(path, error) from None


def _read_partition(path: Path, dictionaries: bool) -> pa.Table:
    """A feature partition; with `dictionaries` its string columns (and list elements) come as Parquet keeps
    them, dictionary-encoded, so each distinct string is encoded once (our writers take such columns).
    One thread: on two cores the other one is Redis's. A file that cannot be read raises ValueError naming it."""
    import pyarrow.parquet as pq

    try:
        if not dictionaries:
            return pq.read_table(path)
        footer = pq.ParquetFile(path)
        strings = [column.path for column in footer.schema if column.logical_type.type == "STRING"]
        return pq.ParquetFile(path, read_dictionary=strings, metadata=footer.metadata).read(use_threads=False)
    except (pa.ArrowException, OSError) as error:
        raise unreadable_partition(path, error) from None


def _check_partition_columns(store, table: str, path: Path, schema: pa.Schema) -> None:
    """The view's join keys, features and timestamp are all in the partition (else: which are missing)."""
    feature_view = store.get_feature_view(table)
    needed = [store.get_entity(name).join_key for name in feature_view.entities]
    needed += [f.name for f in feature_view.features] + [feature_view.batch_source.timestamp_field]
    missing = [name for name in needed if name not in schema.names]
    if missing:
        raise ValueError(f"{path}: lacks column(s) {missing} of the feature view {table}; rebuild its day "
                         f"(`rankflow features build --date {path.parent.name.removeprefix('dt=')}`)")


# Views the personalisation stages write (rankflow personalise, rankflow meta): materialising a day pushes their
# partition of the day too when it exists, so materialising a range of days fills a new online store (Redis
# after SQLite, say) with every view the service reads, not only the feature tables.
PERSONALISATION_VIEWS = ("glmix_member", "glmix_job", "meta_embedding")


def day_tables(settings: Settings, day: date) -> tuple[str, ...]:
    """What materialising `day` writes: every feature table, and each personalisation view with a partition of D."""
    from features.contract import PART_FILE
    from features.spark.build import FEATURE_TABLES

    present = tuple(view for view in PERSONALISATION_VIEWS
                    if (settings.paths.feature_partition(view, day) / PART_FILE).exists())
    return FEATURE_TABLES + present


def materialize_day(settings: Settings, day: date, tables: tuple[str, ...] | None = None,
                    guard: str = "hmget") -> dict:
    """Write day D's rows of every feature table (and of each personalisation view that has a partition of D)
    into the online store; newer stored values are kept.

    Every partition's footer and columns are checked before the first write: a missing, cut-off or wrong file
    stops the day with nothing written. SQLite: the day is one transaction, so any later failure (a body that
    is damaged behind a whole footer, a kill) leaves the store as it was. Redis: the tables are written one
    after the other; after such a failure the tables before it hold the new day, and re-running the day
    after a rebuild completes it (values are never rolled back either way).
    """
    from features.contract import PART_FILE
    from features.store import feature_store

    parts = {table: settings.paths.feature_partition(table, day) / PART_FILE
             for table in tables or day_tables(settings, day)}
    for part in parts.values():  # before the store opens (and maybe runs feast apply): nothing written, at once
        if not part.exists():
            raise FileNotFoundError(f"{part.parent}: build the day before materialising it "
                                    f"(`rankflow features build --date {day}`)")
    schemas = {table: _partition_schema(part) for table, part in parts.items()}
    store = feature_store(settings)
    for table, part in parts.items():
        _check_partition_columns(store, table, part, schemas[table])
    fast = _fast_path(store)
    started = time.perf_counter()
    results = {}
    # SQLite: the whole day in one transaction (a failure or a kill on the way leaves the store as it was).
    with sqlite_transaction(store) if fast == "sqlite" else nullcontext() as connection:
        for table, part in parts.items():
            frame = _read_partition(part, dictionaries=fast is not None)
            results[table] = online_write(store, table, frame, guard=guard, sqlite=connection).to_dict()
    seconds = time.perf_counter() - started
    rows = sum(r["written"] + r["skipped_older"] for r in results.values())
    return {"day": day.isoformat(), "tables": results, "rows": rows, "seconds": round(seconds, 3),
            "rows_per_second": round(rows / seconds, 1) if seconds else None}


def stock_materialize(settings: Settings, day: date, tables: tuple[str, ...] | None = None) -> float:
    """Feast's own `materialize` over the day's validity instant; returns seconds taken."""
    from features.contract import end_of_day
    from features.spark.build import FEATURE_TABLES
    from features.store import feature_store

    store = feature_store(settings)
    instant = end_of_day(day)
    started = time.perf_counter()
    store.materialize(start_date=instant - timedelta(seconds=1), end_date=instant + timedelta(seconds=1),
                      feature_views=list(tables or FEATURE_TABLES))
    return time.perf_counter() - started
