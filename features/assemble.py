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
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
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


def _affinity_lookup(values: Any, rates: Any, wanted: Any, fallback: float) -> float:
    if _is_list(values) and len(values):
        for name, rate in zip(values, rates):
            if name == wanted:
                return float(rate)
    return fallback


def _affinity_columns(frame: pd.DataFrame, fallback: np.ndarray, multi_valued: set[str]) -> dict[str, np.ndarray]:
    # Whether the job attribute is a bag comes from its declared role, never from the values: on a day
    # where no job has features yet every value is null, and the output columns must not change shape.
    out: dict[str, np.ndarray] = {}
    for column in frame.columns:
        if not (column.startswith(AFFINITY_PREFIX) and column.endswith("_values")):
            continue
        attribute = column[len(AFFINITY_PREFIX):-len("_values")]
        job_column = f"{JOB_PREFIX}{attribute}"
        if job_column not in frame.columns:
            continue
        values, rates = frame[column].to_numpy(), frame[f"{AFFINITY_PREFIX}{attribute}_rates"].to_numpy()
        candidates = frame[job_column].to_numpy()
        if job_column in multi_valued:
            means, maxima = np.empty(len(frame), np.float32), np.empty(len(frame), np.float32)
            for i, (vals, rts, wanted) in enumerate(zip(values, rates, candidates)):
                table = dict(zip(vals, rts)) if _is_list(vals) else {}
                found = [float(table.get(v, fallback[i])) for v in wanted] if _is_list(wanted) and len(wanted) else []
                means[i] = np.mean(found) if found else fallback[i]
                maxima[i] = np.max(found) if found else fallback[i]
            out[f"x_affinity_{attribute}_mean"], out[f"x_affinity_{attribute}_max"] = means, maxima
        else:
            out[f"x_affinity_{attribute}"] = np.array(
                [_affinity_lookup(v, r, w, fallback[i]) for i, (v, r, w) in enumerate(zip(values, rates, candidates))],
                dtype=np.float32)
    return out


def _match_columns(frame: pd.DataFrame, roles: dict[str, list[str]]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for column in roles["categorical"]:
        if column.startswith(MEMBER_PREFIX) and f"{JOB_PREFIX}{column[2:]}" in roles["categorical"]:
            member, job = frame[column].to_numpy(), frame[f"{JOB_PREFIX}{column[2:]}"].to_numpy()
            out[f"x_{column[2:]}_match"] = ((member == job) & (member != UNKNOWN)).astype(np.float32)
    for column in roles["multi_valued"]:
        if column.startswith(MEMBER_PREFIX) and f"{JOB_PREFIX}{column[2:]}" in roles["multi_valued"]:
            overlap = [len(set(m) & set(j)) / len(j) if len(j) else 0.0
                       for m, j in zip(frame[column], frame[f"{JOB_PREFIX}{column[2:]}"])]
            out[f"x_{column[2:]}_overlap"] = np.asarray(overlap, dtype=np.float32)
    return out


def assemble_rows(frame: pd.DataFrame, spec: dict | None = None,
                  roles: dict[str, list[str]] | None = None) -> pd.DataFrame:
    """Feature-view rows -> model inputs (module docstring). With `spec` (spec.json), columns follow it
    exactly (missing ones filled as for an unknown entity), so online rows match the training layout.
    `roles` (categorical / multi_valued / numeric column names, e.g. from the views' declared types)
    replaces inference from values, which cannot type a column that is null in every row."""
    roles = {k: list(v) for k, v in roles.items()} if roles is not None else infer_roles(frame)
    if spec is not None:
        roles["categorical"], roles["multi_valued"] = list(spec["categorical"]), list(spec["multi_valued"])
    out: dict[str, Any] = {c: frame[c].to_numpy() for c in PASSTHROUGH if c in frame.columns}
    categorical = {}
    for column in roles["categorical"]:
        raw = frame[column] if column in frame.columns else pd.Series([None] * len(frame), index=frame.index)
        categorical[column] = raw.where(raw.notna(), UNKNOWN).astype(str).to_numpy()
    multi = {}
    for column in roles["multi_valued"]:
        raw = frame[column] if column in frame.columns else pd.Series([None] * len(frame), index=frame.index)
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
    dense.update(_affinity_columns(frame, fallback, set(roles["multi_valued"])))
    dense.update(_match_columns(filled, roles))
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
    multi = [c for c in assembled.columns if c.startswith((MEMBER_PREFIX, JOB_PREFIX))
             and assembled[c].dtype == object and c not in categorical]
    dense = [c for c in assembled.columns if assembled[c].dtype == np.float32 and c not in PASSTHROUGH]
    embeddings = {c: int(len(_first_value(assembled[c]))) for c in EMBEDDINGS if c in assembled.columns}
    return {"label": "label", "weight": "weight", "member": "member_id", "item": "item_id",
            "categorical": categorical, "multi_valued": multi, "dense": dense, "embeddings": embeddings}
