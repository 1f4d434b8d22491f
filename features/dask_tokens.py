"""dask tokens (names) for the object arrays of feature rows: by identity, not by content.

Feast's file offline store runs `get_historical_features` on dask, which persists its frames about a dozen
times per feature view; each persist makes dask tokenize every in-memory partition, and dask hashes a numpy
object array by pickling it up to three times (and unpickling it in between) unless every element is a str.
Feature rows hold lists (skills, affinity names and rates), strings and nulls: on day 10 of the demo the
training set's point-in-time join spent 91 of its 100 s there.

A token only names a piece of data in dask's graph: two different arrays must never share one, and one
array must keep its token while it holds the same elements. Content hashes give more than that (equal
arrays built apart share a token) and cost a pass over every element each time an array is new: a 100x
day's member_affinities join (six list columns) took 36 s with content hashes and 5 s with the tokens below
(benchmarks/results/scale-100x-cpu-amd-epyc-2c.md). So `install()` registers, once per process, a normaliser that
gives each non-empty object array a token of its own (a random one, as dask itself gives an object it
cannot hash), kept while the array lives (weakly referenced) together with a copy of its pointers: the copy
holds the same objects, so none of them can be freed and its address taken by another while the token is
kept, and an element put in another's place (what pandas does when it writes into an object block) changes
the pointers: the array gets a new token. Not caught: an element changed in place (a list or array inside a
cell mutated), which neither Feast nor dask does to the partitions it names. Equal arrays built
apart get different tokens: dask computes each once instead of sharing the result, the same result.
Every other array goes to dask's own normaliser, as before.
"""

from __future__ import annotations

import ctypes
import threading
import uuid
import weakref

import numpy as np

# Reentrant: a garbage collection inside a locked block may free a memoised array and run _forget there.
_LOCK = threading.RLock()
_INSTALLED = False
_MEMO: dict[int, tuple[weakref.ref, np.ndarray, tuple]] = {}  # id(array) -> (the array, its pointers, token)


def _pointers(x: np.ndarray) -> bytes:
    """The addresses of the objects an object array holds, in C order (its buffer, read as bytes)."""
    return ctypes.string_at(x.ctypes.data, x.nbytes)


def _forget(key: int, ref: weakref.ref) -> None:
    with _LOCK:
        if key in _MEMO and _MEMO[key][0] is ref:
            del _MEMO[key]


def identity_token(x: np.ndarray) -> tuple:
    """The token of object array x: the same while x lives and holds the same objects, new otherwise."""
    current = np.ascontiguousarray(x)  # a copy of an object array holds the same objects
    with _LOCK:  # one check and one insert: two threads naming one array get one token
        entry = _MEMO.get(id(x))
        if entry is not None and entry[0]() is x and entry[1].shape == current.shape \
                and _pointers(entry[1]) == _pointers(current):
            return entry[2]
        held = current.copy() if current is x else current
        token = ("rankflow-object-array", x.dtype.str, x.shape, uuid.uuid4().hex)
        _MEMO[id(x)] = (weakref.ref(x, lambda dead, key=id(x): _forget(key, dead)), held, token)
        return token


def install() -> None:
    """Register the normaliser with dask (idempotent; dask's own handles every other array)."""
    global _INSTALLED
    with _LOCK:
        if _INSTALLED:
            return
        from dask.tokenize import normalize_token

        normalize_token(np.empty(2))  # dask registers its numpy normalisers lazily: have it do so first
        dask_normalize_array = normalize_token.dispatch(np.ndarray)

        def normalize_array(x: np.ndarray):
            if x.dtype == object and x.size:
                return identity_token(x)
            return dask_normalize_array(x)

        normalize_token.register(np.ndarray, normalize_array)
        _INSTALLED = True
