"""A synthetic job marketplace with known ground truth: who sees which job, and who applies.

Every impression (member m shown job j at position p) is an apply with probability sigmoid(logit):

    logit = b0 + g_ind [ind_m = ind_j] + g_sen [sen_m = sen_j] + g_reg [reg_m = reg_j] + g_skill |S_m ∩ S_j|
            - a log(p)                       position bias
            + w_m(t) . phi(j)                member random effect over JOB attributes (drifts daily)
            + w_j . phi(m)                   job random effect over MEMBER attributes
            + u_m . v_j                      latent member x job affinity (dimension 4)

    phi(x) = [1, onehot(industry_x), onehot(seniority_x)]        (basis names: intercept, industry=<v>, seniority=<v>)
    w_m(t) = w_m(t-1) + N(0, drift^2 I)                           slow preference drift

This is the GLMix / GAME model family (global fixed effect + per-member and per-item random effects,
Lambda Learner, arXiv 2010.05154) plus what it cannot see (the latent affinity), so each model's recovery
of the truth can be measured. Members and jobs arrive every day (cold start); a job is open for
`job_lifetime_days` days. Member activity and job popularity are heavy-tailed (log-normal).

Generation streams day by day (one numpy Generator per day from SeedSequence([seed, day index]));
only the member/job state is kept, never past events, so memory stays flat as days grow. Output is
byte-identical for the same settings: raw/ (docs/contracts.md, "Raw zone") and truth/ ("Ground truth").
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from features import contract
from features.contract import EntitySchema, EventSchema, RawSchema
from rankflow.config import GeneratorSettings
from rankflow.logs import get_logger
from rankflow.paths import (DataPaths, atomic_directory, atomic_write_bytes, dt_partition, partition_days,
                            recover_replacement, replace_all_or_nothing, staging_directory)

log = get_logger(__name__)

INDUSTRIES = ("software", "finance", "healthcare", "education", "manufacturing", "retail", "media", "energy")
SENIORITIES = ("entry", "mid", "senior", "executive")
REGIONS = ("north_america", "latin_america", "europe", "africa", "middle_east", "asia_pacific")
SKILLS = (
    "python", "java", "sql", "spark", "machine_learning", "statistics", "cloud", "kubernetes", "javascript",
    "react", "accounting", "auditing", "risk", "trading", "excel", "nursing", "pharmacology", "patient_care",
    "clinical_research", "teaching", "curriculum_design", "tutoring", "lean", "cad", "quality_control",
    "supply_chain", "logistics", "merchandising", "sales", "customer_service", "marketing", "copywriting",
    "video_editing", "design", "project_management", "negotiation", "leadership", "electrical", "safety",
    "renewables",
)
MEMBER_BASIS_OF = "job"   # the member random effect is a function of the job's attributes, and vice versa
BASIS = ("intercept",) + tuple(f"industry={v}" for v in INDUSTRIES) + tuple(f"seniority={v}" for v in SENIORITIES)

MICROS_PER_DAY = 86_400_000_000
_EPOCH = date(1970, 1, 1)

RAW_SCHEMA = RawSchema(
    members=EntitySchema(id=contract.MEMBER_ID, timestamp=contract.SIGNUP_TS,
                         categorical=("industry", "seniority", "region"), numeric=("years_experience",),
                         multi_valued={"skills": "|"}),
    items=EntitySchema(id=contract.ITEM_ID, timestamp=contract.POSTED_TS,
                       categorical=("company", "industry", "seniority", "region"), numeric=("salary",),
                       multi_valued={"skills": "|"}),
    events=EventSchema(id=contract.EVENT_ID, member=contract.MEMBER_ID, item=contract.ITEM_ID,
                       timestamp=contract.TS, label=contract.LABEL, weight=contract.WEIGHT, context=("position",)),
)


@dataclass(frozen=True)
class MarketplaceTruth:
    """The known model behind the labels (saved in truth/params.json so models can be scored against it)."""

    intercept: float = -3.45             # sets the overall apply rate (~7% with the effects below)
    industry_match: float = 0.8
    seniority_match: float = 0.5
    region_match: float = 0.4
    skill_overlap: float = 0.25         # per shared skill
    position_bias: float = 0.6          # a in -a log(position)
    member_weight_std: float = 1.0      # per coordinate of w_m: strong enough to recover with ~50 events
    job_weight_std: float = 0.5         # per coordinate of w_j
    latent_dim: int = 4
    latent_std: float = 0.5             # per coordinate of u_m and v_j
    drift_std: float = 0.02             # daily random-walk step of each coordinate of w_m
    job_lifetime_days: int = 30
    member_arrival_rate: float = 0.01   # new members per day, as a fraction of the starting population
    activity_sigma: float = 1.3         # log-normal spread of member activity (heavy tail)
    popularity_sigma: float = 0.8       # log-normal spread of job popularity
    positions: int = 10                 # list length: positions 1..positions


@dataclass
class _Population:
    """Attributes and true parameters of every member (or job) that exists so far, indexed by id - 1."""

    ids: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    arrived_us: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    industry: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    seniority: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    region: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    skills: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint64))   # bit mask over SKILLS
    numeric: np.ndarray = field(default_factory=lambda: np.empty(0, np.float64))  # years_experience / salary
    company: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))    # jobs only
    weight: np.ndarray = field(default_factory=lambda: np.empty(0, np.float64))   # activity / popularity
    effects: np.ndarray = field(default_factory=lambda: np.empty((0, len(BASIS)), np.float64))
    latent: np.ndarray = field(default_factory=lambda: np.empty((0, 0), np.float64))

    def extend(self, other: "_Population") -> None:
        for name in self.__dataclass_fields__:
            mine, theirs = getattr(self, name), getattr(other, name)
            setattr(self, name, np.concatenate([mine, theirs]) if len(mine) else theirs)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class _World:
    """Fixed structure drawn once from the seed: category mixes, skill profiles, companies."""

    industry_p: np.ndarray
    seniority_p: np.ndarray
    region_p: np.ndarray
    skill_logits: np.ndarray     # (industries, skills): which skills each industry favours
    company_industry: np.ndarray
    company_p: np.ndarray


def _day_rng(seed: int, index: int) -> np.random.Generator:
    """Index 0 is the world and the starting population; day d (0-based) uses index d + 1."""
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


def _micros(day: date) -> int:
    return (day - _EPOCH).days * MICROS_PER_DAY


def _make_world(rng: np.random.Generator, jobs: int) -> _World:
    companies = max(1, jobs // 5)
    rank = np.arange(1, companies + 1, dtype=np.float64)
    company_p = rank ** -0.8          # a few big employers, a long tail of small ones
    return _World(
        industry_p=rng.dirichlet(np.full(len(INDUSTRIES), 6.0)),
        seniority_p=np.array([0.35, 0.35, 0.22, 0.08]),
        region_p=rng.dirichlet(np.full(len(REGIONS), 6.0)),
        skill_logits=rng.normal(0.0, 2.0, size=(len(INDUSTRIES), len(SKILLS))),
        company_industry=rng.choice(len(INDUSTRIES), size=companies),
        company_p=company_p / company_p.sum(),
    )


def _draw_skills(rng: np.random.Generator, world: _World, industry: np.ndarray) -> np.ndarray:
    """3-6 distinct skills each, favouring the industry's profile (Gumbel top-k), as bit masks."""
    n = len(industry)
    keys = world.skill_logits[industry] + rng.gumbel(size=(n, len(SKILLS)))
    order = np.argsort(-keys, axis=1, kind="stable").astype(np.uint64)
    count = rng.integers(3, 7, size=n)
    chosen = np.arange(len(SKILLS))[None, :] < count[:, None]
    bits = np.where(chosen, np.uint64(1) << order, np.uint64(0))
    return np.bitwise_or.reduce(bits, axis=1)


