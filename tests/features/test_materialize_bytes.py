"""The column-wise writer (features.materialize): Feast's exact bytes at every varint and length boundary,
from dictionary-encoded Parquet as materialize_day reads it, in small sliced batches, and with a backfill
that only half passes the never-roll-back guard."""

from __future__ import annotations

import shutil
import sqlite3
from datetime import date

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from features.contract import PART_FILE, end_of_day
from features.entity_key import int64_entity_key
from features.materialize import (_our_encoder, _read_partition, encode_column, entity_keys, materialize_day,
                                  online_write)
from features.spark.build import FEATURE_TABLES
from features.store import feature_store, write_offline_partition
from rankflow.config import Settings

OURS_URL = "redis://127.0.0.1:6379/6"    # databases of this file alone (test_store uses 1 and 5, serving 2)
FEAST_URL = "redis://127.0.0.1:6379/7"
INT64, FLOAT, DOUBLE, STRING, STRING_LIST, FLOAT_LIST = 4, 6, 5, 2, 12, 16
DAY = date(2026, 1, 2)


def feast_protos(values, value_type: int) -> list[bytes]:
    from feast.type_map import python_values_to_proto_values
    from feast.value_type import ValueType

    return [p.SerializeToString() for p in python_values_to_proto_values(values, ValueType(value_type))]


# Strings of 0, 1, 127, 128 (first 2-byte varint), 16383, 16384 (first 3-byte varint) bytes; lists whose
# encoded size crosses the same boundaries; multi-byte UTF-8.
LENGTHS = [0, 1, 127, 128, 16_383, 16_384]
STRINGS = ["x" * n for n in LENGTHS] + ["ünïcødé", "é" * 64]
STRING_LISTS = [[], [""], ["a" * 125], ["a" * 126], ["b" * 127, "c" * 128], ["s"] * 43, ["s"] * 5462,
                ["é" * 70, "d", ""]]
FLOAT_LISTS = [np.zeros(0, np.float32)] + [np.arange(k, dtype=np.float32) * 0.5 - 3 for k in (1, 31, 32, 4095, 4096)]
INTS = [0, 1, 127, 128, 16_383, 16_384, 2**35, 2**63 - 1, -1, -128, -(2**63)]


def _cases():
    yield "int64", INT64, pa.array(INTS, pa.int64())
    yield "int32 as int64", INT64, pa.array([0, 127, 128, -1, 2**31 - 1], pa.int32())
    yield "float", FLOAT, pa.array([0.0, -0.0, 1e-40, 3.4e38, float("inf"), -2.5], pa.float32())
    yield "double as float", FLOAT, pa.array([0.1, 1e300, -7.0], pa.float64())
    yield "double", DOUBLE, pa.array([0.1, -0.0, 1e-310, 1e300], pa.float64())
    yield "string", STRING, pa.array(STRINGS)
    yield "dictionary string", STRING, pa.array(STRINGS * 3).dictionary_encode()
    yield "string list", STRING_LIST, pa.array(STRING_LISTS, pa.list_(pa.string()))
    yield "dictionary string list", STRING_LIST, pa.ListArray.from_arrays(
        pa.array([0, 0, 2, 5, 5, 9], pa.int32()), pa.array(["a", "b", "a", "é" * 80, "", "a", "b", "c", "a"])
        .dictionary_encode())
    yield "float list", FLOAT_LIST, pa.array(FLOAT_LISTS, pa.list_(pa.float32()))
    yield "double list as float list", FLOAT_LIST, pa.array([[0.1, 2.0], [], [1e-3] * 40], pa.list_(pa.float64()))


