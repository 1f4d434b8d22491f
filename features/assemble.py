"""Model inputs from feature-view rows: the one function the training-set builder and the service share.

Input: one row per (member, candidate job) with the columns of the member, job and affinity views as
Feast returns them (offline `get_historical_features` or online `get_online_features`), possibly null
for entities the store has never seen (cold start). Output columns, by role (spec.json):

- categorical   m_<attr>, j_<attr>            strings, null -> "__unknown__"
- multi_valued  m_<attr>, j_<attr>            lists of strings, null -> []
- dense (float32, finite; null -> 0):
    every numeric member/job feature (counts, smoothed rates, recency, age, popularity, numeric attributes)
    m_known, j_known                          1 when the store had a row for the entity
    x_affinity_<A>    member's affinity for the candidate's value of job attribute A:
                      a_<A>_rates[index of j_<A> in a_<A>_values], or m_rate_28d when absent
    x_affinity_<A>_mean / _max               for a multi-valued A (skills): over the candidate's values
    x_<attr>_match    1 when member and job share the categorical value (industry, seniority, region)
    x_<attr>_overlap  |member values & job values| / |job values| for a shared multi-valued attribute
- embeddings    meta_embedding (list<float32>) when present
Ids, label, weight, ts and context columns pass through untouched.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

UNKNOWN = "__unknown__"
MEMBER_PREFIX, JOB_PREFIX, AFFINITY_PREFIX = "m_", "j_", "a_"
PASSTHROUGH = ("event_id", "member_id", "item_id", "ts", "event_timestamp", "label", "weight", "position")
EMBEDDINGS = ("meta_embedding",)
# Personalisation outputs the service combines itself; they are not ranker inputs.
NOT_INPUTS = ("member_re_mean", "member_re_variance", "job_re_mean", "job_re_variance", "created_ts")


def _is_list(value: Any) -> bool:
    return isinstance(value, (list, tuple, np.ndarray))


def _first_value(series: pd.Series) -> Any:
    for value in series:
        if value is not None and value is not pd.NA and not (isinstance(value, float) and math.isnan(value)):
            return value
    return None


def infer_roles(frame: pd.DataFrame) -> dict[str, list[str]]:
    """Categorical / multi-valued / numeric member and job columns, from the values themselves."""
    roles: dict[str, list[str]] = {"categorical": [], "multi_valued": [], "numeric": []}
    for column in frame.columns:
        if not column.startswith((MEMBER_PREFIX, JOB_PREFIX)):
            continue
        if pd.api.types.is_numeric_dtype(frame[column]) and not pd.api.types.is_bool_dtype(frame[column]):
            roles["numeric"].append(column)
            continue
        sample = _first_value(frame[column])
        if _is_list(sample):
            roles["multi_valued"].append(column)
        elif isinstance(sample, str):
            roles["categorical"].append(column)
        elif isinstance(sample, (int, float, np.number)):
            roles["numeric"].append(column)
    return roles


_LIST_OR_NONE = {list, tuple, np.ndarray, type(None)}


def is_list_type(arrow_type: pa.DataType) -> bool:
    return pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type)


def _arrow_lists(column: pd.Series) -> pa.Array | None:
    """A column's lists as Arrow when pandas holds them as Arrow (pd.ArrowDtype of a list type), else None."""
    dtype = column.dtype
    if not (isinstance(dtype, pd.ArrowDtype) and is_list_type(dtype.pyarrow_dtype)):
        return None
    lists = pa.array(column.array)  # through its __arrow_array__: what it holds (one copy only if chunked)
    return lists.combine_chunks() if isinstance(lists, pa.ChunkedArray) else lists


def _element_type_fits(element: pa.DataType, value_type: pa.DataType) -> bool:
    """Whether Arrow elements of type `element` read as `value_type` as Python's would: strings as strings,
    numbers as floats, nulls as anything; never a number as a string or a string as a number."""
    if pa.types.is_null(element):
        return True
    if pa.types.is_string(value_type):
        return pa.types.is_string(element) or pa.types.is_large_string(element)
    return pa.types.is_floating(element) or pa.types.is_integer(element)