def _arrivals(rng: np.random.Generator, world: _World, truth: MarketplaceTruth, first_id: int, n: int,
              start_us: int, span_us: int, industry: np.ndarray, effect_std: float, spread: float,
              numeric: np.ndarray, seniority: np.ndarray, company: np.ndarray) -> _Population:
    """n members or jobs arriving uniformly in [start_us, start_us + span_us), ids from first_id."""
    return _Population(
        ids=np.arange(first_id, first_id + n, dtype=np.int64),
        arrived_us=np.sort(start_us + rng.integers(0, span_us, size=n)),
        industry=industry,
        seniority=seniority,
        region=rng.choice(len(REGIONS), size=n, p=world.region_p),
        skills=_draw_skills(rng, world, industry),
        numeric=numeric,
        company=company,
        weight=rng.lognormal(0.0, spread, size=n),
        effects=rng.normal(0.0, effect_std, size=(n, len(BASIS))),
        latent=rng.normal(0.0, truth.latent_std, size=(n, truth.latent_dim)),
    )


def _new_members(rng: np.random.Generator, world: _World, truth: MarketplaceTruth, first_id: int, n: int,
                 start_us: int, span_us: int) -> _Population:
    industry = rng.choice(len(INDUSTRIES), size=n, p=world.industry_p)
    seniority = rng.choice(len(SENIORITIES), size=n, p=world.seniority_p)
    years_experience = np.round(np.array([1.0, 4.0, 9.0, 16.0])[seniority] + rng.gamma(2.0, 1.0, size=n), 1)
    return _arrivals(rng, world, truth, first_id, n, start_us, span_us, industry, truth.member_weight_std,
                     truth.activity_sigma, years_experience, seniority, np.full(n, -1, dtype=np.int64))


