"""features.assemble: the vectorised affinity, match and overlap columns give the numbers of the plain
per-row loops they replaced (kept here as the reference), bit for bit, corners included."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from features.assemble import _affinity_columns, _is_list, _match_columns, assemble_rows, infer_roles, input_spec
from features.training_set import _arrow_rows

NAMES = [f"s{i}" for i in range(12)]


def reference_affinity_columns(frame: pd.DataFrame, fallback: np.ndarray, multi_valued: set[str]) -> dict:
    """The per-row loop assemble.py had before it was vectorised (36 of the 132 s that a 100x training-set day took)."""
    def lookup(values, rates, wanted, default):
        if _is_list(values) and len(values):
            for name, rate in zip(values, rates):
                if name == wanted:
                    return float(rate)
        return default

    out = {}
    for column in frame.columns:
        if not (column.startswith("a_") and column.endswith("_values")):
            continue
        attribute = column[2:-len("_values")]
        job_column = f"j_{attribute}"
        if job_column not in frame.columns:
            continue
        values, rates = frame[column].to_numpy(), frame[f"a_{attribute}_rates"].to_numpy()
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
                [lookup(v, r, w, fallback[i]) for i, (v, r, w) in enumerate(zip(values, rates, candidates))],
                dtype=np.float32)
    return out


def reference_overlap(member: pd.Series, job: pd.Series) -> np.ndarray:
    return np.asarray([len(set(m) & set(j)) / len(j) if len(j) else 0.0 for m, j in zip(member, job)],
                      dtype=np.float32)


def _bag(rng, longest: int, kind: str):
    """A list of names as Feast hands it over: a numpy object array, a list, None, NaN or empty."""
    draw = rng.random()
    if draw < 0.08:
        return None
    if draw < 0.12:
        return float("nan")
    names = list(rng.choice(NAMES, size=rng.integers(0, longest + 1)))  # repeats allowed
    if names and rng.random() < 0.03:
        names[0] = None  # a null name: a None candidate matches it (==), NaN does not
    return np.array(names, dtype=object) if kind == "array" else names


def random_frame(seed: int, rows: int, longest: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    values, rates = [], []
    for _ in range(rows):
        names = _bag(rng, longest, "array")
        values.append(names)
        if not _is_list(names):
            rates.append(names)
        else:  # now and then one rate fewer than names (zip stops at the shorter)
            size = len(names) - int(len(names) > 0 and rng.random() < 0.05)
            rates.append(rng.random(size).astype(np.float32))
    frame = pd.DataFrame({
        "a_skills_values": values, "a_skills_rates": rates,
        "a_industry_values": values, "a_industry_rates": rates,
        "j_skills": [_bag(rng, longest, "list") for _ in range(rows)],
        "j_industry": [None if draw < 0.1 else float("nan") if draw < 0.15 else str(rng.choice(NAMES))
                       for draw in rng.random(rows)],
        "m_skills": [[] if rng.random() < 0.1 else list(rng.choice(NAMES, size=rng.integers(0, 6)))
                     for _ in range(rows)],
    })
    frame["j_skills_filled"] = [list(v) if _is_list(v) else [] for v in frame["j_skills"]]
    fallback = rng.random(rows).astype(np.float32)
    return frame, fallback


@pytest.mark.parametrize("seed,rows,longest", [(0, 1, 3), (1, 300, 3), (2, 2000, 40), (3, 500, 0)])
def test_affinity_columns_equal_the_per_row_loop_bit_for_bit(seed, rows, longest):
    """Bags of 0..40 names (np.mean sums 8 or more values pairwise: the vectorised mean must too), repeated
    names (a dict keeps the last rate, a scan the first), one rate short, None / NaN / empty cells."""
    frame, fallback = random_frame(seed, rows, longest)
    expected = reference_affinity_columns(frame, fallback, {"j_skills"})
    got = _affinity_columns(frame, fallback, {"j_skills"})
    assert sorted(got) == sorted(expected) == ["x_affinity_industry", "x_affinity_skills_max",
                                               "x_affinity_skills_mean"]
    for name in expected:
        assert got[name].dtype == np.float32, name
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


@pytest.mark.parametrize("seed", [0, 1])
def test_overlap_equals_the_set_intersection_per_row(seed):
    frame, _ = random_frame(seed, 1500, 8)
    filled = pd.DataFrame({"m_skills": frame["m_skills"], "j_skills": frame["j_skills_filled"]})
    got = _match_columns(filled, {"categorical": [], "multi_valued": ["m_skills", "j_skills"]})
    np.testing.assert_array_equal(got["x_skills_overlap"], reference_overlap(filled["m_skills"],
                                                                             filled["j_skills"]))


def test_a_day_with_no_affinity_or_job_rows_falls_back_for_every_row():
    """Day 1: no member has affinities and no job has features; every affinity is the fallback."""
    frame = pd.DataFrame({"a_skills_values": [None] * 3, "a_skills_rates": [None] * 3, "j_skills": [None] * 3,
                          "m_rate_28d": [0.25, None, 0.5]})
    out = assemble_rows(frame, roles={"categorical": [], "multi_valued": ["j_skills"], "numeric": ["m_rate_28d"]})
    np.testing.assert_array_equal(out["x_affinity_skills_mean"], np.float32([0.25, 0.0, 0.5]))
    np.testing.assert_array_equal(out["x_affinity_skills_max"], np.float32([0.25, 0.0, 0.5]))


def test_a_list_column_holding_a_string_cell_counts_it_as_no_list_and_a_number_is_an_error_naming_the_column():
    frame = pd.DataFrame({"a_skills_values": [np.array(["a"], dtype=object), "x|y", None],
                          "a_skills_rates": [np.float32([0.5]), np.float32([0.1, 0.2, 0.3]), None],
                          "j_skills": [["a"], ["x", "|"], ["a"]]})
    fallback = np.float32([0.0, 0.25, 0.75])
    got = _affinity_columns(frame, fallback, {"j_skills"})
    expected = reference_affinity_columns(frame, fallback, {"j_skills"})
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    np.testing.assert_array_equal(got["x_affinity_skills_mean"], np.float32([0.5, 0.25, 0.75]))
    with pytest.raises(ValueError, match="column a_skills_values: expected lists of string"):
        _affinity_columns(frame.assign(a_skills_values=[[1], [2], [3]]), fallback, {"j_skills"})


def _as_arrow(column: pd.Series, value_type: pa.DataType) -> pd.Series:
    """A list column as the training set's rows hold it: Arrow-backed (pd.ArrowDtype), a non-list cell null."""
    lists = pa.array([list(v) if _is_list(v) else None for v in column], type=pa.list_(value_type))
    return pd.Series(pd.arrays.ArrowExtensionArray(lists), index=column.index)


