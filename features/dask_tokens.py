"""dask tokens (names) for the object arrays of feature rows: by identity, not by content.

Feast's file offline store runs `get_historical_features` on dask, which persists its frames about a dozen
times per feature view; each persist makes dask tokenize every in-memory partition, and dask hashes a numpy
object array by pickling it up to three times (and unpickling it in between) unless every element is a str.
Feature rows hold lists (skills, affinity names and rates), strings and nulls: on day 10 of the demo the
training set's point-in-time join spent 91 of its 100 s there.

A token only names a piece of data in dask's graph: two different arrays must never share one, and one
array must keep its token while it holds the same elements. Content hashes give more than that (equal
arrays built apart share a token) and cost a pass over every element each time an array is new: hashing
the lists of a 100x day's member_affinities view took 25 of its 36 s join
(benchmarks/results/scale-100x-cpu-amd-epyc-2c.md). So `install()` registers, once per process, a normaliser that
gives each non-empty object array a token of its own (a random one, as dask itself gives an object it
cannot hash), kept while the array lives (weakly referenced) together with a fingerprint of which objects
it holds: an element put in another's place (what pandas does when it writes into an object block) changes
the fingerprint, and the array gets a new token. Not caught: an element changed in place (a list or array
inside a cell mutated), which neither Feast nor dask does to the partitions it names. Equal arrays built
apart get different tokens: dask computes each once instead of sharing the result, the same result.
Every other array goes to dask's own normaliser, as before.
"""

from __future__ import annotations

import ctypes
import threading
import uuid
import weakref

import numpy as np
from dask.tokenize import hash_buffer_hex

_LOCK = threading.Lock()
_INSTALLED = False
_MEMO: dict[int, tuple[weakref.ref, str, tuple]] = {}  # id(array) -> (the array, element fingerprint, token)


def _fingerprint(x: np.ndarray) -> str:
    """A hash of which objects the array holds, in order (not of their content): an object array's buffer is
    its elements' addresses, hashed as bytes."""
    pointers = np.ascontiguousarray(x)  # a copy of an object array holds the same objects
    return hash_buffer_hex(ctypes.string_at(pointers.ctypes.data, pointers.nbytes))


def _forget(key: int, ref: weakref.ref) -> None:
    with _LOCK:
        if key in _MEMO and _MEMO[key][0] is ref:
            del _MEMO[key]


def identity_token(x: np.ndarray) -> tuple:
    """The token of object array x: the same while x lives and holds the same elements, new otherwise."""
    fingerprint = _fingerprint(x)
    with _LOCK:
        entry = _MEMO.get(id(x))
        if entry is not None and entry[0]() is x and entry[1] == fingerprint:
            return entry[2]
        token = ("rankflow-object-array", x.dtype.str, x.shape, uuid.uuid4().hex)
        ref = weakref.ref(x, lambda dead, key=id(x): _forget(key, dead))
        _MEMO[id(x)] = (ref, fingerprint, token)
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