def _new_jobs(rng: np.random.Generator, world: _World, truth: MarketplaceTruth, first_id: int, n: int,
              start_us: int, span_us: int) -> _Population:
    company = rng.choice(len(world.company_p), size=n, p=world.company_p)
    industry = world.company_industry[company]
    seniority = rng.choice(len(SENIORITIES), size=n, p=world.seniority_p)
    salary = np.exp(np.log(45_000.0) + 0.45 * seniority + 0.1 * industry / len(INDUSTRIES)
                    + rng.normal(0.0, 0.2, size=n))
    return _arrivals(rng, world, truth, first_id, n, start_us, span_us, industry, truth.job_weight_std,
                     truth.popularity_sigma, np.round(salary, -2), seniority, company)


def _skill_lists(masks: np.ndarray) -> pa.Array:
    """Bit masks -> list<string> in SKILLS order (vectorised: no loop over rows)."""
    member_of = ((masks[:, None] >> np.arange(len(SKILLS), dtype=np.uint64)[None, :]) & np.uint64(1)).astype(bool)
    _, columns = np.nonzero(member_of)
    offsets = np.concatenate([[0], np.cumsum(member_of.sum(axis=1))]).astype(np.int32)
    values = pa.array(np.asarray(SKILLS, dtype=object)[columns], type=pa.string())
    return pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), values)


def _names(vocabulary: tuple[str, ...], codes: np.ndarray) -> pa.Array:
    return pa.array(np.asarray(vocabulary, dtype=object)[codes], type=pa.string())


def _members_table(population: _Population, rows: slice) -> pa.Table:
    return pa.Table.from_arrays([
        pa.array(population.ids[rows], type=contract.ID_TYPE),
        pa.array(population.arrived_us[rows], type=contract.TIMESTAMP_TYPE),
        _names(INDUSTRIES, population.industry[rows]),
        _names(SENIORITIES, population.seniority[rows]),
        _names(REGIONS, population.region[rows]),
        pa.array(population.numeric[rows], type=contract.NUMERIC_TYPE),
        _skill_lists(population.skills[rows]),
    ], schema=contract.members_arrow_schema(RAW_SCHEMA.members))


def _items_table(population: _Population, rows: slice) -> pa.Table:
    company_names = np.char.add("company-", np.char.zfill(population.company[rows].astype(str), 4))
    return pa.Table.from_arrays([
        pa.array(population.ids[rows], type=contract.ID_TYPE),
        pa.array(population.arrived_us[rows], type=contract.TIMESTAMP_TYPE),
        pa.array(company_names.astype(object), type=pa.string()),
        _names(INDUSTRIES, population.industry[rows]),
        _names(SENIORITIES, population.seniority[rows]),
        _names(REGIONS, population.region[rows]),
        pa.array(population.numeric[rows], type=contract.NUMERIC_TYPE),
        _skill_lists(population.skills[rows]),
    ], schema=contract.items_arrow_schema(RAW_SCHEMA.items))


def _weights_table(id_name: str, ids: np.ndarray, effects: np.ndarray) -> pa.Table:
    columns = [pa.array(ids, type=contract.ID_TYPE)] + [pa.array(effects[:, k]) for k in range(len(BASIS))]
    return pa.Table.from_arrays(columns, names=[id_name, *BASIS])


def _basis_dot(effects: np.ndarray, rows: np.ndarray, industry: np.ndarray, seniority: np.ndarray) -> np.ndarray:
    """effects[rows] . phi(x) with phi(x) = [1, onehot(industry), onehot(seniority)], without building phi."""
    return (effects[rows, 0] + effects[rows, 1 + industry]
            + effects[rows, 1 + len(INDUSTRIES) + seniority])