def _lists(column: pd.Series, value_type: pa.DataType, name: str,
           cache: dict | None = None) -> tuple[np.ndarray, pa.Array]:
    """A column of lists as (length of each row's list, every element in row order). A cell that is not a
    list (None, NaN, a string) counts as an empty list; an element that is not of `value_type` is an error
    naming the column. An Arrow-backed column (the training set's rows) is read as it is, with no Python
    object per row. `cache`: conversions already made by this assembly, by column name (a job's bag is read
    by its affinity and by its overlap)."""
    if cache is not None and name in cache:
        return cache[name]
    arrow = _arrow_lists(column)
    try:
        if arrow is not None:
            if not _element_type_fits(arrow.type.value_type, value_type):
                raise pa.ArrowTypeError(f"elements are {arrow.type.value_type}")
            lists = arrow.cast(pa.list_(value_type))
        else:
            cells = column.to_numpy()
            if not set(map(type, cells)) <= _LIST_OR_NONE:  # the usual column converts as it is, in one pass
                cells = [cell if _is_list(cell) else None for cell in cells]
            lists = pa.array(cells, type=pa.list_(value_type))
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as error:
        raise ValueError(f"column {name}: expected lists of {value_type} ({error})") from None
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy().astype(np.int64)
    if cache is not None:
        cache[name] = lengths, lists.flatten()
        return cache[name]
    return lengths, lists.flatten()


def _codes(*arrays: pa.Array) -> tuple[list[np.ndarray], int]:
    """The strings of several arrays as integer codes of one dictionary (a null is a value of its own, as
    None is a key of a Python dict or set), and the dictionary's size."""
    encoded = pa.concat_arrays(list(arrays)).dictionary_encode(null_encoding="encode")
    codes = encoded.indices.to_numpy().astype(np.int64)
    bounds = np.cumsum([0, *map(len, arrays)])
    return [codes[a:b] for a, b in zip(bounds[:-1], bounds[1:])], max(len(encoded.dictionary), 1)


def _position_in_row(lengths: np.ndarray) -> np.ndarray:
    """For the elements of rows of these lengths, laid end to end: each one's index within its row."""
    return np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)


def _member_rates(values: pd.Series, rates: pd.Series, attribute: str) -> tuple[np.ndarray, pa.Array, np.ndarray]:
    """The member side of an affinity, its (name, rate) pairs in row order: (row of each pair, its name, its
    rate). Each row's two lists are zipped: the shorter one bounds its pairs."""
    value_lengths, names = _lists(values, pa.string(), f"{AFFINITY_PREFIX}{attribute}_values")
    rate_lengths, flat_rates = _lists(rates, pa.float64(), f"{AFFINITY_PREFIX}{attribute}_rates")
    pairs = np.minimum(value_lengths, rate_lengths)
    rows = np.repeat(np.arange(len(pairs)), value_lengths)
    kept = _position_in_row(value_lengths) < pairs[rows]
    rate_rows = np.repeat(np.arange(len(pairs)), rate_lengths)
    rate_of_pair = flat_rates.to_numpy(zero_copy_only=False)[_position_in_row(rate_lengths) < pairs[rate_rows]]
    if kept.all():
        return rows, names, rate_of_pair
    return rows[kept], names.filter(pa.array(kept)), rate_of_pair


def _lookup(member_rows, member_codes, member_rates, keep: str, rows, codes, n_codes: int):
    """For each (row, code) asked: whether that row's pairs have the name, and its rate. With a name twice
    in one row, `keep` says which rate counts: "first" (a scan that stops at the first match) or "last" (a
    dict built from the pairs)."""
    keys = member_rows * n_codes + member_codes
    order = np.argsort(keys, kind="stable")  # row-major already: only each row's names get sorted
    known = keys[order]
    wanted = rows * n_codes + codes
    if not len(known):
        return np.zeros(len(wanted), bool), np.zeros(len(wanted))
    if keep == "first":
        at = np.minimum(np.searchsorted(known, wanted, side="left"), len(known) - 1)
    else:
        at = np.maximum(np.searchsorted(known, wanted, side="right") - 1, 0)
    found = known[at] == wanted
    return found, np.where(found, member_rates[order[at]], 0.0)


