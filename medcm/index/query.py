"""What every vector-index backend shares: the `Hit` result, `SingleQuerySearch` (one query answered by the
backend's `search_batch`) and the checks of queries, k and filters, so that all backends refuse the same inputs."""

from __future__ import annotations

import abc
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Hit:
    """One search result: the row's key, its cosine similarity to the query and its metadata."""

    key: str
    score: float
    meta: dict[str, str]


class SingleQuerySearch(abc.ABC):
    """`search` for one query, answered by the class's `search_batch`; shared by every index backend."""

    dim: int

    def search(self, query: np.ndarray, k: int = 10, filters: dict[str, str | Collection[str]] | None = None,
               exclude: Collection[str] = (), group_by: str | None = None) -> list[Hit]:
        """The k rows most similar to `query` [D] (normalised here), best first, ties by key ascending.

        Args:
            query: embedding [D].
            k: how many hits (or groups) at most.
            filters: meta field -> allowed value or values; case-insensitive equality, and a row
                lacking the field does not match. A comma-separated value ("CT,MR", a study with
                two modalities) matches when any part does. Fields combine with AND.
            exclude: keys to leave out (e.g. the query study's own images).
            group_by: a meta field (e.g. "study_uid"): keep the best row per value, return the top-k
                groups. A row lacking the field is a group of its own.

        Raises:
            ValueError: query not [D], zero or non-finite; k < 1; filter values not strings.
        """
        shape = np.shape(query)
        if shape != (self.dim,):
            raise ValueError(f"query has shape {shape}, expected ({self.dim},)")
        return self.search_batch(np.reshape(query, (1, self.dim)), k, filters, exclude, group_by)[0]

    @abc.abstractmethod
    def search_batch(self, queries: np.ndarray, k: int = 10, filters: dict[str, str | Collection[str]] | None = None,
                     exclude: Collection[str] = (), group_by: str | None = None) -> list[list[Hit]]:
        """`search` for each row of `queries` [Q, D]; [Q] hit lists."""


def normalised_queries(queries: np.ndarray, dim: int) -> np.ndarray:
    """Float32 [Q, D] unit rows; raises ValueError on wrong shape, zero or non-finite rows."""
    shape = np.shape(queries)
    if len(shape) != 2 or shape[1] != dim:
        raise ValueError(f"queries have shape {shape}, expected (Q, {dim})")
    q = np.asarray(queries, dtype=np.float64)
    norms = np.linalg.norm(q, axis=1)
    bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
    if bad.size:
        raise ValueError(f"query {bad[0]} has norm {norms[bad[0]]}, expected finite and non-zero")
    return (q / norms[:, None]).astype(np.float32)


def filter_values(filters: dict[str, str | Collection[str]] | None) -> dict[str, list[str]]:
    """Each filter field's allowed values as a list (one string is one value, not its characters).

    Raises:
        ValueError: a value that is not a string.
    """
    checked = {}
    for field, allowed in (filters or {}).items():
        values = list(allowed) if isinstance(allowed, Collection) and not isinstance(allowed, str) else [allowed]
        if not all(isinstance(v, str) for v in values):
            raise ValueError(f"filter {field!r} has values {values!r}, expected str or a collection of str")
        checked[field] = values
    return checked


def positive_int(name: str, value: int) -> int:
    """`value` as an int if it is an integer >= 1 (bool excluded), else ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)
