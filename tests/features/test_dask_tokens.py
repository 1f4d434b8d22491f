"""features.dask_tokens: object arrays are named by identity (one token per array while it holds the same
elements), never by pickling their content, and dask's graphs over them compute the same frames."""

from __future__ import annotations

import gc

import dask.dataframe as dd
import numpy as np
import pandas as pd
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


def test_an_array_keeps_its_token_and_another_array_never_shares_it(monkeypatch):
    """No pickling: the content is never read. The same array: the same token; a copy, even equal, another."""
    import pickle

    monkeypatch.setattr(pickle, "dumps", lambda *a, **k: (_ for _ in ()).throw(AssertionError("pickled")))
    skills = _objects(np.array(["python", "sql"], dtype=object), None, ["excel"])
    assert tokenize(skills) == tokenize(skills)
    assert tokenize(skills.copy()) != tokenize(skills)
    assert tokenize(_objects("a", "b")) != tokenize(_objects("a", "b"))


def test_an_element_put_in_another_s_place_gives_a_new_token():
    skills = _objects(np.array(["python", "sql"], dtype=object), None, ["excel"])
    first = tokenize(skills)
    skills[2] = ["excel"]  # equal content, another object: the array may have changed, so a new name
    second = tokenize(skills)
    assert second != first
    assert tokenize(skills) == second
    block = np.empty((2, 3), dtype=object)  # a 2-D pandas block, written through a column view
    block[:] = "x"
    before = tokenize(block)
    block[1, 2] = "y"
    assert tokenize(block) != before


def test_a_dead_array_is_forgotten():
    skills = _objects(["excel"], None)
    tokenize(skills)
    key = id(skills)
    assert key in dask_tokens._MEMO
    del skills
    gc.collect()
    assert key not in dask_tokens._MEMO  # a later array at that address gets a token of its own


def test_other_arrays_keep_dasks_content_tokens():
    assert tokenize(np.arange(5)) == tokenize(np.arange(5)) != tokenize(np.arange(6))
    empty = np.empty(0, dtype=object)
    assert tokenize(empty) == tokenize(empty.copy())


def test_install_is_idempotent():
    frame = _frame()
    dask_tokens.install()
    dask_tokens.install()
    assert tokenize(frame) == tokenize(frame)


def _through_dask(left: pd.DataFrame, right: pd.DataFrame) -> pd.DataFrame:
    joined = dd.from_pandas(left, npartitions=2).persist().merge(
        dd.from_pandas(right, npartitions=2).persist(), on="member_id", how="left").persist()
    joined = joined[joined["rank"].fillna(0) != 3].drop_duplicates(subset=["member_id"]).persist()
    return joined.compute().sort_values("member_id", ignore_index=True)


def test_dask_merges_and_persists_frames_of_lists_to_the_pandas_result():
    """What Feast's file offline store does with our rows: persist, merge, filter, drop duplicates (with its
    dask setting: object columns stay objects)."""
    import dask

    left = _frame()
    right = pd.DataFrame({"member_id": [1, 2, 2, 4, 5], "a_values": [["a"], None, ["b", "c"], [], ["d"]],
                          "rank": [1, 2, 3, 4, 5]})
    with dask.config.set({"dataframe.convert-string": False}):
        got = _through_dask(left, right)
    expected = left.merge(right, on="member_id", how="left")
    expected = expected[expected["rank"].fillna(0) != 3].drop_duplicates(subset=["member_id"])
    expected = expected.sort_values("member_id", ignore_index=True)
    assert got["member_id"].tolist() == expected["member_id"].tolist() == [1, 2, 3, 4]

    def plain(value):
        return list(value) if isinstance(value, (list, np.ndarray)) else None if pd.isna(value) else value

    for column in ("m_industry", "m_skills", "meta_embedding", "a_values"):
        assert repr([plain(v) for v in got[column]]) == repr([plain(v) for v in expected[column]]), column


def test_an_element_freed_and_replaced_at_the_same_address_still_gives_a_new_token():
    """The memo holds the array's objects: a freed element's address cannot be taken by its replacement."""
    for _ in range(20):
        cells = _objects([1, 2], None)
        first = tokenize(cells)
        cells[0] = None
        cells[0] = [3, 4, 5]  # without the held objects, often at the freed list's address
        assert tokenize(cells) != first


def test_forgetting_an_array_inside_a_locked_block_does_not_hang():
    """A garbage collection while the memo is locked can free a memoised array: its callback runs right there."""
    import threading

    done = threading.Event()

    def forget_while_locked():
        with dask_tokens._LOCK:
            dask_tokens._forget(-1, None)
            done.set()

    thread = threading.Thread(target=forget_while_locked, daemon=True)
    thread.start()
    thread.join(5)
    assert done.is_set()
