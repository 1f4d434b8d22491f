"""Feature rows straight from Feast's Redis layout: one pipelined HMGET batch per request, decoded once.

Feast's SDK read (`get_online_features_async`) costs milliseconds of Python per request before Redis is
even asked: request validation, one pipeline per view, a protobuf response, `to_dict`. The layout it reads
is small and fixed (feast/infra/online_stores/redis.py; features/materialize.py writes the same bytes):

    Redis key   serialize_entity_key(join key = id, v3) + project          one hash per entity, all its views
    field       mmh3_32("<view>:<feature>") (4 bytes, little-endian)       -> ValueProto bytes

so a request here is one write of pre-packed HMGETs (the member's hash and every candidate's hash, each
asking for the fields of all views of that entity at once) and one read of the replies (hiredis parses).
A field's bytes become a Python value through Feast's own converter (`feast_value_type_to_python_type`),
so a row equals the SDK's row by construction; an entity whose bytes did not change since the last read
keeps its decoded row object (serving.stored_rows compares the raw bytes, so it never serves a stale value).

`RedisRows.for_store(store, ...)` returns None when the configured store is not a plain Redis this reader
reproduces exactly (cluster, sentinel, TLS, key TTLs, view versioning, a feature view TTL, a join key that
is not one int64): the service then reads through Feast's SDK.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from features.entity_key import int64_entity_key
from serving.stored_rows import DecodedRows, check_keys_are_feasts, int64_join_key

MAX_IDLE_CONNECTIONS = 32


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


@dataclass(frozen=True)
class EntityLayout:
    """How the rows of one entity (member or job) are laid out: key prefix, fields, value converters."""

    join_key: str
    names: tuple[str, ...]            # feature names, in the order rows are returned
    fields_part: bytes                # the RESP bulk strings of every field, after the key
    value_types: tuple[Any, ...]      # feast ValueType per feature (Feast's converter takes it as a hint)

    def key(self, entity: int, project: bytes) -> bytes:
        return int64_entity_key(self.join_key, entity) + project


class _Connection:
    """One Redis connection on the running event loop (asyncio streams + a hiredis reply parser)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        import hiredis

        self.reader, self.writer = reader, writer
        self.parser = hiredis.Reader()
        self.error_type = hiredis.ReplyError

    async def roundtrip(self, payload: bytes, replies: int) -> list:
        self.writer.write(payload)
        out: list = []
        first_error = None
        while len(out) < replies:
            reply = self.parser.gets()
            if reply is False:
                data = await self.reader.read(1 << 16)
                if not data:
                    raise ConnectionError("Redis closed the connection")
                self.parser.feed(data)
                continue
            if isinstance(reply, self.error_type):
                first_error = first_error or reply
            out.append(reply)
        if first_error is not None:
            raise ConnectionError(f"Redis replied with an error: {first_error}")
        return out

    def close(self) -> None:
        try:
            self.writer.close()
        except RuntimeError:  # its event loop is already closed (asyncio.run per call): nothing left to close
            pass


