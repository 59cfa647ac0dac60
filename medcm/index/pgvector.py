"""Search inside a PostgreSQL case store with pgvector, answering as `medcm.index.exact.VectorIndex` does.

The store holds the vectors and scores them (`db.pgvector`, exact cosine); this class only checks
the query and turns the store's rows into `Hit`s. Nothing is loaded into memory, so every app server
of an archive can search it at once, and a new embedding is searchable as soon as it is committed.
The library does not import the store: any object with `search_vectors` and `count_embeddings` works.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Protocol

import numpy as np

from medcm.index.query import Hit, SingleQuerySearch, filter_values, normalised_queries, positive_int


class VectorSearchStore(Protocol):
    """The part of `db.store.CaseStore` a `PgVectorIndex` uses."""

    def search_vectors(self, kind: str, model_id: str, queries: np.ndarray, k: int = ...,
                       filters: dict | None = ..., exclude: Collection[str] = ...,
                       group_by: str | None = ...) -> list[list[Any]]: ...
    def count_embeddings(self, kind: str, model_id: str) -> int: ...


class PgVectorIndex(SingleQuerySearch):
    """The embeddings of one kind and model in a pgvector-enabled store, searched there.

    Args:
        store: a `db.store.CaseStore` on PostgreSQL after `enable_pgvector()`.
        kind: "image" or "report".
        model_id: whose embeddings to search.
        dim: embedding size D (the checkpoint's), checked on each query.
    """

    def __init__(self, store: VectorSearchStore, kind: str, model_id: str, dim: int) -> None:
        self.store, self.kind, self.model_id, self.dim = store, kind, model_id, positive_int("dim", dim)

    def __len__(self) -> int:
        return self.store.count_embeddings(self.kind, self.model_id)

    def search_batch(self, queries: np.ndarray, k: int = 10, filters: dict[str, str | Collection[str]] | None = None,
                     exclude: Collection[str] = (), group_by: str | None = None) -> list[list[Hit]]:
        """`search` for each row of `queries` [Q, D], sharing filters, exclude and group_by; [Q] hit lists."""
        q = normalised_queries(queries, self.dim)
        k = positive_int("k", k)
        found = self.store.search_vectors(self.kind, self.model_id, q, k, filter_values(filters), exclude, group_by)
        return [[Hit(hit.key, hit.score, dict(hit.meta)) for hit in hits] for hits in found]