@pytest.mark.parametrize("name, value_type, column", list(_cases()), ids=[c[0] for c in _cases()])
@pytest.mark.parametrize("sliced", [False, True], ids=["whole", "sliced"])
def test_encoders_write_feasts_bytes_at_varint_and_length_boundaries(name, value_type, column, sliced):
    if sliced:  # a batch of a bigger table: the Arrow arrays start at an offset
        column = pa.concat_arrays([column, column]).slice(1, len(column) + 1)
    assert _our_encoder(column, value_type) is not None, f"{name}: expected the vectorised encoder"
    plain = column.dictionary_decode() if pa.types.is_dictionary(column.type) else column
    if pa.types.is_list(column.type) and pa.types.is_dictionary(column.type.value_type):
        plain = column.cast(pa.list_(pa.string()))
    assert encode_column(column, value_type).to_pylist() == feast_protos(
        plain.to_numpy(zero_copy_only=False), value_type)


def test_entity_keys_equal_feasts_serialize_entity_key():
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    ids = [0, 1, -1, 127, 2**40, -(2**63), 2**63 - 1]
    feast = [serialize_entity_key(EntityKey(join_keys=["member_id"], entity_values=[Value(int64_val=i)]),
                                  entity_key_serialization_version=3) for i in ids]
    assert [int64_entity_key("member_id", i) for i in ids] == feast
    column = pa.table({"member_id": pa.array(ids, pa.int64())})
    assert entity_keys(column, {"member_id": INT64}, 3).to_pylist() == feast


# ------------------------------------------------------------------------------------------ stores

def _redis(url: str) -> None:
    """Empty the Redis database at `url`; skip the test when no Redis answers."""
    import redis

    try:
        redis.Redis.from_url(url).flushdb()
    except redis.exceptions.ConnectionError as error:
        pytest.skip(f"no Redis answers at {url} ({error}); the Redis path needs a running server")


def _store_dump(settings: Settings) -> dict:
    """Every key and field of the online store: Redis hashes, or the SQLite tables' rows."""
    if settings.online_store != "sqlite":
        import redis

        client = redis.Redis.from_url(settings.online_store)
        return {key: client.hgetall(key) for key in client.scan_iter(count=1000)}
    with sqlite3.connect(settings.paths.feast / "online_store.db") as connection:
        tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {table: connection.execute(f'SELECT * FROM "{table}" ORDER BY entity_key, feature_name').fetchall()
                for table in tables}


def _day_frame(store, view: str, day: date, rows: int, seed: int, with_null: bool = False) -> pd.DataFrame:
    """Every declared feature of `view`, categorical strings and lists as the Spark jobs write them (a small
    vocabulary, so Parquet keeps them dictionary-encoded), numbers spanning varint widths."""
    rng = np.random.default_rng(seed)
    feature_view = store.get_feature_view(view)
    key = store.get_entity(feature_view.entities[0]).join_key
    vocabulary = np.array(["", "sql", "ünïcødé", "x" * 130] + [f"skill_{i}" for i in range(40)], dtype=object)
    data = {key: np.arange(rows, dtype=np.int64) * 7 + 3}
    for field in feature_view.features:
        kind = field.dtype.to_value_type().name
        if kind == "INT64":
            data[field.name] = rng.integers(0, 2**20, rows) >> rng.integers(0, 20, rows)
        elif kind == "FLOAT":
            data[field.name] = rng.normal(size=rows).astype(np.float32)
        elif kind == "STRING":
            data[field.name] = rng.choice(vocabulary, rows)
        elif kind == "STRING_LIST":
            data[field.name] = [list(rng.choice(vocabulary, rng.integers(0, 12))) for _ in range(rows)]
        elif kind == "FLOAT_LIST":
            data[field.name] = [rng.random(rng.integers(0, 40)).astype(np.float32) for _ in range(rows)]
        else:
            raise AssertionError(f"{view}.{field.name}: no values for {kind}")
    frame = pd.DataFrame(data)
    if with_null:  # one column takes Feast's converter: dictionary-encoded strings with a null among them
        name = next(f.name for f in feature_view.features if f.dtype.to_value_type().name == "STRING")
        frame[name] = frame[name].where(frame.index % 5 != 2, None)
    frame["event_timestamp"] = pd.Timestamp(end_of_day(day)).as_unit("us")
    frame["created_ts"] = pd.Timestamp(end_of_day(day) + pd.Timedelta(hours=3)).as_unit("us")
    return frame