class RedisRows:
    """Rows of the member views and job views for one request, in one round trip to Redis."""

    cancel_at_deadline = True  # a late read holds a connection that is out of step: dropped, not waited for

    def __init__(self, host: str, port: int, db: int, password: str | None, project: str,
                 member: EntityLayout, job: EntityLayout, cache_size: int = 100_000):
        self.host, self.port, self.db, self.password = host, port, db, password
        self.project = project.encode("utf8")
        self.member, self.job = member, job
        self.cache_size = cache_size
        self._idle: list[_Connection] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._commands: dict[tuple[str, int], bytes] = {}
        self._rows = {kind: DecodedRows(layout.names, layout.value_types, cache_size)
                      for kind, layout in (("member", member), ("job", job))}

    # ---- construction -------------------------------------------------------------------------------
    @classmethod
    def for_store(cls, store, member_views: list, job_views: list, cache_size: int = 100_000) -> "RedisRows | None":
        """A reader for `store`'s online store, or None when it is not one this reader reproduces exactly."""
        from feast.infra.online_stores.redis import RedisOnlineStore

        config = store.config
        online = config.online_store
        if online.type != "redis" or getattr(getattr(online, "redis_type", None), "value", None) != "redis":
            return None
        if online.key_ttl_seconds or config.entity_key_serialization_version < 3:
            return None
        if getattr(config.registry, "enable_online_feature_view_versioning", False):
            return None
        if any(view.ttl and view.ttl.total_seconds() > 0 for view in (*member_views, *job_views)):
            return None  # Feast would age such values out; this reader does not
        nodes, params = RedisOnlineStore._parse_connection_string(online.connection_string)
        if len(nodes) != 1 or set(params) - {"db", "password"}:
            return None  # ssl, usernames, timeouts...: Feast's client handles those
        layouts = []
        for views in (member_views, job_views):
            join_key = int64_join_key(store, views)
            if join_key is None:
                return None
            layouts.append(cls._layout(join_key, views))
        reader = cls(nodes[0]["host"], int(nodes[0]["port"]), int(params.get("db", 0)), params.get("password"),
                     config.project, *layouts, cache_size=cache_size)
        reader._check_keys(config)
        return reader

    @staticmethod
    def _layout(join_key: str, views: list) -> EntityLayout:
        from feast.infra.online_stores.helpers import _mmh3

        names, fields, value_types = [], [], []
        for view in views:
            for feature in view.features:
                names.append(feature.name)
                fields.append(_mmh3(f"{view.name}:{feature.name}"))
                value_types.append(feature.dtype.to_value_type())
        return EntityLayout(join_key, tuple(names), b"".join(map(_bulk, fields)), tuple(value_types))

    def _check_keys(self, config) -> None:
        for layout in (self.member, self.job):
            check_keys_are_feasts("serving.redis_rows", layout.join_key,
                                  lambda entity, layout=layout: layout.key(entity, self.project), config, self.project)

    # ---- connections --------------------------------------------------------------------------------
    async def _connect(self) -> _Connection:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        connection = _Connection(reader, writer)
        setup = []
        if self.password:
            setup.append(b"*2\r\n$4\r\nAUTH\r\n" + _bulk(str(self.password).encode()))
        if self.db:
            setup.append(b"*2\r\n$6\r\nSELECT\r\n" + _bulk(str(self.db).encode()))
        try:
            if setup:
                await connection.roundtrip(b"".join(setup), len(setup))
        except BaseException:
            connection.close()
            raise
        return connection

    async def _acquire(self) -> _Connection:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # connections belong to the loop that opened them
            for connection in self._idle:
                connection.close()
            self._idle, self._loop = [], loop
        return self._idle.pop() if self._idle else await self._connect()

    # ---- reads --------------------------------------------------------------------------------------
    def _command(self, kind: str, layout: EntityLayout, entity: int) -> bytes:
        command = self._commands.get((kind, entity))
        if command is None:
            command = (b"*%d\r\n$5\r\nHMGET\r\n" % (2 + len(layout.names)) + _bulk(layout.key(entity, self.project))
                       + layout.fields_part)
            if len(self._commands) >= 2 * self.cache_size:
                self._commands.clear()
            self._commands[(kind, entity)] = command
        return command

    async def read(self, member_id: int | None, item_ids: list[int]) -> tuple[dict | None, list[dict]]:
        """(member row or None when no member was asked, one row per item id), in one round trip."""
        commands = [self._command("job", self.job, item) for item in item_ids]
        if member_id is not None:
            commands.insert(0, self._command("member", self.member, member_id))
        connection = await self._acquire()
        try:
            replies = await connection.roundtrip(b"".join(commands), len(commands))
        except BaseException:  # cancelled at the deadline or failed: the connection is out of step, drop it
            connection.close()
            raise
        if len(self._idle) < MAX_IDLE_CONNECTIONS:
            self._idle.append(connection)
        else:  # a burst opened more than stay useful
            connection.close()
        member = None
        if member_id is not None:
            member = self._rows["member"].row(member_id, replies.pop(0))
        jobs = self._rows["job"]
        return member, [jobs.row(item, raw) for item, raw in zip(item_ids, replies)]
