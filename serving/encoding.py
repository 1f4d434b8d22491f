"""A request's model inputs and random-effect offsets straight from feature rows, in numpy, cached per job.

The reference is the offline path of serving.scoring: `candidate_frame` -> `model_inputs`
(features.assemble.assemble_rows) -> training.ranker.data.encode_table, and `random_effect_offset`.
It costs ~20 ms of pandas and Arrow per request of 100 candidates. This module computes the same tensors
(bit for bit: tests/serving/test_encoding.py compares them on real and edge-case rows) by splitting the
work the way a request repeats it:

- per job (cached while the job's row object is unchanged, see serving.online.FeatureRead): hashed ids of
  the item and its categorical and bag attributes, its numeric values, the codes of its attribute values
  (for affinities, matches and overlaps), its GLMix design row phi(j) and random-effect mean gamma_j;
- per member (cached likewise): the same for the member, plus its affinity tables as arrays over the codes;
- per request: gathers of the job parts by slot, and the member x job terms as array operations
  (x_affinity_*, x_*_match, x_*_overlap, beta_m . phi(j) + gamma_j . phi(m)).

The rules are assemble_rows' (see its docstring), including its corners: m_known / j_known follow the
first numeric member / job column that has a value in the request; an affinity table is first-match for a
single-valued attribute and last-match for a bag; an unknown member has no affinity and no m_ columns.
Non-finite dense values and meta embeddings of the wrong width raise the same ValueError as encode_table.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from features.assemble import UNKNOWN
from serving.scoring import (JOB_RE, JOB_RE_VARIANCE, MEMBER_RE, MEMBER_RE_VARIANCE, META_EMBEDDING, ServingModels,
                             thompson_draw)

SOURCE = "serving request"


def _is_list(value: Any) -> bool:
    return isinstance(value, (list, tuple, np.ndarray))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _filled(value: Any) -> str:
    """A categorical value as assemble_rows writes it: nulls -> UNKNOWN, anything else str()."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return UNKNOWN
    return str(value)


@dataclass
class EncodedRequest:
    """Ranker inputs for one request (training.ranker.data.Batch.inputs) and its random-effect offsets."""

    sparse: np.ndarray              # [B, F] int64
    dense: np.ndarray               # [B, D] float32 (spec dense columns, then vector columns)
    bag_values: list[np.ndarray]    # per bag feature: [N_i] int64
    bag_offsets: list[np.ndarray]   # per bag feature: [B] int64
    offset: np.ndarray | None       # [B] float64 beta_m . phi(j) + gamma_j . phi(m); None without GLMix state

    def __len__(self) -> int:
        return int(self.sparse.shape[0])

    def tensors(self) -> tuple:
        """(sparse, dense, bag_values, bag_offsets) as torch tensors sharing the arrays' memory.

        Arrays that arrived read-only (the scorer's out-of-band pickle buffers) are copied first: torch
        tensors are writable, and torch warns on every read-only array it wraps."""
        import torch

        def tensor(array: np.ndarray):
            return torch.from_numpy(array if array.flags.writeable else array.copy())

        return (tensor(self.sparse), tensor(self.dense), [tensor(v) for v in self.bag_values],
                [tensor(o) for o in self.bag_offsets])

    def to_dict(self) -> dict[str, Any]:
        """Plain arrays (what crosses the process boundary to the scorer, pickled with out-of-band buffers)."""
        return {"sparse": self.sparse, "dense": self.dense, "bag_values": self.bag_values,
                "bag_offsets": self.bag_offsets, "offset": self.offset}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EncodedRequest":
        return cls(data["sparse"], data["dense"], list(data["bag_values"]), list(data["bag_offsets"]), data["offset"])


def concat_requests(requests: list[EncodedRequest]) -> EncodedRequest:
    """The rows of several requests as one (bags re-offset); requests without offsets get NaN offsets."""
    if len(requests) == 1:
        return requests[0]
    bag_values, bag_offsets = [], []
    for bag in range(len(requests[0].bag_values)):
        shift, offsets = 0, []
        for request in requests:
            offsets.append(request.bag_offsets[bag] + shift)
            shift += len(request.bag_values[bag])
        bag_values.append(np.concatenate([r.bag_values[bag] for r in requests]))
        bag_offsets.append(np.concatenate(offsets))
    offset = None
    if any(r.offset is not None for r in requests):
        offset = np.concatenate([r.offset if r.offset is not None else np.full(len(r), np.nan) for r in requests])
    return EncodedRequest(np.concatenate([r.sparse for r in requests]), np.concatenate([r.dense for r in requests]),
                          bag_values, bag_offsets, offset)