def _affinity_columns(frame: pd.DataFrame, fallback: np.ndarray, multi_valued: set[str],
                      cache: dict | None = None) -> dict[str, np.ndarray]:
    """x_affinity_<A> (a job categorical): the member's rate for the job's value, the first pair of that name;
    x_affinity_<A>_mean / _max (a job bag): over the job's values, each the member's rate (the last pair of
    that name) or the fallback, as np.mean / np.max of that row's list. The fallback (m_rate_28d) wherever
    the member has no such value, no list, or the job no value. Vectorised over rows: the same numbers as
    a loop over rows that looks each value up (tests/features/test_assemble.py holds that loop)."""
    # Whether the job attribute is a bag comes from its declared role, never from the values: on a day
    # where no job has features yet every value is null, and the output columns must not change shape.
    out: dict[str, np.ndarray] = {}
    n = len(frame)
    for column in frame.columns:
        if not (column.startswith(AFFINITY_PREFIX) and column.endswith("_values")):
            continue
        attribute = column[len(AFFINITY_PREFIX):-len("_values")]
        job_column = f"{JOB_PREFIX}{attribute}"
        if job_column not in frame.columns:
            continue
        is_bag = job_column in multi_valued
        member_rows, names, member_rates = _member_rates(
            frame[column], frame[f"{AFFINITY_PREFIX}{attribute}_rates"], attribute)
        if is_bag:
            wanted_lengths, wanted = _lists(frame[job_column], pa.string(), job_column, cache)
        else:
            wanted_lengths, candidates = np.ones(n, np.int64), frame[job_column].to_numpy()
            wanted = pa.array([v if isinstance(v, str) else None for v in candidates], type=pa.string())
            # None equals a None name, as in a scan with ==; NaN or any other non-string equals no name.
            matchable = np.fromiter((v is None or isinstance(v, str) for v in candidates), bool, n)
        (member_codes, wanted_codes), n_codes = _codes(names, wanted)
        wanted_rows = np.repeat(np.arange(n), wanted_lengths)
        found, rate = _lookup(member_rows, member_codes, member_rates, "last" if is_bag else "first",
                              wanted_rows, wanted_codes, n_codes)
        if not is_bag:
            out[f"x_affinity_{attribute}"] = np.where(found & matchable, rate, fallback).astype(np.float32)
            continue
        values = np.where(found, rate, fallback[wanted_rows].astype(np.float64))
        means, maxima = fallback.astype(np.float32), fallback.astype(np.float32)
        starts = np.cumsum(wanted_lengths) - wanted_lengths
        for length in np.unique(wanted_lengths[wanted_lengths > 0]):
            rows = np.flatnonzero(wanted_lengths == length)
            block = values[starts[rows, None] + np.arange(length)]  # rows x length, each row's list in order
            means[rows], maxima[rows] = block.mean(axis=1), block.max(axis=1)
        out[f"x_affinity_{attribute}_mean"], out[f"x_affinity_{attribute}_max"] = means, maxima
    return out