@pytest.fixture(scope="module")
def applied(tmp_path_factory, tiny_data_dir):
    """A data dir with the tiny raw schema (attribute features declared) and its Feast repo applied."""
    root = tmp_path_factory.mktemp("materialize") / "data"
    (root / "raw").mkdir(parents=True)
    shutil.copy(tiny_data_dir / "raw" / "schema.yaml", root / "raw" / "schema.yaml")
    feature_store(Settings(data_dir=root))
    return root


def _copy(applied, target, online_store: str) -> Settings:
    shutil.copytree(applied, target)
    settings = Settings(data_dir=target, online_store=online_store)
    feature_store(settings)  # re-renders the repo for this online store
    return settings


@pytest.mark.parametrize("online", ["sqlite", "redis"])
def test_materialize_day_from_dictionary_parquet_writes_feasts_bytes(applied, tmp_path, online):
    ours_url, feast_url = ("sqlite", "sqlite") if online == "sqlite" else (OURS_URL, FEAST_URL)
    if online == "redis":
        _redis(OURS_URL), _redis(FEAST_URL)
    ours, theirs = _copy(applied, tmp_path / "ours", ours_url), _copy(applied, tmp_path / "theirs", feast_url)
    ours_store, theirs_store = feature_store(ours), feature_store(theirs)
    for index, table in enumerate(FEATURE_TABLES):
        frame = _day_frame(ours_store, table, DAY, rows=300, seed=index, with_null=table == "member_features")
        write_offline_partition(ours.paths, table, DAY, frame)
        theirs_store.write_to_online_store(table, frame)  # the reference: Feast's own conversion and writer
    read = _read_partition(ours.paths.feature_partition("member_affinities", DAY) / PART_FILE, dictionaries=True)
    assert pa.types.is_dictionary(read.schema.field("a_skills_values").type.value_type)  # the path under test

    result = materialize_day(ours, DAY)
    assert result["rows"] == 900 and all(t["written"] == 300 for t in result["tables"].values())
    mine, reference = _store_dump(ours), _store_dump(theirs)
    assert sum(map(len, mine.values())) > 900
    assert mine == reference


@pytest.mark.parametrize("online, guard", [("sqlite", "hmget"), ("redis", "hmget"), ("redis", "lua")])
def test_backfill_over_half_the_entities_writes_only_the_others_in_sliced_batches(applied, tmp_path, online, guard):
    if online == "redis":
        _redis(OURS_URL)
    settings = _copy(applied, tmp_path / "data", "sqlite" if online == "sqlite" else OURS_URL)
    store = feature_store(settings)
    newer = _day_frame(store, "member_features", DAY, rows=60, seed=1)
    older = _day_frame(store, "member_features", DAY - pd.Timedelta(days=1), rows=60, seed=2)
    stored = online_write(store, "member_features", newer.iloc[::2], batch_rows=7, guard=guard)
    assert (stored.written, stored.skipped_older) == (30, 0)

    backfill = online_write(store, "member_features", older, batch_rows=7, guard=guard)  # each batch half passes
    assert (backfill.written, backfill.skipped_older) == (30, 30)
    from feast import FeatureStore  # a fresh SDK object on the rendered repo

    names = [f.name for f in store.get_feature_view("member_features").features]
    online_rows = FeatureStore(repo_path=str(settings.paths.feast)).get_online_features(
        features=[f"member_features:{n}" for n in names],
        entity_rows=[{"member_id": int(i)} for i in older["member_id"]]).to_df()
    expected = pd.concat([newer.iloc[::2], older.iloc[1::2]]).set_index("member_id").loc[older["member_id"]]
    for name in names:
        got, want = online_rows[name].tolist(), expected[name].tolist()
        if isinstance(want[0], (list, np.ndarray)):
            got, want = [list(v) for v in got], [list(v) for v in want]
        assert got == want, name
