"""Feast's online-store key of an entity with one int64 join key (serialize_entity_key, version 3).

    <u32 1 = #keys> <u32 STRING=2> <u32 len> join_key <u32 INT64=4> <u32 8> <i64 LE id>

(feast/infra/key_encoding_utils.py). Redis appends the project name to it; SQLite stores it as it is.
features.materialize writes these keys for whole columns at once, serving.redis_rows builds them one entity
at a time: both take the layout from here, and each checks it against Feast's own serialize_entity_key
(tests/features/test_store.py, RedisRows._check_keys).
"""

from __future__ import annotations

import struct

STRING, INT64 = 2, 4  # feast.value_type.ValueType numbers


def int64_key_prefix(join_key: str) -> bytes:
    """The bytes before the id: one key, its name, the value's type and width."""
    name = join_key.encode("utf8")
    return struct.pack("<III", 1, STRING, len(name)) + name + struct.pack("<II", INT64, 8)


def int64_entity_key(join_key: str, entity: int) -> bytes:
    """The key of one entity (the id as a little-endian int64)."""
    return int64_key_prefix(join_key) + struct.pack("<q", entity)
