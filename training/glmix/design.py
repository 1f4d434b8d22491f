"""Design vectors of the random effects: phi(x) = [1, onehot(column_1), onehot(column_2), ...].

A member's random effect is read against phi(job) (the job's industry and seniority), a job's against
phi(member). Names follow the ground-truth contract: "intercept", "industry=<v>", "seniority=<v>".
A value outside the vocabulary (or missing) contributes no one-hot entry, only the intercept.
The basis version is a hash of the names, stored with every posterior so a changed vocabulary is never
mixed with yesterday's coefficients silently.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np


def _category(value) -> str | None:
    """A category that is not a str as the basis names it: str(value); None or NaN: no category."""
    return None if value is None or value != value else str(value)


@dataclass(frozen=True)
class CategoricalBasis:
    """Intercept plus one-hot blocks, one per categorical column, in a fixed vocabulary order."""

    columns: tuple[tuple[str, tuple[str, ...]], ...]  # (column name, vocabulary)

    @classmethod
    def from_vocabularies(cls, vocabularies: Mapping[str, Sequence[str]]) -> "CategoricalBasis":
        return cls(tuple((name, tuple(str(v) for v in vocab)) for name, vocab in vocabularies.items()))

    @classmethod
    def from_names(cls, names: Sequence[str]) -> "CategoricalBasis":
        """Inverse of `names` (e.g. the truth contract's basis list)."""
        if not names or names[0] != "intercept":
            raise ValueError(f"basis names must start with 'intercept', got {list(names)[:3]}")
        vocabularies: dict[str, list[str]] = {}
        for name in names[1:]:
            column, sep, value = name.partition("=")
            if not sep:
                raise ValueError(f"basis name {name!r} is not of the form column=value")
            vocabularies.setdefault(column, []).append(value)
        return cls.from_vocabularies(vocabularies)

    @property
    def names(self) -> list[str]:
        return ["intercept"] + [f"{column}={value}" for column, vocab in self.columns for value in vocab]

    @property
    def dim(self) -> int:
        return 1 + sum(len(vocab) for _, vocab in self.columns)

    @property
    def version(self) -> str:
        return hashlib.sha1("\n".join(self.names).encode()).hexdigest()[:12]

    def design(self, values: Mapping[str, Sequence], rows: int | None = None) -> np.ndarray:
        """phi for n rows, (n, dim) float32; `values[column]` holds the rows' categories (strings).

        `rows`: n, needed when the basis has no column (intercept only) and checked otherwise."""
        lengths = {len(values[column]) for column, _ in self.columns} | ({rows} if rows is not None else set())
        if len(lengths) != 1:
            raise ValueError(f"design: columns have different lengths {sorted(lengths)}" if lengths
                             else "design: an intercept-only basis needs the number of rows")
        n = lengths.pop()
        phi = np.zeros((n, self.dim), dtype=np.float32)
        phi[:, 0] = 1.0
        offset = 1
        for column, vocab in self.columns:
            lookup = {value: i for i, value in enumerate(vocab)}
            # One dict lookup per row (a str as it is, anything else as str(v), None / NaN as no value): 5x a
            # sort of the rows' strings for their distinct values (2M rows: 0.2 s against 1.1 s).
            codes = np.fromiter((lookup.get(v if type(v) is str else _category(v), -1)
                                 for v in np.asarray(values[column], dtype=object)), dtype=np.int64, count=n)
            known = codes >= 0
            phi[np.flatnonzero(known), offset + codes[known]] = 1.0
            offset += len(vocab)
        return phi

    def to_json(self) -> dict:
        return {"columns": [[column, list(vocab)] for column, vocab in self.columns], "version": self.version}

    @classmethod
    def from_json(cls, data: Mapping) -> "CategoricalBasis":
        return cls(tuple((column, tuple(vocab)) for column, vocab in data["columns"]))
