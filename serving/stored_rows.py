"""Decoded feature rows of one kind of entity (member or job), kept while their stored bytes do not change.

The direct readers (serving.redis_rows, serving.sqlite_rows) fetch the raw ValueProto bytes of an entity's
features in a fixed order; `DecodedRows.row` turns them into the row Feast's SDK would return (its own
converter, `feast_value_type_to_python_type`; None per missing value) and hands back the same dict object
while the bytes are unchanged: serving.encoding keys its per-job cache on that object, and a changed value
gets a new row at once (the bytes are compared, so a stale row is never served).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable

from features.entity_key import INT64


def int64_join_key(store, views: list) -> str | None:
    """The one join key of `views`' entities when it is a single int64 (what the direct readers handle), else None."""
    join_keys = {entity.join_key: entity.value_type.value
                 for entity in (store.get_entity(name) for view in views for name in view.entities)}
    if len(join_keys) != 1 or next(iter(join_keys.values())) != INT64:
        return None
    return next(iter(join_keys))


def check_keys_are_feasts(reader: str, join_key: str, key: Callable[[int], bytes], config, suffix: bytes = b"") -> None:
    """`key(id)` must be Feast's serialize_entity_key (+ `suffix`) on a few ids, or the reader cannot be used."""
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    for entity in (0, 7, -3, 2**40 + 5):
        feast_key = serialize_entity_key(
            EntityKey(join_keys=[join_key], entity_values=[Value(int64_val=entity)]),
            entity_key_serialization_version=config.entity_key_serialization_version) + suffix
        if feast_key != key(entity):
            raise RuntimeError(f"{reader}: key of {join_key}={entity} differs from Feast's serialize_entity_key; "
                               "the reader cannot be used")


class DecodedRows:
    """Rows of one entity kind: `names` in row order, `value_types` (feast ValueType) as the converter's hints."""

    def __init__(self, names: tuple[str, ...], value_types: tuple[Any, ...], cache_size: int = 100_000):
        self.names, self.value_types, self.cache_size = names, value_types, cache_size
        self._rows: OrderedDict[int, tuple[tuple, dict]] = OrderedDict()

    def row(self, entity: int, raw) -> dict[str, Any]:
        """The entity's row from its raw values (bytes, or None / b"" where the store has none)."""
        key = tuple(raw)
        held = self._rows.get(entity)
        if held is not None and held[0] == key:
            self._rows.move_to_end(entity)
            return held[1]
        from feast.protos.feast.types.Value_pb2 import Value
        from feast.type_map import feast_value_type_to_python_type

        row = {name: feast_value_type_to_python_type(Value.FromString(value), value_type) if value else None
               for name, value, value_type in zip(self.names, key, self.value_types)}
        self._rows[entity] = (key, row)
        self._rows.move_to_end(entity)
        if len(self._rows) > self.cache_size:
            self._rows.popitem(last=False)
        return row
