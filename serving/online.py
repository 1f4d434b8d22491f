"""Feature reads for a ranking request: the Feast online store, batched, under a deadline.

One request reads the member's row of every member view (member_features, member_affinities, and
glmix_member / meta_embedding once personalisation wrote them) and the candidates' rows of every job view
(job_features, glmix_job). On a plain Redis store that is one round trip (serving.redis_rows: pipelined
HMGETs in Feast's layout, decoded by Feast's converter); on the SQLite store (the default) one query per
view in one read snapshot (serving.sqlite_rows); on any other store two Feast SDK reads issued together.
Job rows are shared by every member, so they are kept in memory for `candidate_cache_seconds` (a bounded
staleness: the online store changes once a day, at materialisation); member rows are always read.

If the store fails or misses `feature_deadline_ms`, the missing part gets default features (what the
model sees for an entity it has never met: unknown categories, zero counts) and the read says why in
`degraded_reasons`; it never raises. A late read that runs in a thread (SQLite) is not abandoned: when it
ends, its job rows go into the job cache, so the next request for those jobs finds them. `cold_start` is a
member the store answered for but has no row of.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from rankflow.logs import get_logger
from serving.redis_rows import RedisRows
from serving.sqlite_rows import SqliteRows

log = get_logger(__name__)

MEMBER_KEY, JOB_KEY = "member_id", "item_id"
MEMBER_VIEWS = ("member_features", "member_affinities", "glmix_member", "meta_embedding")
JOB_VIEWS = ("job_features", "glmix_job")
MAX_LATE_READS = 2  # late SQLite reads left to finish; more are cancelled (those not yet started never run)
# The views whose rows say the entity is known (the personalisation views lag a day behind it).
PRIMARY_MEMBER_VIEW, PRIMARY_JOB_VIEW = "member_features", "job_features"


@dataclass
class FeatureRead:
    """What one request read: member row (None when unknown or unread), job rows in request order.

    `job_rows[i]` is the row of `item_ids[i]` (every job-view column, None where the store has no value);
    the same dict object comes back for a job while its stored values do not change (serving.encoding
    keys its per-job cache on that).
    """

    member: dict[str, Any] | None
    item_ids: list[int]
    job_rows: list[dict[str, Any]]
    job_columns: list[str]
    cold_start: bool
    unknown_candidates: list[int]
    degraded_reasons: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def degraded(self) -> bool:
        return bool(self.degraded_reasons)

    @property
    def jobs(self) -> pd.DataFrame:
        """`item_id` and the job-view columns, one row per candidate (what Feast's SDK would return)."""
        frame = pd.DataFrame(self.job_rows, columns=self.job_columns)
        frame.insert(0, JOB_KEY, pd.array(self.item_ids, dtype="int64").to_numpy())
        return frame


def view_version(view) -> str:
    """A short hash of a feature view's definition (its Feast spec): changes whenever the view does."""
    return hashlib.sha1(view.to_proto().spec.SerializeToString(deterministic=True)).hexdigest()[:12]


class OnlineFeatures:
    """Batched, deadline-bound reads of the member and job views from one Feast store."""

    def __init__(self, store, deadline_ms: float, cache_seconds: float = 0.0, cache_size: int = 100_000,
                 member_views: tuple[str, ...] = MEMBER_VIEWS, job_views: tuple[str, ...] = JOB_VIEWS):
        registered = {view.name: view for view in store.list_feature_views()}
        self.store = store
        self.deadline = deadline_ms / 1000.0
        self.cache_seconds, self.cache_size = cache_seconds, cache_size
        self.member_views = tuple(v for v in member_views if v in registered)
        self.job_views = tuple(v for v in job_views if v in registered)
        missing = {PRIMARY_MEMBER_VIEW, PRIMARY_JOB_VIEW} - set(registered)
        if missing:
            raise RuntimeError(f"feature store {store.repo_path}: views {sorted(missing)} are not registered "
                               f"(run `rankflow features materialize` first)")
        self.member_refs = [f"{v}:{f.name}" for v in self.member_views for f in registered[v].features]
        self.job_refs = [f"{v}:{f.name}" for v in self.job_views for f in registered[v].features]
        self.member_columns = [r.split(":", 1)[1] for r in self.member_refs]
        self.job_columns = [r.split(":", 1)[1] for r in self.job_refs]
        self._member_probe = registered[PRIMARY_MEMBER_VIEW].features[0].name
        self._job_probe = registered[PRIMARY_JOB_VIEW].features[0].name
        self.versions = {v: view_version(registered[v]) for v in (*self.member_views, *self.job_views)}
        self._cache: OrderedDict[int, tuple[float, dict]] = OrderedDict()
        self._use_async = True
        self._late: set[asyncio.Future] = set()  # late thread reads still running (at most MAX_LATE_READS)
        self._empty_job = dict.fromkeys(self.job_columns)
        views = ([registered[v] for v in self.member_views], [registered[v] for v in self.job_views])
        self.direct: RedisRows | SqliteRows | None = (RedisRows.for_store(store, *views, cache_size)
                                                       or SqliteRows.for_store(store, *views, cache_size))
        log.info("online reads of %s: %s", store.repo_path,
                 f"direct ({type(self.direct).__module__})" if self.direct else "Feast SDK")

    # ---- raw reads -----------------------------------------------------------------------------------
    async def _online(self, refs: list[str], rows: list[dict]) -> dict[str, list]:
        if self._use_async:
            try:
                response = await self.store.get_online_features_async(features=refs, entity_rows=rows)
                return response.to_dict()
            except NotImplementedError:  # e.g. the SQLite store has no async reads: a thread instead
                self._use_async = False
        response = await asyncio.to_thread(self.store.get_online_features, features=refs, entity_rows=rows)
        return response.to_dict()

    async def _read_member(self, member_id: int) -> dict[str, Any] | None:
        values = await self._online(self.member_refs, [{MEMBER_KEY: member_id}])
        row = {name: values[name][0] for name in self.member_columns}
        return row if row[self._member_probe] is not None else None

    async def _read_jobs(self, item_ids: list[int]) -> dict[int, dict]:
        values = await self._online(self.job_refs, [{JOB_KEY: i} for i in item_ids])
        return {item: {name: values[name][n] for name in self.job_columns} for n, item in enumerate(item_ids)}

    # ---- the request path -----------------------------------------------------------------------------
    def _cached(self, item_ids: list[int], now: float) -> dict[int, dict]:
        hits = {}
        for item in item_ids:
            entry = self._cache.get(item)
            if entry is not None and entry[0] > now:
                hits[item] = entry[1]
        return hits

    def _remember(self, rows: dict[int, dict], now: float) -> None:
        if self.cache_seconds <= 0:
            return
        for item, row in rows.items():
            self._cache[item] = (now + self.cache_seconds, row)
            self._cache.move_to_end(item)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    async def _read_direct(self, member_id: int, item_ids: list[int]) -> tuple[dict | None, dict[int, dict]]:
        member, rows = await self.direct.read(member_id, item_ids)
        return (member if member[self._member_probe] is not None else None), dict(zip(item_ids, rows))

    def _remember_late(self, task: asyncio.Future, now: float) -> None:
        """A read that ended after its request's deadline: its known job rows go into the cache all the same."""
        self._late.discard(task)
        if task.cancelled() or task.exception() is not None:  # exception(): retrieved, so asyncio does not warn
            return
        fetched = task.result()[1]
        self._remember({i: r for i, r in fetched.items() if r[self._job_probe] is not None}, now)

    async def read(self, member_id: int, candidates: list[int]) -> FeatureRead:
        """Member and candidate features within the deadline; defaults (flagged) for what did not arrive."""
        started = time.perf_counter()
        now = time.monotonic()
        jobs = self._cached(candidates, now) if self.cache_seconds > 0 else {}
        missing = [c for c in candidates if c not in jobs]
        if self.direct is not None:  # one read for both parts: they succeed or fail together
            both = asyncio.ensure_future(self._read_direct(member_id, missing))
            tasks = {"member": both, "jobs": both} if missing else {"member": both}
        else:
            tasks = {"member": asyncio.ensure_future(self._read_member(member_id))}
            if missing:
                tasks["jobs"] = asyncio.ensure_future(self._read_jobs(missing))
        done, pending = await asyncio.wait(set(tasks.values()), timeout=self.deadline)
        reasons = []
        for task in pending:
            if self.direct is None or self.direct.cancel_at_deadline or len(self._late) >= MAX_LATE_READS:
                task.cancel()  # a store that is behind: no backlog of reads nobody waits for
            else:  # left to finish in its thread; its outcome is collected (and its job rows kept) when it ends
                self._late.add(task)
                task.add_done_callback(lambda late, at=now: self._remember_late(late, at))
        for name, task in tasks.items():
            if task in pending:
                reasons.append(f"{name} features: no answer within {self.deadline * 1000:.0f} ms")
            elif task.exception() is not None:
                error = task.exception()
                reasons.append(f"{name} features: {type(error).__name__}: {error}"[:300])
        member_ok = tasks["member"] in done and tasks["member"].exception() is None
        member = None
        if member_ok:
            member = tasks["member"].result()[0] if self.direct is not None else tasks["member"].result()
        if "jobs" in tasks and tasks["jobs"] in done and tasks["jobs"].exception() is None:
            fetched = tasks["jobs"].result()[1] if self.direct is not None else tasks["jobs"].result()
            jobs.update(fetched)
            self._remember({i: r for i, r in fetched.items() if r[self._job_probe] is not None}, now)
        if reasons:
            log.warning("degraded feature read for member %s: %s", member_id, "; ".join(reasons))
        empty = self._empty_job
        rows = [jobs.get(c) or empty for c in candidates]
        unknown = [c for c in candidates if c in jobs and jobs[c][self._job_probe] is None]
        return FeatureRead(member=member, item_ids=list(candidates), job_rows=rows, job_columns=self.job_columns,
                           cold_start=member_ok and member is None, unknown_candidates=unknown,
                           degraded_reasons=reasons, seconds=time.perf_counter() - started)
