"""Fast content hashes (dask tokens) for the object arrays of feature rows.

Feast's file offline store runs `get_historical_features` on dask, which persists its frames about a dozen
times per feature view; each persist makes dask hash (tokenize) every in-memory partition. dask hashes a
numpy object array by pickling it up to three times (and unpickling it in between) unless every element is
a str, and feature rows hold lists (skills) and nulls: on day 10 of the demo, the training set's
point-in-time join spent 91 of its 100 s there, and the cost grew with every day stored, since each join
read every stored partition (features.offline_store now hands Feast one partition of the snapshot views).

`install()` registers, once per process, a normaliser for object arrays whose columns (the rows of a 2-D
pandas block) each hold str and nulls (None, NaN), or 1-D lists / arrays and nulls, the lists all of str
(and nulls) or all numeric arrays of one dtype (the meta embeddings). A column's token hashes the element
lengths (nulls as negative lengths) and the joined UTF-8 text or the packed numbers, so equal content gives
equal tokens, and the lengths keep the joined text unambiguous. Any other array goes to dask's own
normaliser, as before.

dask also hashes the same persisted partition again each time it builds an expression on it (about twice
per array on day 10 of the demo: 1,397 hashes of 763 arrays, 17.9 of the join's 30.7 s). The token of an
array is therefore kept while the array lives (weakly referenced), with a fingerprint of its elements'
identities: an element put in another's place (what pandas does when it writes into an object block)
changes the fingerprint, and the array is hashed again. Not caught: an element changed in place (a list
or array inside a cell mutated), which neither Feast nor dask does to the partitions it hashes.
"""

from __future__ import annotations

import threading
import weakref
from itertools import chain
from operator import attrgetter

import numpy as np
from dask.tokenize import hash_buffer_hex

_LOCK = threading.Lock()
_INSTALLED = False
_NONE, _NAN = -1, -2  # the lengths that stand for None and for a float NaN
_NONE_TYPE = type(None)
_OBJECT = np.dtype(object).str
_OBJECT_DTYPE = np.dtype(object)
_MEMO: dict[int, tuple[weakref.ref, str, tuple]] = {}  # id(array) -> (the array, element fingerprint, token)


def _null_lengths(values: list) -> np.ndarray | None:
    """Per value: its length, -1 for None, -2 for a float NaN; None if a float other than NaN is there."""
    lengths = np.empty(len(values), dtype=np.int64)
    for index, value in enumerate(values):
        if value is None:
            lengths[index] = _NONE
        elif type(value) is float:
            if value == value:
                return None
            lengths[index] = _NAN
        else:
            lengths[index] = len(value)
    return lengths


def _strings_token(values: list, kinds: set | None = None) -> tuple | None:
    """(lengths hash, text hash) of str values and nulls (negative lengths); None if another type is there.
    kinds: the set of the values' types, when the caller has it."""
    kinds = set(map(type, values)) if kinds is None else kinds
    if kinds == {str}:
        lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    elif kinds <= {str, _NONE_TYPE, float}:
        lengths = _null_lengths(values)
        if lengths is None:
            return None
        values = [value for value in values if type(value) is str]
    else:
        return None
    return hash_buffer_hex(lengths), hash_buffer_hex("".join(values).encode("utf-8", errors="surrogatepass"))


def _column_token(column: np.ndarray) -> tuple | None:
    """The token of one object column, or None when it holds anything but the kinds the module names."""
    values = column.tolist()
    types = set(map(type, values))
    strings = _strings_token(values, types)
    if strings is not None:
        return ("str", *strings)
    # Lists: every element a 1-D array or list (or a null), all of str, or all numeric of one dtype.
    if not types <= {np.ndarray, list, _NONE_TYPE, float}:
        return None
    present = [value for value in values if value is not None and type(value) is not float]
    arrays = [value for value in present if type(value) is np.ndarray]
    if set(map(attrgetter("ndim"), arrays)) - {1}:
        return None
    dtypes = set(map(attrgetter("dtype"), arrays)) | ({_OBJECT_DTYPE} if len(arrays) < len(present) else set())
    if types <= {np.ndarray, list}:  # no nulls
        lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    elif (lengths := _null_lengths(values)) is None:
        return None
    if dtypes != {_OBJECT_DTYPE}:
        if len(dtypes) > 1:
            return None
        packed = np.ascontiguousarray(np.concatenate(present))
        return ("arrays", packed.dtype.str, hash_buffer_hex(lengths), hash_buffer_hex(packed.view(np.uint8)))
    # Object arrays (Parquet list<string> as pandas reads it) join in C; lists of str one by one.
    flat = np.concatenate(arrays).tolist() if arrays and len(arrays) == len(present) else list(chain.from_iterable(present))
    strings = _strings_token(flat)
    return None if strings is None else ("lists", hash_buffer_hex(lengths), *strings)


def _fingerprint(x: np.ndarray) -> str:
    """A hash of which objects the array holds, in order (not of their content)."""
    return hash_buffer_hex(np.fromiter(map(id, x.ravel().tolist()), dtype=np.int64, count=x.size))


def _forget(key: int, ref: weakref.ref) -> None:
    with _LOCK:
        if key in _MEMO and _MEMO[key][0] is ref:
            del _MEMO[key]


def _memoised_token(x: np.ndarray) -> tuple | None:
    """_object_array_token(x), computed once while x lives and holds the same elements."""
    fingerprint = _fingerprint(x)
    with _LOCK:
        entry = _MEMO.get(id(x))
    if entry is not None and entry[0]() is x and entry[1] == fingerprint:
        return entry[2]
    token = _object_array_token(x)
    if token is not None:
        ref = weakref.ref(x, lambda dead, key=id(x): _forget(key, dead))
        with _LOCK:
            _MEMO[id(x)] = (ref, fingerprint, token)
    return token


def _object_array_token(x: np.ndarray) -> tuple | None:
    if x.ndim not in (1, 2):
        return None
    tokens = []
    for column in (x,) if x.ndim == 1 else x:
        token = _column_token(column)
        if token is None:
            return None
        tokens.append(token)
    return ("rankflow-object-array", x.dtype.str, x.shape, tuple(tokens))


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
            if x.dtype.hasobject and x.size:
                token = _memoised_token(x)
                if token is not None:
                    return token
            return dask_normalize_array(x)

        normalize_token.register(np.ndarray, normalize_array)
        _INSTALLED = True