def _true_logit(truth: MarketplaceTruth, members: _Population, jobs: _Population, m: np.ndarray,
                j: np.ndarray, position: np.ndarray) -> np.ndarray:
    shared_skills = np.bitwise_count(members.skills[m] & jobs.skills[j]).astype(np.float64)
    return (truth.intercept
            + truth.industry_match * (members.industry[m] == jobs.industry[j])
            + truth.seniority_match * (members.seniority[m] == jobs.seniority[j])
            + truth.region_match * (members.region[m] == jobs.region[j])
            + truth.skill_overlap * shared_skills
            - truth.position_bias * np.log(position)
            + _basis_dot(members.effects, m, jobs.industry[j], jobs.seniority[j])
            + _basis_dot(jobs.effects, j, members.industry[m], members.seniority[m])
            + np.einsum("nk,nk->n", members.latent[m], jobs.latent[j]))


def _sample_by_weight(rng: np.random.Generator, weights: np.ndarray, size: int) -> np.ndarray:
    """Indices drawn with probability proportional to weights (inverse CDF; vectorised)."""
    cdf = np.cumsum(weights)
    return np.minimum(np.searchsorted(cdf, rng.random(size) * cdf[-1], side="right"), len(weights) - 1)


def _impressions(rng: np.random.Generator, truth: MarketplaceTruth, members: _Population, jobs: _Population,
                 day: date, count: int) -> tuple[pa.Table, pa.Table]:
    """One day's impressions and their true probabilities, sorted by (ts, event_id)."""
    day_start = _micros(day)
    day_end = day_start + MICROS_PER_DAY
    open_from = day_start - (truth.job_lifetime_days - 1) * MICROS_PER_DAY
    open_jobs = np.flatnonzero((jobs.arrived_us >= open_from) & (jobs.arrived_us < day_end))
    m = _sample_by_weight(rng, members.weight, count)
    j = open_jobs[_sample_by_weight(rng, jobs.weight[open_jobs], count)]
    position = rng.integers(1, truth.positions + 1, size=count)
    # An impression can only happen once both the member and the job exist.
    earliest = np.maximum(np.maximum(members.arrived_us[m], jobs.arrived_us[j]), day_start)
    ts = earliest + (rng.random(count) * (day_end - earliest)).astype(np.int64)
    true_prob = 1.0 / (1.0 + np.exp(-_true_logit(truth, members, jobs, m, j, position)))
    label = (rng.random(count) < true_prob).astype(np.int8)

    member_id, item_id = members.ids[m], jobs.ids[j]
    event_id = contract.derive_event_id(member_id, item_id, ts)
    order = np.lexsort((event_id, ts))
    # Same (member, job, microsecond) twice, or a 63-bit hash collision: keep the first (astronomically rare).
    _, first = np.unique(event_id[order], return_index=True)
    order = order[np.sort(first)]

    events = pa.Table.from_arrays([
        pa.array(event_id[order], type=contract.ID_TYPE),
        pa.array(member_id[order], type=contract.ID_TYPE),
        pa.array(item_id[order], type=contract.ID_TYPE),
        pa.array(ts[order], type=contract.TIMESTAMP_TYPE),
        pa.array(label[order], type=contract.LABEL_TYPE),
        pa.array(np.ones(len(order), dtype=np.float32), type=contract.WEIGHT_TYPE),
        pa.array(position[order].astype(np.int64), type=pa.int64()),
    ], schema=contract.events_arrow_schema({"position": pa.int64()}))
    truth_events = pa.Table.from_arrays(
        [pa.array(event_id[order], type=contract.ID_TYPE), pa.array(true_prob[order], type=pa.float64())],
        names=[contract.EVENT_ID, "true_prob"])
    return events, truth_events


class _Writer:
    """Writes partitions atomically and remembers them, so stale ones from an earlier run can be removed."""

    def __init__(self, paths: DataPaths) -> None:
        self.paths = paths
        self.written: dict[Path, set[str]] = {}

    def write(self, table_dir: Path, day: date, table: pa.Table) -> None:
        with atomic_directory(table_dir / dt_partition(day)) as staging:
            contract.write_partition(staging, table)
        self.written.setdefault(table_dir, set()).add(dt_partition(day))

    def remove_stale(self) -> list[str]:
        removed = []
        for table_dir, keep in self.written.items():
            for child in sorted(table_dir.iterdir()):
                if child.is_dir() and child.name.startswith("dt=") and child.name not in keep:
                    shutil.rmtree(child)
                    removed.append(str(child.relative_to(self.paths.root)))
        return removed