def _match_columns(frame: pd.DataFrame, roles: dict[str, list[str]], cache: dict | None = None) -> dict[str, np.ndarray]:
    """x_<attr>_match: member and job share a known categorical value; x_<attr>_overlap: the share of the
    job's list (its length, duplicates counted) that is the member's distinct values it holds, i.e.
    len(set(member) & set(job)) / len(job), 0 for an empty job list."""
    out: dict[str, np.ndarray] = {}
    for column in roles["categorical"]:
        if column.startswith(MEMBER_PREFIX) and f"{JOB_PREFIX}{column[2:]}" in roles["categorical"]:
            member, job = frame[column].to_numpy(), frame[f"{JOB_PREFIX}{column[2:]}"].to_numpy()
            out[f"x_{column[2:]}_match"] = ((member == job) & (member != UNKNOWN)).astype(np.float32)
    for column in roles["multi_valued"]:
        if column.startswith(MEMBER_PREFIX) and f"{JOB_PREFIX}{column[2:]}" in roles["multi_valued"]:
            member_lengths, member = _lists(frame[column], pa.string(), column, cache)
            job_column = f"{JOB_PREFIX}{column[2:]}"
            job_lengths, job = _lists(frame[job_column], pa.string(), job_column, cache)
            (member_codes, job_codes), n_codes = _codes(member, job)
            rows = np.arange(len(frame))
            member_keys = np.sort(np.repeat(rows, member_lengths) * n_codes + member_codes)
            job_keys = np.sort(np.repeat(rows, job_lengths) * n_codes + job_codes)
            job_keys = job_keys[np.r_[True, job_keys[1:] != job_keys[:-1]]] if len(job_keys) else job_keys
            at = np.minimum(np.searchsorted(member_keys, job_keys), max(len(member_keys) - 1, 0))
            held = member_keys[at] == job_keys if len(member_keys) else np.zeros(len(job_keys), bool)
            shared = np.bincount(job_keys[held] // n_codes, minlength=len(frame))
            overlap = np.divide(shared, job_lengths, out=np.zeros(len(frame)), where=job_lengths > 0)
            out[f"x_{column[2:]}_overlap"] = overlap.astype(np.float32)
    return out


def _passthrough(column: pd.Series):
    """A column as it passes through: a time zone-aware one in nanoseconds without a detour through an array
    of Timestamp objects (which is what it read back as before: to_numpy() made one per row)."""
    if isinstance(column.dtype, pd.DatetimeTZDtype):
        return column.dt.as_unit("ns").array
    return column.to_numpy()


def assemble_rows(frame: pd.DataFrame, spec: dict | None = None,
                  roles: dict[str, list[str]] | None = None) -> pd.DataFrame:
    """Feature-view rows -> model inputs (module docstring). With `spec` (spec.json), columns follow it
    exactly (missing ones filled as for an unknown entity), so online rows match the training layout.
    `roles` (categorical / multi_valued / numeric column names, e.g. from the views' declared types)
    replaces inference from values, which cannot type a column that is null in every row."""
    roles = {k: list(v) for k, v in roles.items()} if roles is not None else infer_roles(frame)
    if spec is not None:
        roles["categorical"], roles["multi_valued"] = list(spec["categorical"]), list(spec["multi_valued"])
    out: dict[str, Any] = {c: _passthrough(frame[c]) for c in PASSTHROUGH if c in frame.columns}
    categorical = {}
    for column in roles["categorical"]:
        raw = frame[column] if column in frame.columns else pd.Series([None] * len(frame), index=frame.index)
        categorical[column] = raw.where(raw.notna(), UNKNOWN).astype(str).to_numpy()
    multi = {}
    for column in roles["multi_valued"]:
        raw = frame[column] if column in frame.columns else pd.Series([None] * len(frame), index=frame.index)
        arrow = _arrow_lists(raw)
        if arrow is not None:  # the training set's rows: the lists stay Arrow, a null becomes an empty list
            arrow = pc.fill_null(arrow, pa.scalar([], arrow.type))
            multi[column] = pd.Series(pd.arrays.ArrowExtensionArray(arrow), index=frame.index)
            continue
        lists = np.empty(len(frame), dtype=object)  # np.array() would make equal-length lists 2-D
        lists[:] = [list(v) if _is_list(v) else [] for v in raw]
        multi[column] = lists
    filled = pd.DataFrame({**categorical, **multi}, index=frame.index)
    dense: dict[str, np.ndarray] = {}
    for column in roles["numeric"]:
        if column not in frame.columns:
            continue
        values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)
        dense[column] = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)
    for prefix, key in ((MEMBER_PREFIX, "member"), (JOB_PREFIX, "job")):
        probe = next((c for c in roles["numeric"] if c.startswith(prefix)), None)
        known = frame[probe].notna().to_numpy() if probe is not None else np.zeros(len(frame), bool)
        dense[f"{prefix}known"] = known.astype(np.float32)
    fallback = dense.get("m_rate_28d", np.zeros(len(frame), np.float32))
    converted: dict = {}  # a bag column's lists as Arrow, converted once for its affinity and its overlap
    dense.update(_affinity_columns(frame, fallback, set(roles["multi_valued"]), converted))
    dense.update(_match_columns(filled, roles, converted))
    if spec is not None:
        dense = {c: dense.get(c, np.zeros(len(frame), np.float32)) for c in spec["dense"]}
    result = pd.DataFrame({**out, **categorical, **multi, **dense}, index=frame.index)
    for column in EMBEDDINGS:
        if column in frame.columns and frame[column].notna().any():
            result[column] = [np.asarray(v, dtype=np.float32) if _is_list(v) else None for v in frame[column]]
    return result.reset_index(drop=True)


def input_spec(assembled: pd.DataFrame) -> dict:
    """spec.json for an assembled frame (docs/contracts.md, "Training set")."""
    categorical = [c for c in assembled.columns if c.startswith((MEMBER_PREFIX, JOB_PREFIX))
                   and assembled[c].dtype == object and isinstance(_first_value(assembled[c]), str)]
    multi = [c for c in assembled.columns if c.startswith((MEMBER_PREFIX, JOB_PREFIX)) and c not in categorical
             and (assembled[c].dtype == object or _arrow_lists(assembled[c]) is not None)]
    dense = [c for c in assembled.columns if assembled[c].dtype == np.float32 and c not in PASSTHROUGH]
    embeddings = {c: int(len(_first_value(assembled[c]))) for c in EMBEDDINGS if c in assembled.columns}
    return {"label": "label", "weight": "weight", "member": "member_id", "item": "item_id",
            "categorical": categorical, "multi_valued": multi, "dense": dense, "embeddings": embeddings}