def score_requests(model: Any, requests: list[EncodedRequest]) -> list[np.ndarray]:
    """Calibrated scores of several requests in one forward pass (adaptive batching), one array per request.

    score = sigmoid(logit(p_rank) + offset) where a request has random-effect offsets, p_rank otherwise
    (serving.scoring.combine); the same numbers as scoring each request alone.
    """
    from serving.scoring import combine, forward_probabilities

    rows = concat_requests(requests)
    if len(rows) == 0:
        return [np.zeros(0, np.float64) for _ in requests]
    probabilities = forward_probabilities(model, rows.tensors())
    if rows.offset is None:
        scores = probabilities
    else:
        with_effects = combine(probabilities, np.nan_to_num(rows.offset))
        scores = np.where(np.isnan(rows.offset), probabilities, with_effects)
    bounds = np.cumsum([0, *(len(r) for r in requests)])
    return [scores[start:stop] for start, stop in zip(bounds[:-1], bounds[1:])]


class _Codes:
    """Interned attribute values: equal values, equal small ints (compared and gathered as arrays)."""

    def __init__(self) -> None:
        self.codes: dict[Any, int] = {}

    def __call__(self, value: Any) -> int:
        code = self.codes.get(value)
        if code is None:
            code = self.codes[value] = len(self.codes)
        return code

    def __len__(self) -> int:
        return len(self.codes)