def _write_by_arrival(writer: _Writer, table_dir: Path, population: _Population, start: int,
                      to_table: Callable[[_Population, slice], pa.Table]) -> None:
    """Write rows start.. of a population into one partition per arrival day."""
    arrival_day = population.arrived_us[start:] // MICROS_PER_DAY
    for offset in np.unique(arrival_day):
        rows = start + np.flatnonzero(arrival_day == offset)
        writer.write(table_dir, _EPOCH + timedelta(days=int(offset)), to_table(population, slice(rows[0], rows[-1] + 1)))


def params_document(settings: GeneratorSettings, truth: MarketplaceTruth) -> dict[str, Any]:
    """What truth/params.json holds: the flags, the seed, the true model and the basis names."""
    generator = asdict(settings)
    generator["start_date"] = settings.start_date.isoformat()
    return {
        "generator": generator,
        "seed": settings.seed,
        "truth": asdict(truth),
        "member_basis": {"over": "job attributes", "names": list(BASIS)},
        "job_basis": {"over": "member attributes", "names": list(BASIS)},
        "vocabulary": {"industry": list(INDUSTRIES), "seniority": list(SENIORITIES), "region": list(REGIONS),
                       "skills": list(SKILLS)},
    }


def generate(settings: GeneratorSettings, paths: DataPaths,
             progress: Callable[[date, int, int, int], None] | None = None,
             truth: MarketplaceTruth = MarketplaceTruth()) -> dict[str, Any]:
    """Generate the marketplace into `paths` (raw/ and truth/), one day at a time; return a summary.

    `progress(day, days_done, days_total, events_that_day)` is called after each day is written.
    Replaces any raw/ and truth/ partitions an earlier run left in the same data directory.
    """
    started = time.perf_counter()
    if settings.members < 1 or settings.jobs < 1 or settings.days < 1 or settings.impressions_per_day < 1:
        raise ValueError(f"members, jobs, days and impressions_per_day must all be >= 1; got {settings}")
    writer = _Writer(paths)
    raw_members, raw_items, raw_events = (paths.raw_table(t) for t in contract.TABLES)
    truth_events, member_weights, job_weights = (paths.truth / t for t in ("events", "member_weights", "job_weights"))

    # The starting population arrived over the `lifetime` days before the first day, so jobs expire gradually.
    rng = _day_rng(settings.seed, 0)
    world = _make_world(rng, settings.jobs)
    history_us = truth.job_lifetime_days * MICROS_PER_DAY
    first_us = _micros(settings.start_date) - history_us
    members = _new_members(rng, world, truth, 1, settings.members, first_us, history_us)
    jobs = _new_jobs(rng, world, truth, 1, settings.jobs, first_us, history_us)
    _write_by_arrival(writer, raw_members, members, 0, _members_table)
    _write_by_arrival(writer, raw_items, jobs, 0, _items_table)

    new_members_per_day = max(1, round(settings.members * truth.member_arrival_rate))
    new_jobs_per_day = max(1, round(settings.jobs / truth.job_lifetime_days))
    total_events = total_applies = 0
    for index in range(settings.days):
        day = settings.start_date + timedelta(days=index)
        rng = _day_rng(settings.seed, index + 1)
        members.effects += rng.normal(0.0, truth.drift_std, size=members.effects.shape)
        known_members, known_jobs = len(members), len(jobs)
        members.extend(_new_members(rng, world, truth, known_members + 1, new_members_per_day,
                                    _micros(day), MICROS_PER_DAY))
        jobs.extend(_new_jobs(rng, world, truth, known_jobs + 1, new_jobs_per_day, _micros(day), MICROS_PER_DAY))
        _write_by_arrival(writer, raw_members, members, known_members, _members_table)
        _write_by_arrival(writer, raw_items, jobs, known_jobs, _items_table)

        events, event_truth = _impressions(rng, truth, members, jobs, day, settings.impressions_per_day)
        writer.write(raw_events, day, events)
        writer.write(truth_events, day, event_truth)
        writer.write(member_weights, day, _weights_table(contract.MEMBER_ID, members.ids, members.effects))
        open_jobs = jobs.arrived_us >= _micros(day) - (truth.job_lifetime_days - 1) * MICROS_PER_DAY
        writer.write(job_weights, day, _weights_table(contract.ITEM_ID, jobs.ids[open_jobs], jobs.effects[open_jobs]))
        total_events += events.num_rows
        total_applies += int(np.asarray(events.column(contract.LABEL)).sum())
        if progress is not None:
            progress(day, index + 1, settings.days, events.num_rows)

    RAW_SCHEMA.write(paths)
    atomic_write_bytes(paths.truth / "params.json",
                       json.dumps(params_document(settings, truth), indent=2, sort_keys=True).encode())
    removed = writer.remove_stale()
    if removed:
        log.info("removed %d partitions left by an earlier run: %s", len(removed), removed[:5])
    last_day = settings.start_date + timedelta(days=settings.days - 1)
    return {
        "data_dir": str(paths.root),
        "start": settings.start_date.isoformat(),
        "end": last_day.isoformat(),
        "days": settings.days,
        "members": len(members),
        "items": len(jobs),
        "events": total_events,
        "apply_rate": round(total_applies / max(total_events, 1), 4),
        "seconds": round(time.perf_counter() - started, 2),
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


# The zones a data set consists of: what generate writes, then everything computed from the raw zone
# (rankflow.paths.DataPaths). run/ (pid files and logs of running services) and rankflow.yaml are not data.
GENERATED_ZONES = ("raw", "truth")
DERIVED_ZONES = ("features", "feast", "models", "reports", "quarantine")


class DataDirInUse(ValueError):
    """The data directory already holds a data set, and replacing it was not asked for (`--force`)."""


def zones_holding_data(paths: DataPaths) -> list[str]:
    """The data-set zones of a data directory that hold at least one file, in pipeline order."""
    return [zone for zone in GENERATED_ZONES + DERIVED_ZONES
            if (paths.root / zone).is_dir() and any(p.is_file() for p in (paths.root / zone).rglob("*"))]


def check_data_dir(paths: DataPaths, replace: bool) -> list[str]:
    """The zones holding data (see `generate_data_set`); raises DataDirInUse when there are any and not `replace`.

    First rolls back (or completes) a replacement that a killed generate or ingest left half done, so the answer
    describes a whole data set.
    """
    recover_replacement(paths.root)
    holding = zones_holding_data(paths)
    if holding and not replace:
        raise DataDirInUse(f"{paths.root} already holds a data set: {_describe(paths, holding)}. Use another "
                           "--data-dir, or --force to replace it (this deletes raw/, truth/ and everything derived "
                           f"from the old raw data: {', '.join(z + '/' for z in DERIVED_ZONES)})")
    return holding


def _describe(paths: DataPaths, zones: list[str]) -> str:
    days = partition_days(paths.raw_table("events"))
    raw = f"raw/ ({len(days)} event day(s), {days[0]} .. {days[-1]})" if days else "raw/"
    return ", ".join(raw if zone == "raw" else f"{zone}/" for zone in zones)


def generate_data_set(settings: GeneratorSettings, paths: DataPaths, replace: bool = False,
                      progress: Callable[[date, int, int, int], None] | None = None,
                      truth: MarketplaceTruth = MarketplaceTruth()) -> dict[str, Any]:
    """`rankflow generate`: a new synthetic data set in the data directory, all or nothing.

    Refuses (`DataDirInUse`) when the directory already holds a data set (any file in raw/, truth/ or a zone
    derived from raw data), unless `replace`: then the old raw/ and truth/ are replaced and the derived zones
    (DERIVED_ZONES: features, Feast registry and online store, models, reports, quarantine) are deleted, since
    they describe data that is no longer there. The new data set is generated into a hidden folder of the data
    directory first (`.data-set.tmp-<pid>-*`), so a failure while generating leaves the old one whole; then the
    zones are swapped with `replace_all_or_nothing`: an error while swapping is undone, and a generate killed
    while swapping is rolled back (or completed) by the next generate or ingest into the data directory, which
    also deletes the hidden folder a killed generate left. The summary's "cleared" lists the zones deleted.
    """
    holding = check_data_dir(paths, replace)
    staging = DataPaths(staging_directory(paths.root / "data-set"))
    try:
        summary = generate(settings, staging, progress=progress, truth=truth)
        with replace_all_or_nothing(paths.root) as replacement:
            for zone in GENERATED_ZONES:
                os.replace(staging.root / zone, replacement.stage(paths.root / zone))
            for zone in DERIVED_ZONES:
                if os.path.lexists(paths.root / zone):
                    replacement.remove(paths.root / zone)
    finally:
        shutil.rmtree(staging.root, ignore_errors=True)
    cleared = [zone for zone in holding if zone in DERIVED_ZONES]
    if holding:
        log.info("replaced raw/ and truth/ in %s; deleted the derived zones %s", paths.root, cleared)
    return {**summary, "data_dir": str(paths.root), "cleared": cleared}

