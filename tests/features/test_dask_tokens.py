"""features.dask_tokens: content hashes of object columns that dask would otherwise pickle three times."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from dask.tokenize import tokenize

from features import dask_tokens

dask_tokens.install()


def _objects(*values) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = list(values)
    return out


def _frame() -> pd.DataFrame:
    return pd.DataFrame({
        "member_id": [1, 2, 3, 4],
        "m_industry": ["software", None, "finance", np.nan],
        "m_skills": [np.array(["python", "sql"], dtype=object), None, np.array([], dtype=object), ["excel"]],
        "meta_embedding": [np.array([0.5, -1.0], dtype=np.float32), None, np.zeros(2, np.float32),
                           np.array([1.0, 2.0], dtype=np.float32)],
    })


def test_equal_content_gives_equal_tokens_and_any_change_a_different_one():
    base = _frame()
    for column in ("m_industry", "m_skills", "meta_embedding"):  # hashed here, not pickled by dask
        assert dask_tokens._object_array_token(base[column].to_numpy()) is not None, column
    assert tokenize(base) == tokenize(_frame()) == tokenize(base.copy(deep=True))
    changes = {
        "a string": ("m_industry", 2, "retail"),
        "None for NaN": ("m_industry", 3, None),
        "a skill": ("m_skills", 0, np.array(["python", "spark"], dtype=object)),
        "an empty list for None": ("m_skills", 1, np.array([], dtype=object)),
        "one number of an embedding": ("meta_embedding", 3, np.array([1.0, 2.5], dtype=np.float32)),
    }
    seen = {tokenize(base)}
    for name, (column, row, value) in changes.items():
        changed = _frame()
        changed.at[row, column] = value
        token = tokenize(changed)
        assert token not in seen, name
        seen.add(token)


@pytest.mark.parametrize("left, right", [
    (_objects("ab", "c"), _objects("a", "bc")),                      # same joined text, other boundaries
    (_objects(["ab"], ["c"]), _objects(["a"], ["bc"])),
    (_objects(["a", "b"], []), _objects(["a"], ["b"])),              # same inner values, other lists
    (_objects(np.array([1, 2], np.int32)), _objects(np.array([1, 2], np.int64))),  # same values, other dtype
    (_objects(None, "a"), _objects(np.nan, "a")),
])
def test_the_hash_keeps_boundaries_nulls_and_dtypes_apart(left, right):
    assert dask_tokens._object_array_token(left) is not None and dask_tokens._object_array_token(right) is not None
    assert tokenize(left) != tokenize(right)
    assert tokenize(left) == tokenize(left.copy())


def test_other_objects_go_to_dasks_own_normaliser():
    # Dicts, floats other than NaN beside strings, and 0-d arrays are not the kinds handled here: dask still
    # hashes them (by pickling), by content.
    def scalar_array(v):  # a 0-d array beside a null: has no length
        out = _objects(None, None)
        out[0] = np.array(v)
        return out

    for make in (lambda v: _objects({"a": v}, "x"), lambda v: _objects("x", float(v)), scalar_array):
        assert dask_tokens._object_array_token(make(1)) is None
        assert tokenize(make(1)) == tokenize(make(1)) != tokenize(make(2))


def test_install_is_idempotent():
    dask_tokens.install()
    dask_tokens.install()
    assert tokenize(_frame()) == tokenize(_frame())


def test_an_array_is_hashed_once_while_it_lives_and_again_when_an_element_is_replaced(monkeypatch):
    import gc

    hashed = []
    compute = dask_tokens._object_array_token
    monkeypatch.setattr(dask_tokens, "_object_array_token", lambda x: hashed.append(id(x)) or compute(x))
    skills = _objects(np.array(["python", "sql"], dtype=object), None, ["excel"])
    first = tokenize(skills)
    assert tokenize(skills) == first and len(hashed) == 1  # the second call reused the first token

    skills[2] = ["excel"]  # equal content, another object: hashed again, same token
    assert tokenize(skills) == first and len(hashed) == 2
    skills[2] = ["word"]
    assert tokenize(skills) != first and len(hashed) == 3

    key = id(skills)
    assert key in dask_tokens._MEMO
    del skills
    gc.collect()
    assert key not in dask_tokens._MEMO  # forgotten with the array: a later array at that address is hashed