class RequestEncoder:
    """EncodedRequest for (member row, job rows) under one set of serving models; caches per job and member."""

    def __init__(self, models: ServingModels, member_columns: list[str], job_columns: list[str],
                 cache_size: int = 100_000, member_cache_size: int = 20_000):
        from training.ranker.data import hash_integers, hash_strings

        self._hash_integers, self._hash_strings = hash_integers, hash_strings
        self.models, self.spec, self.config = models, models.spec, models.ranker.config
        self.member_columns, self.job_columns = list(member_columns), list(job_columns)
        self.cache_size, self.member_cache_size = cache_size, member_cache_size
        member_set, job_set = set(self.member_columns), set(self.job_columns)
        categorical, multi = list(self.spec["categorical"]), list(self.spec["multi_valued"])
        config = self.config

        # sparse features: ("member_id" | "item_id" | "member" categorical | "job" categorical, column, buckets)
        self.sparse_plan = []
        for name, buckets in zip(config.sparse_features, config.sparse_buckets):
            kind = ("member_id" if name == self.spec.get("member", "member_id") else
                    "item_id" if name == self.spec.get("item", "item_id") else
                    "member" if name in member_set else "job" if name in job_set else "absent")
            self.sparse_plan.append((kind, name, int(buckets)))
        self.bag_plan = [("member" if name in member_set else "job" if name in job_set else "absent", name, int(b))
                         for name, b in zip(config.bag_features, config.bag_buckets)]
        self.job_numeric = [c for c in self.job_columns if c.startswith("j_")]
        # affinities: member columns a_<A>_values with a job column j_<A> (assemble_rows._affinity_columns)
        self.affinities = []
        for column in self.member_columns:
            if column.startswith("a_") and column.endswith("_values"):
                attribute = column[2:-len("_values")]
                if f"j_{attribute}" in job_set:
                    self.affinities.append((attribute, f"j_{attribute}" in multi))
        self.matches = [c[2:] for c in categorical if c.startswith("m_") and f"j_{c[2:]}" in categorical]
        self.overlaps = [c[2:] for c in multi if c.startswith("m_") and f"j_{c[2:]}" in multi]
        produced = {"m_known", "j_known", *(f"x_{x}_match" for x in self.matches),
                    *(f"x_{x}_overlap" for x in self.overlaps)}
        for attribute, is_bag in self.affinities:
            produced |= ({f"x_affinity_{attribute}_mean", f"x_affinity_{attribute}_max"} if is_bag
                         else {f"x_affinity_{attribute}"})
        self.dense_plan = []
        for name in config.dense_features:
            if name in produced:
                self.dense_plan.append(("derived", name))
            elif name.startswith("m_") and name in member_set:
                self.dense_plan.append(("member", name))
            elif name.startswith("j_") and name in job_set:
                self.dense_plan.append(("job", self.job_numeric.index(name)))
            else:
                self.dense_plan.append(("zero", name))
        self.vector_plan = [(name, int(width)) for name, width in config.vector_features]
        self._dense_width = len(self.dense_plan) + sum(width for _, width in self.vector_plan)
        self._dense_from_job = np.array([d for d, (kind, _) in enumerate(self.dense_plan) if kind == "job"], np.int64)
        self._job_dense_source = np.array([src for kind, src in self.dense_plan if kind == "job"], np.int64)
        self._dense_derived = [(d, name) for d, (kind, name) in enumerate(self.dense_plan) if kind == "derived"]
        effects = models.random_effects
        self.effects = effects
        meta = models.meta_init
        self.meta_init = meta.embedding.astype(np.float32) if meta is not None else None
        self._reset()

    # ---- caches -------------------------------------------------------------------------------------
    def _reset(self) -> None:
        self.codes = _Codes()
        self._string_ids: dict[tuple[str, int], int] = {}
        self._slots: dict[int, list[tuple[dict, int]]] = {}
        self._used = 0
        self._members: OrderedDict[int, tuple[dict | None, dict]] = OrderedDict()
        capacity = 1024
        self._item_hash = np.zeros(capacity, np.int64)
        self._job_sparse = np.zeros((capacity, sum(k == "job" for k, _, _ in self.sparse_plan)), np.int64)
        self._job_bags: list[list[np.ndarray]] = []
        self._job_bag_lengths = np.zeros((capacity, sum(k == "job" for k, _, _ in self.bag_plan)), np.int64)
        self._job_values = np.zeros((capacity, len(self.job_numeric)), np.float64)
        self._job_present = np.zeros((capacity, len(self.job_numeric)), bool)
        self._job_dense = np.zeros((capacity, len(self._job_dense_source)), np.float32)
        self._job_single = np.zeros((capacity, sum(not b for _, b in self.affinities)), np.int64)
        self._job_multi: list[list[np.ndarray]] = []
        self._job_match = np.zeros((capacity, len(self.matches)), np.int64)
        self._job_overlap: list[list[frozenset]] = []
        self._job_overlap_len = np.zeros((capacity, len(self.overlaps)), np.int64)
        if self.effects is not None:
            self._job_phi = np.zeros((capacity, self.effects.member_basis.dim), np.float64)
            self._job_re = np.zeros((capacity, len(self.effects.job_prior_mean)), np.float64)
            self._job_re_variance = np.zeros_like(self._job_re)

    def _string_id(self, value: str, buckets: int) -> int:
        key = (value, buckets)
        hashed = self._string_ids.get(key)
        if hashed is None:
            hashed = self._string_ids[key] = int(self._hash_strings([value], buckets)[0])
        return hashed

    def _bag_ids(self, value: Any, buckets: int) -> np.ndarray:
        items = list(value) if _is_list(value) else []
        # encode_table hashes a bag's strings (nulls -> 0); a bag holding no strings at all never reaches it
        return np.fromiter((0 if v is None else self._string_id(str(v), buckets) for v in items), np.int64,
                           len(items))

    def _grow(self) -> None:
        def bigger(array):
            out = np.zeros((2 * array.shape[0], *array.shape[1:]), array.dtype)
            out[:array.shape[0]] = array
            return out

        for name in ("_item_hash", "_job_sparse", "_job_bag_lengths", "_job_values", "_job_present", "_job_dense", "_job_single",
                     "_job_match", "_job_overlap_len", "_job_phi", "_job_re", "_job_re_variance"):
            if hasattr(self, name):
                setattr(self, name, bigger(getattr(self, name)))

    # ---- per job ------------------------------------------------------------------------------------
    def _slot(self, item: int, row: dict) -> int:
        """The job's slot for this row object: encoded once per (job, row object).

        Two rows are kept per job, the most recent first: its stored row and the default (empty) row a
        degraded read gives it, so that alternating between them does not re-encode the job every time.
        """
        held = self._slots.get(item)
        if held is not None:
            for n, (known, slot) in enumerate(held):
                if known is row:
                    if n:
                        held.insert(0, held.pop(n))
                    return slot
        if held is not None and len(held) >= 2:
            slot = held.pop()[1]  # the older row's slot gets the new row
        else:
            slot = self._used
            self._used += 1
            if slot >= self._item_hash.shape[0]:
                self._grow()
            self._job_bags.append([])
            self._job_multi.append([])
            self._job_overlap.append([])
            held = self._slots.setdefault(item, [])
        self._encode_job(slot, item, row)
        held.insert(0, (row, slot))
        return slot

    def _encode_job(self, slot: int, item: int, row: dict) -> None:
        column = 0
        for kind, name, buckets in self.sparse_plan:
            if kind == "item_id":
                self._item_hash[slot] = self._hash_integers(np.array([item], np.int64), buckets)[0]
            elif kind == "job":
                self._job_sparse[slot, column] = self._string_id(_filled(row.get(name)), buckets)
                column += 1
        bags = [self._bag_ids(row.get(name), buckets) for kind, name, buckets in self.bag_plan if kind == "job"]
        self._job_bags[slot] = bags
        self._job_bag_lengths[slot] = [len(b) for b in bags]
        for k, name in enumerate(self.job_numeric):
            value = row.get(name)
            present = value is not None and _is_number(value)
            self._job_present[slot, k] = present
            self._job_values[slot, k] = float(value) if present else np.nan
        # assemble_rows: pd.to_numeric -> float64 -> nan_to_num -> float32 (nulls and infinities read as 0)
        self._job_dense[slot] = np.nan_to_num(self._job_values[slot, self._job_dense_source], nan=0.0, posinf=0.0,
                                              neginf=0.0).astype(np.float32)
        single, multi = [], []
        for attribute, is_bag in self.affinities:
            wanted = row.get(f"j_{attribute}")
            if is_bag:
                multi.append(np.fromiter((self.codes(v) for v in wanted), np.int64, len(wanted))
                             if _is_list(wanted) else np.zeros(0, np.int64))
            else:
                single.append(-1 if wanted is None else self.codes(wanted))
        self._job_single[slot] = single
        self._job_multi[slot] = multi
        self._job_match[slot] = [self.codes(_filled(row.get(f"j_{x}"))) for x in self.matches]
        overlaps = []
        for x in self.overlaps:
            values = row.get(f"j_{x}")
            values = list(values) if _is_list(values) else []
            overlaps.append(frozenset(self.codes(v) for v in values))
            self._job_overlap_len[slot, len(overlaps) - 1] = len(values)
        self._job_overlap[slot] = overlaps
        if self.effects is not None:
            basis = self.effects.member_basis
            self._job_phi[slot] = basis.design({a: [row.get(f"j_{a}")] for a, _ in basis.columns}, rows=1)[0]
            self._job_re[slot] = self._re_mean(row.get(JOB_RE), self.effects.job_prior_mean)
            self._job_re_variance[slot] = self._re_mean(row.get(JOB_RE_VARIANCE), self.effects.prior_variance("job"))

    @staticmethod
    def _re_mean(value: Any, prior: np.ndarray) -> np.ndarray:
        if _is_list(value) and len(value) > 0 and len(value) == len(prior):
            return np.asarray(value, dtype=np.float64)
        return prior

    # ---- per member ---------------------------------------------------------------------------------
    def _member(self, member_id: int, row: dict | None) -> dict:
        held = self._members.get(member_id)
        if held is not None and held[0] is row:
            self._members.move_to_end(member_id)
            return held[1]
        part = self._encode_member(member_id, row)
        self._members[member_id] = (row, part)
        if len(self._members) > self.member_cache_size:
            self._members.popitem(last=False)
        return part

    def _encode_member(self, member_id: int, row: dict | None) -> dict:
        values = row or {}
        part: dict[str, Any] = {}
        sparse = {}
        for kind, name, buckets in self.sparse_plan:
            if kind == "member_id":
                sparse[name] = int(self._hash_integers(np.array([member_id], np.int64), buckets)[0])
            elif kind in ("member", "absent"):
                sparse[name] = self._string_id(_filled(values.get(name)), buckets)
        part["sparse"] = sparse
        part["bags"] = {name: self._bag_ids(values.get(name), buckets)
                        for kind, name, buckets in self.bag_plan if kind in ("member", "absent")}
        numeric = {c: float(v) for c, v in values.items() if c.startswith("m_") and _is_number(v)}
        part["numeric"] = {c: np.float32(np.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0)) for c, v in numeric.items()}
        probe = next(iter(numeric.values()), None)  # the first numeric m_ column, in frame order
        part["known"] = np.float32(probe is not None and not math.isnan(probe))
        fallback = float(part["numeric"].get("m_rate_28d", np.float32(0.0)))
        part["fallback"] = fallback
        tables = {}
        if row is not None:
            for attribute, is_bag in self.affinities:
                names, rates = row.get(f"a_{attribute}_values"), row.get(f"a_{attribute}_rates")
                table: dict[int, float] = {}
                if _is_list(names) and (is_bag or len(names)):
                    for name, rate in zip(names, rates):
                        code = self.codes(name)
                        if is_bag:
                            table[code] = float(rate)        # dict(zip(...)): the last one wins
                        else:
                            table.setdefault(code, float(rate))  # the first match wins
                tables[attribute] = table
        part["tables"] = tables
        part["match"] = [self.codes(_filled(values.get(f"m_{x}"))) for x in self.matches]
        part["overlap"] = [frozenset(self.codes(v) for v in (values.get(f"m_{x}") if _is_list(values.get(f"m_{x}")) else []))
                           for x in self.overlaps]
        vectors = []
        for name, width in self.vector_plan:
            vector = values.get(name)
            if _is_list(vector) and len(vector) > 0:
                vector = np.asarray(vector, dtype=np.float32)
            elif name == META_EMBEDDING and self.meta_init is not None:
                vector = self.meta_init
            else:
                vector = np.zeros(0, np.float32)
            if len(vector) not in (0, width):
                raise ValueError(f"{SOURCE}: vector column {name!r} row 0 has {len(vector)} values, expected {width}")
            vectors.append(vector if len(vector) else np.zeros(width, np.float32))
        # the member's dense row: its numeric columns, zeros for absent ones, its vectors at the end; the job
        # and derived columns are written over it per request
        dense_row = np.zeros(self._dense_width, np.float32)
        for d, (kind, name) in enumerate(self.dense_plan):
            if kind == "member":
                dense_row[d] = part["numeric"].get(name, np.float32(0.0))
        if vectors:
            dense_row[len(self.dense_plan):] = np.concatenate(vectors)
        part["dense"] = dense_row
        if self.effects is not None:
            basis = self.effects.job_basis
            present = row is not None
            part["phi"] = basis.design({a: [values.get(f"m_{a}") if present else None] for a, _ in basis.columns},
                                       rows=1)[0]
            part["re"] = self._re_mean(values.get(MEMBER_RE), self.effects.member_prior_mean)
            part["re_variance"] = self._re_mean(values.get(MEMBER_RE_VARIANCE), self.effects.prior_variance("member"))
        return part

    def _table_array(self, table: dict[int, float], fallback: float) -> np.ndarray:
        """Rates by code over every code seen so far, `fallback` elsewhere; index -1 (no value) too."""
        rates = np.full(len(self.codes) + 1, fallback, np.float64)
        if table:
            rates[np.fromiter(table.keys(), np.int64, len(table))] = np.fromiter(table.values(), np.float64, len(table))
        return rates

    # ---- per request --------------------------------------------------------------------------------
    def encode(self, member_id: int, member: dict | None, item_ids: list[int], job_rows: list[dict],
               rng: np.random.Generator | None = None) -> EncodedRequest:
        """The inputs and offsets of (member_id, item_ids); `member` None: unknown or unread member.

        `rng`: Thompson draws of the random effects (serving.scoring.random_effect_offset, same order)."""
        if self._used + 2 * len(item_ids) > 2 * self.cache_size:
            self._reset()  # bounded memory; never in the middle of a request (slots must stay valid)
        slots = np.fromiter((self._slot(item, row) for item, row in zip(item_ids, job_rows)), np.int64, len(item_ids))
        m = self._member(member_id, member)
        n = len(slots)

        sparse = np.empty((n, len(self.sparse_plan)), np.int64)
        job_column = 0
        for f, (kind, name, _) in enumerate(self.sparse_plan):
            if kind == "item_id":
                sparse[:, f] = self._item_hash[slots]
            elif kind == "job":
                sparse[:, f] = self._job_sparse[slots, job_column]
                job_column += 1
            else:
                sparse[:, f] = m["sparse"][name]

        bag_values, bag_offsets, job_bag = [], [], 0
        for kind, name, _ in self.bag_plan:
            if kind == "job":
                lengths = self._job_bag_lengths[slots, job_bag]
                values = [self._job_bags[s][job_bag] for s in slots.tolist()]
                bag_values.append(np.concatenate(values) if values else np.zeros(0, np.int64))
                job_bag += 1
            else:
                ids = m["bags"][name]
                lengths = np.full(n, len(ids), np.int64)
                bag_values.append(np.tile(ids, n))
            bag_offsets.append(np.cumsum(lengths) - lengths)

        derived = self._derived(m, slots)
        dense = np.empty((n, self._dense_width), np.float32)
        dense[:] = m["dense"]
        if len(self._dense_from_job):
            dense[:, self._dense_from_job] = self._job_dense[slots]
        for d, name in self._dense_derived:
            dense[:, d] = derived.get(name, 0.0)  # affinities of an unknown member: absent, read as 0
        spec_dense = dense[:, :len(self.dense_plan)]
        if not np.isfinite(spec_dense).all():  # encode_table's check: first bad column, then its first bad row
            column = int(np.flatnonzero(~np.isfinite(spec_dense).all(0))[0])
            row = int(np.flatnonzero(~np.isfinite(spec_dense[:, column]))[0])
            raise ValueError(f"{SOURCE}: dense column {self.config.dense_features[column]!r} has a non-finite value "
                             f"{spec_dense[row, column]} at row {row}")

        offset = None
        if self.effects is not None:
            beta, gamma = m["re"][None], self._job_re[slots]
            if rng is not None:
                beta = thompson_draw(beta, m["re_variance"][None], rng)
                gamma = thompson_draw(gamma, self._job_re_variance[slots], rng)
            member_term = (np.broadcast_to(beta, (n, beta.shape[1])) * self._job_phi[slots]).sum(1)
            job_term = (gamma * np.broadcast_to(m["phi"].astype(np.float64), (n, len(m["phi"])))).sum(1)
            offset = member_term + job_term
        return EncodedRequest(sparse, dense, bag_values, bag_offsets, offset)

    def _derived(self, m: dict, slots: np.ndarray) -> dict[str, np.ndarray]:
        n = len(slots)
        out: dict[str, np.ndarray] = {"m_known": np.full(n, m["known"], np.float32)}
        present = self._job_present[slots]
        with_value = np.flatnonzero(present.any(0))  # numeric columns (pandas dtype) in this request
        if len(with_value):
            probe = int(with_value[0])
            out["j_known"] = (present[:, probe] & ~np.isnan(self._job_values[slots, probe])).astype(np.float32)
        else:
            out["j_known"] = np.zeros(n, np.float32)
        fallback = m["fallback"]
        single, multi = 0, 0
        for attribute, is_bag in self.affinities:
            if attribute not in m["tables"]:  # unknown member: no affinity columns at all
                single, multi = single + (not is_bag), multi + is_bag
                continue
            rates = self._table_array(m["tables"][attribute], fallback)
            if not is_bag:
                out[f"x_affinity_{attribute}"] = rates[self._job_single[slots, single]].astype(np.float32)
                single += 1
                continue
            parts = [self._job_multi[s][multi] for s in slots.tolist()]
            counts = np.fromiter(map(len, parts), np.int64, n)
            means, maxima = np.full(n, fallback, np.float64), np.full(n, fallback, np.float64)
            found = np.flatnonzero(counts)
            if len(found):
                flat = rates[np.concatenate(parts)]
                starts = (np.cumsum(counts) - counts)[found]
                # np.add.reduce over each contiguous run: the very summation np.mean(found) does
                means[found] = np.add.reduceat(flat, starts) / counts[found]
                maxima[found] = np.maximum.reduceat(flat, starts)
            out[f"x_affinity_{attribute}_mean"] = means.astype(np.float32)
            out[f"x_affinity_{attribute}_max"] = maxima.astype(np.float32)
            multi += 1
        unknown = self.codes(UNKNOWN)
        for x, (code, column) in enumerate(zip(m["match"], self.matches)):
            matched = (self._job_match[slots, x] == code) & (code != unknown)
            out[f"x_{column}_match"] = matched.astype(np.float32)
        for x, (member_set, column) in enumerate(zip(m["overlap"], self.overlaps)):
            lengths = self._job_overlap_len[slots, x]
            shared = np.fromiter((len(member_set & self._job_overlap[s][x]) for s in slots.tolist()), np.int64, n)
            overlap = np.zeros(n, np.float64)
            np.divide(shared, lengths, out=overlap, where=lengths > 0)
            out[f"x_{column}_overlap"] = overlap.astype(np.float32)
        return out