@pytest.mark.parametrize("seed,rows,longest", [(5, 1, 2), (6, 1200, 12)])
def test_arrow_backed_list_columns_assemble_to_the_same_rows_as_python_lists(seed, rows, longest):
    """The training set hands assembly its bags and affinity lists Arrow-backed; the service hands Python
    lists. The same cells give the same model inputs, spec and Arrow table either way."""
    frame, fallback = random_frame(seed, rows, longest)
    frame = frame.drop(columns="j_skills_filled").assign(m_rate_28d=fallback)
    for column in ("a_skills_values", "a_industry_values", "j_skills", "m_skills"):  # NaN cells: no list
        frame[column] = [list(v) if _is_list(v) else None for v in frame[column]]
    for column in ("a_skills_rates", "a_industry_rates"):
        frame[column] = [v if _is_list(v) else None for v in frame[column]]
    arrow = frame.assign(**{c: _as_arrow(frame[c], pa.string()) for c in
                            ("a_skills_values", "a_industry_values", "j_skills", "m_skills")},
                         **{c: _as_arrow(frame[c], pa.float32()) for c in ("a_skills_rates", "a_industry_rates")})
    assert isinstance(arrow["j_skills"].dtype, pd.ArrowDtype)
    roles = {"categorical": ["j_industry"], "multi_valued": ["j_skills", "m_skills"], "numeric": ["m_rate_28d"]}
    python_out, arrow_out = assemble_rows(frame, roles=roles), assemble_rows(arrow, roles=roles)
    spec = input_spec(python_out)
    assert input_spec(arrow_out) == spec and spec["multi_valued"] == ["j_skills", "m_skills"]
    assert _arrow_rows(arrow_out, spec).equals(_arrow_rows(python_out, spec))
    assert [list(v) for v in arrow_out["j_skills"]] == [list(v) for v in python_out["j_skills"]]
    assert isinstance(arrow_out["j_skills"].dtype, pd.ArrowDtype)  # left Arrow-backed, to be written as it is


def test_arrow_backed_lists_of_the_wrong_element_type_are_an_error_naming_the_column_and_a_null_first_row_is_no_value():
    frame = pd.DataFrame({"a_skills_values": _as_arrow(pd.Series([["a"], ["a"], None]), pa.string()),
                          "a_skills_rates": _as_arrow(pd.Series([[0.5], [1], None]), pa.int64()),  # ints read as floats
                          "j_skills": _as_arrow(pd.Series([None, ["a"], ["b", "c"]]), pa.string())})
    fallback = np.float32([0.0, 0.25, 0.75])
    got = _affinity_columns(frame, fallback, {"j_skills"})
    np.testing.assert_array_equal(got["x_affinity_skills_mean"], np.float32([0.0, 1.0, 0.75]))
    assert infer_roles(frame)["multi_valued"] == ["j_skills"]  # its first row is null (pd.NA): the next one types it
    with pytest.raises(ValueError, match="column a_skills_values: expected lists of string"):
        _affinity_columns(frame.assign(a_skills_values=_as_arrow(pd.Series([[1], [2], None]), pa.int64())),
                          fallback, {"j_skills"})
    with pytest.raises(ValueError, match="column a_skills_rates: expected lists of double"):
        _affinity_columns(frame.assign(a_skills_rates=_as_arrow(pd.Series([["0.5"], ["1"], None]), pa.string())),
                          fallback, {"j_skills"})
