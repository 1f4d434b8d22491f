"""Training/serving skew check: the features the service reads equal the offline feature tables of a day.

Offline side: for every view the service reads, the newest row per entity among the partitions
features/<view>/dt<=D (Spark tables write every known entity daily; personalisation writes only the
entities it updated, so an older row can still be the current one) -- exactly what the online store must
hold after day D was materialised. Online side: `serving.online.OnlineFeatures.read`, the service's own
read path (or a running service's POST /features with `url`). Requests are D's impressions grouped by
member (up to 50 jobs each). Every feature value must match (float32 values compared as float32).
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import numpy as np
import pandas as pd

from rankflow.config import Settings
from serving.online import JOB_KEY, MEMBER_KEY, OnlineFeatures

MAX_CANDIDATES_PER_REQUEST = 50


class OfflineFeatures:
    """Feature rows of a set of views as of the end of `day`, indexed by entity id."""

    def __init__(self, settings: Settings, day: date, views: dict[str, tuple[str, list[str]]]):
        self.tables: dict[str, pd.DataFrame] = {}
        for view, (key, columns) in views.items():
            folder = settings.paths.feature_table(view)
            parts = [p for p in sorted(folder.glob("dt=*")) if date.fromisoformat(p.name[3:]) <= day]
            if not parts:
                self.tables[view] = pd.DataFrame(columns=[key, *columns]).set_index(key)
                continue
            frame = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
            order = [c for c in ("event_timestamp", "created_ts") if c in frame.columns]
            frame = frame.sort_values(order, kind="stable").drop_duplicates(key, keep="last")
            self.tables[view] = frame.set_index(key)[[c for c in columns if c in frame.columns]]

    def row(self, view: str, entity: int) -> dict[str, Any] | None:
        table = self.tables[view]
        return table.loc[entity].to_dict() if entity in table.index else None


def _same(online: Any, offline: Any) -> bool:
    if online is None or (isinstance(online, float) and math.isnan(online)):
        return offline is None or (isinstance(offline, float) and math.isnan(offline))
    if isinstance(online, (list, tuple, np.ndarray)):
        if not isinstance(offline, (list, tuple, np.ndarray)) or len(online) != len(offline):
            return False
        return all(_same(a, b) for a, b in zip(online, offline))
    if isinstance(online, str) or isinstance(offline, str):
        return online == offline
    if offline is None:
        return False
    return bool(np.float32(online) == np.float32(offline))


@dataclass
class SkewReport:
    day: date
    requests: int = 0
    values_compared: int = 0
    mismatches: list[str] = field(default_factory=list)
    degraded: int = 0

    @property
    def ok(self) -> bool:
        return not self.mismatches and self.degraded == 0 and self.values_compared > 0

    def summary(self) -> str:
        head = (f"skew check {self.day}: {self.requests} requests, {self.values_compared} feature values compared, "
                f"{len(self.mismatches)} mismatches, {self.degraded} degraded reads -> {'OK' if self.ok else 'FAILED'}")
        return "\n".join([head, *self.mismatches[:20]])


def sample_requests(settings: Settings, day: date, sample: int, seed: int = 0) -> list[tuple[int, list[int]]]:
    """Up to `sample` (member, impressed jobs) requests from day D's raw events."""
    from features.contract import read_raw

    events = read_raw(settings.paths, "events", day=day)
    grouped = events.groupby("member_id")["item_id"].apply(lambda s: list(dict.fromkeys(int(i) for i in s)))
    members = grouped.index.to_numpy()
    chosen = np.random.default_rng(seed).permutation(len(members))[:sample]
    return [(int(members[i]), grouped.iloc[i][:MAX_CANDIDATES_PER_REQUEST]) for i in sorted(chosen)]


def compare(report: SkewReport, offline: OfflineFeatures, reader: OnlineFeatures, member_id: int,
            candidates: list[int], member: dict | None, jobs: list[dict]) -> None:
    """Add one request's comparisons (online `member` / `jobs` as read) to the report."""
    report.requests += 1
    expected_member: dict[str, Any] = {}
    for view in reader.member_views:
        expected_member.update(offline.row(view, member_id) or {})
    for name in reader.member_columns:
        got = None if member is None else member.get(name)
        report.values_compared += 1
        if not _same(got, expected_member.get(name)):
            report.mismatches.append(f"member {member_id} {name}: served {got!r}, offline {expected_member.get(name)!r}")
    for item, row in zip(candidates, jobs):
        expected: dict[str, Any] = {}
        for view in reader.job_views:
            expected.update(offline.row(view, item) or {})
        for name in reader.job_columns:
            report.values_compared += 1
            if not _same(row.get(name), expected.get(name)):
                report.mismatches.append(f"job {item} {name}: served {row.get(name)!r}, offline {expected.get(name)!r}")


def skew_check(settings: Settings, day: date, sample: int = 50, url: str | None = None) -> SkewReport:
    """Compare the served features of `sample` requests of `day` with the offline tables."""
    from features.store import feature_store

    reader = OnlineFeatures(feature_store(settings), deadline_ms=10_000, cache_seconds=0)
    views = {v: (MEMBER_KEY, reader.member_columns) for v in reader.member_views}
    views |= {v: (JOB_KEY, reader.job_columns) for v in reader.job_views}
    offline = OfflineFeatures(settings, day, views)
    report = SkewReport(day)
    requests = sample_requests(settings, day, sample)
    if url is not None:
        import httpx

        with httpx.Client(base_url=url, timeout=30) as client:
            for member_id, candidates in requests:
                response = client.post("/features", json={"member_id": member_id, "candidates": candidates})
                response.raise_for_status()
                body = response.json()
                report.degraded += int(body["degraded"])
                compare(report, offline, reader, member_id, candidates, body["member"], body["jobs"])
        return report

    async def read_all() -> None:
        for member_id, candidates in requests:
            read = await reader.read(member_id, candidates)
            report.degraded += int(read.degraded)
            jobs = read.jobs.astype(object).where(read.jobs.notna(), None).to_dict("records")
            compare(report, offline, reader, member_id, candidates, read.member, jobs)

    asyncio.run(read_all())
    return report
