"""Feature rows straight from Feast's SQLite online store: one query per view, in one read snapshot.

Feast's SDK read of the SQLite store is one query per view too, but around it costs Python per candidate
(entity-key protos, a response proto, `to_dict`): about 240 ms for 1,000 candidates on 2 cores, past the
service's 50 ms feature deadline, so every large request was served on default job features. The layout it
reads is small and fixed (feast/infra/online_stores/sqlite.py; features/materialize.py writes the same rows):

    table        <project>_<view>                       one per feature view
    row          entity_key = serialize_entity_key(join key = id, v3), feature_name, value = ValueProto bytes

so a request here is, inside one read transaction (the store is in WAL mode, so a day being materialised is
never half seen and never blocks the read), one `SELECT ... WHERE entity_key IN (...)` per view, run in a
worker thread; the bytes become rows through serving.stored_rows (Feast's own converter), so a row equals
the SDK's row by construction.

`SqliteRows.for_store(store, ...)` returns None when the configured store is not one this reader reproduces
exactly (view versioning, a feature view TTL, vectors, a join key that is not one int64): the service then
reads through Feast's SDK.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from urllib.parse import quote

from features.entity_key import int64_entity_key
from serving.stored_rows import DecodedRows, check_keys_are_feasts, int64_join_key

IN_LIST_LIMIT = 10_000    # ids per IN (...) list: well under SQLite's 32,766 host parameters
BUSY_TIMEOUT_S = 5.0      # WAL readers wait only on a checkpoint's brief lock; the deadline bounds the request


class _EntityViews:
    """The tables of one entity kind's views and where each (table, feature) lands in its row."""

    def __init__(self, join_key: str, tables: list[tuple[str, list[str]]], rows: DecodedRows):
        self.join_key, self.rows = join_key, rows
        self.width = sum(len(names) for _, names in tables)
        self.tables = []  # (quoted table name, {feature name: slot in the row})
        offset = 0
        for table, names in tables:
            self.tables.append(('"' + table.replace('"', '""') + '"', {n: offset + i for i, n in enumerate(names)}))
            offset += len(names)

    def key(self, entity: int) -> bytes:
        return int64_entity_key(self.join_key, entity)


class SqliteRows:
    """Rows of the member views and job views for one request, read in one SQLite snapshot."""

    cancel_at_deadline = False  # a late read finishes in its thread (nothing to cancel there) and fills caches

    def __init__(self, path: Path, member: _EntityViews, job: _EntityViews):
        self.path, self.member, self.job = path, member, job
        self._local = threading.local()

    @classmethod
    def for_store(cls, store, member_views: list, job_views: list, cache_size: int = 100_000) -> "SqliteRows | None":
        """A reader for `store`'s online store, or None when it is not one this reader reproduces exactly."""
        from feast.infra.online_stores.helpers import compute_table_id

        config = store.config
        online = config.online_store
        if online.type != "sqlite" or getattr(online, "vector_enabled", False) \
                or getattr(online, "enable_openai_compatible_store", False):
            return None
        if config.entity_key_serialization_version < 3:
            return None
        if getattr(config.registry, "enable_online_feature_view_versioning", False):
            return None
        if any(view.ttl and view.ttl.total_seconds() > 0 for view in (*member_views, *job_views)):
            return None  # Feast would age such values out; this reader does not
        kinds = []
        for views in (member_views, job_views):
            join_key = int64_join_key(store, views)
            if join_key is None:
                return None
            tables = [(compute_table_id(config.project, view, False), [f.name for f in view.features])
                      for view in views]
            names = tuple(f.name for view in views for f in view.features)
            value_types = tuple(f.dtype.to_value_type() for view in views for f in view.features)
            kinds.append(_EntityViews(join_key, tables, DecodedRows(names, value_types, cache_size)))
        path = Path(online.path)
        reader = cls(path if path.is_absolute() else Path(store.repo_path) / path, *kinds)
        reader._check_keys(config)
        return reader

    def _check_keys(self, config) -> None:
        for kind in (self.member, self.job):
            check_keys_are_feasts("serving.sqlite_rows", kind.join_key, kind.key, config)

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:  # mode=rw: a missing file is an error here, never a new empty store
            connection = sqlite3.connect(f"file:{quote(str(self.path))}?mode=rw", uri=True,
                                         timeout=BUSY_TIMEOUT_S, isolation_level=None)
            self._local.connection = connection
        return connection

    @staticmethod
    def _raw(connection: sqlite3.Connection, kind: _EntityViews, entities: list[int]) -> dict[int, list]:
        """{entity: raw values in row order} for entities that have at least one stored value."""
        keys = {kind.key(entity): entity for entity in entities}
        found: dict[bytes, list] = {}
        width = kind.width
        unique = list(keys)
        for quoted, slots in kind.tables:
            for start in range(0, len(unique), IN_LIST_LIMIT):
                chunk = unique[start:start + IN_LIST_LIMIT]
                query = (f"SELECT entity_key, feature_name, value FROM {quoted} "
                         f"WHERE entity_key IN ({','.join('?' * len(chunk))})")
                for key, name, value in connection.execute(query, chunk):
                    slot = slots.get(name)
                    if slot is not None:
                        row = found.get(key)
                        if row is None:
                            row = found[key] = [None] * width
                        row[slot] = value
        return {keys[key]: row for key, row in found.items()}

    def _fetch(self, member_id: int | None, item_ids: list[int]) -> tuple[dict[int, list], dict[int, list]]:
        """The raw values of the member and the items, in one read snapshot (blocking: a worker thread's part)."""
        connection = self._connection()
        try:
            connection.execute("BEGIN")
            try:
                member_raw = self._raw(connection, self.member, [member_id]) if member_id is not None else {}
                return member_raw, self._raw(connection, self.job, item_ids)
            finally:
                connection.execute("COMMIT")
        except sqlite3.Error as error:
            raise RuntimeError(f"{self.path}: {error}") from error

    def _rows(self, member_id: int | None, item_ids: list[int], member_raw: dict, job_raw: dict):
        """Decoded rows (on the caller's thread: the row caches are not shared between threads)."""
        member = None
        if member_id is not None:
            member = self.member.rows.row(member_id, member_raw.get(member_id) or [None] * self.member.width)
        empty, jobs = [None] * self.job.width, self.job.rows
        return member, [jobs.row(item, job_raw.get(item, empty)) for item in item_ids]

    def read_now(self, member_id: int | None, item_ids: list[int]) -> tuple[dict | None, list[dict]]:
        """(member row or None when no member was asked, one row per item id), in one read snapshot."""
        return self._rows(member_id, item_ids, *self._fetch(member_id, item_ids))

    async def read(self, member_id: int | None, item_ids: list[int]) -> tuple[dict | None, list[dict]]:
        """`read_now` with the queries in a worker thread (SQLite's calls block) and the decoding on the loop."""
        member_raw, job_raw = await asyncio.to_thread(self._fetch, member_id, item_ids)
        return self._rows(member_id, item_ids, member_raw, job_raw)
