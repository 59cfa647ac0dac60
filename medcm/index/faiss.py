"""Exact cosine search on FAISS (`IndexFlatIP`), answering exactly as `medcm.index.exact.VectorIndex` does.

FAISS is optional (`pip install 'medcm[faiss]'`) and imported only when a `FaissIndex` is built.
A `FaissIndex` is built in memory from a `VectorIndex` (the persisted folder stays the exact index's
format) and holds its rows once, as float32 inside FAISS; keys, metadata, filters and groups are the
`VectorIndex` machinery over a read-only view of that storage.

Search semantics are `VectorIndex.search`'s: filters and `exclude` become a FAISS `IDSelectorBitmap`,
FAISS returns the best `fetch` rows, and those candidates are rescored with numpy and ordered by
(score descending, key ascending). The answer is accepted only when the last fetched row scores
clearly below the k-th hit (by more than a float32 rounding bound), so no unfetched row can belong
in it; otherwise `fetch` grows fourfold, and past a quarter of the allowed rows the query is
answered by the exact chunked scan instead. `group_by` works the same way on the best row per group.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

from medcm.index.exact import CHUNK_ROWS, VectorIndex
from medcm.index.query import Hit, SingleQuerySearch, normalised_queries, positive_int

BACKENDS = ("exact", "faiss")  # VectorIndex, FaissIndex
_FALLBACK = 0.25  # a query that would fetch more than this share of the allowed rows is scanned exactly
_GROWTH = 4  # fetch grows by this factor while the cut is unsettled


def import_faiss():
    """The `faiss` module, or an ImportError naming the extra that installs it."""
    try:
        import faiss
    except ImportError as err:
        raise ImportError("the FAISS index backend needs faiss-cpu, which is not installed: "
                          "pip install 'medcm[faiss]' (or use the exact backend)") from err
    return faiss


def check_backend(backend: str) -> None:
    """Raise unless `backend` is one of BACKENDS and usable here (FAISS installed for "faiss").

    Raises:
        ValueError: an unknown backend name.
        ImportError: "faiss" without faiss-cpu installed.
    """
    if backend not in BACKENDS:
        raise ValueError(f"index backend is {backend!r}, expected one of {BACKENDS}")
    if backend == "faiss":
        import_faiss()


def with_backend(index: VectorIndex, backend: str) -> VectorIndex | FaissIndex:
    """`index` itself for "exact", or a `FaissIndex` of its rows for "faiss" (then `index` may be dropped)."""
    check_backend(backend)
    return index if backend == "exact" else FaissIndex(index)


class _Storage:
    """A numpy-readable view of a FAISS flat index's rows that keeps the FAISS index alive."""

    def __init__(self, flat, faiss, n: int, dim: int) -> None:
        self.flat = flat  # referenced by every array made from this object (through its .base)
        address = faiss.rev_swig_ptr(flat.get_xb(), n * dim).__array_interface__["data"][0]
        self.__array_interface__ = {"shape": (n, dim), "typestr": "<f4", "data": (address, True), "version": 3}


class FaissIndex(SingleQuerySearch):
    """Exact cosine search over the rows of a `VectorIndex` on a FAISS `IndexFlatIP`; read-only.

    Args:
        index: the rows, keys and metadata to search (float32 or float16; FAISS holds float32 copies).
    """

    def __init__(self, index: VectorIndex) -> None:
        faiss = import_faiss()
        n, dim = len(index), index.dim
        self._flat = faiss.IndexFlatIP(dim)
        vectors = index.vectors
        for a in range(0, n, CHUNK_ROWS):  # a float16 index is widened one chunk at a time
            self._flat.add(np.ascontiguousarray(vectors[a : a + CHUNK_ROWS], dtype=np.float32))
        rows = np.asarray(_Storage(self._flat, faiss, n, dim)) if n else np.empty((0, dim), np.float32)
        self._exact = VectorIndex._adopt(index.keys, index.meta, rows, index.model_id, index.chunk_rows)
        self._faiss = faiss
        self._rank = np.empty(n, np.int64)  # position of each row's key in sorted key order: ties by key
        self._rank[sorted(range(n), key=self._exact._keys.__getitem__)] = np.arange(n)
        self._eps = 2 * dim * float(np.finfo(np.float32).eps)  # bounds |FAISS score - numpy score| for unit rows

    @classmethod
    def build(cls, keys: list[str], vectors: np.ndarray, meta: list[dict[str, str]] | None,
              model_id: str) -> FaissIndex:
        """A FAISS index of `vectors` [N, D] under unique `keys` [N]; checks as `VectorIndex.build`."""
        return cls(VectorIndex.build(keys, vectors, meta, model_id))

    @property
    def dim(self) -> int:
        """Embedding size D."""
        return self._exact.dim

    @property
    def model_id(self) -> str:
        """The model that produced the embeddings."""
        return self._exact.model_id

    @property
    def keys(self) -> list[str]:
        """The keys in row order (a copy)."""
        return self._exact.keys

    @property
    def meta(self) -> list[dict[str, str]]:
        """The metadata in row order (copies)."""
        return self._exact.meta

    @property
    def vectors(self) -> np.ndarray:
        """Read-only view of the rows held by FAISS, float32 [N, D]."""
        return self._exact.vectors

    def __len__(self) -> int:
        return len(self._exact)

    def __contains__(self, key: object) -> bool:
        return key in self._exact

    def search_batch(self, queries: np.ndarray, k: int = 10, filters: dict[str, str | Collection[str]] | None = None,
                     exclude: Collection[str] = (), group_by: str | None = None) -> list[list[Hit]]:
        """`search` for each row of `queries` [Q, D], sharing filters, exclude and group_by; [Q] hit lists."""
        q = normalised_queries(queries, self.dim)
        k = positive_int("k", k)
        mask = self._exact._row_mask(filters, exclude)
        allowed = len(self) if mask is None else int(mask.sum())
        groups = None if group_by is None else self._exact._groups(group_by)
        results: list[list[Hit] | None] = [[] for _ in q] if allowed == 0 else [None] * len(q)
        pending = [j for j, hits in enumerate(results) if hits is None]
        bitmap = None if mask is None else np.packbits(mask, bitorder="little")  # alive while FAISS reads it
        params = None if bitmap is None else self._faiss.SearchParameters(
            sel=self._faiss.IDSelectorBitmap(len(self), self._faiss.swig_ptr(bitmap)))
        fetch = min(allowed, (4 if groups is not None else 2) * k + 16)
        while pending and (fetch == allowed or fetch <= _FALLBACK * allowed):
            scores, rows = self._flat.search(q[pending], fetch, params=params)
            for j, row_scores, row_ids in zip(pending, scores, rows):
                results[j] = self._settle(q[j], row_scores, row_ids, k, groups, fetch == allowed)
            pending = [j for j in pending if results[j] is None]
            fetch = min(allowed, fetch * _GROWTH)
        if pending:  # the cut stays unsettled deep into the rows: scan them all
            for j, hits in zip(pending, self._exact.search_batch(q[pending], k, filters, exclude, group_by)):
                results[j] = hits
        return results

    def _settle(self, query: np.ndarray, faiss_scores: np.ndarray, rows: np.ndarray, k: int,
                groups: np.ndarray | None, complete: bool) -> list[Hit] | None:
        """The hits among FAISS's candidate `rows` [fetch] (-1 = none), or None when more must be fetched.

        Candidates are rescored in numpy float32, ordered by (score descending, key ascending) and,
        with `groups` [N], reduced to each group's first row. Unless `complete` (every allowed row
        fetched), the answer stands only when the lowest fetched score is below the k-th hit's by
        more than `_eps`: an unfetched row then cannot reach the hits, nor better a group in them.
        """
        found = rows >= 0
        rows = rows[found]
        scores = self._exact._buf[rows] @ query  # [m]
        order = np.lexsort((self._rank[rows], -scores))
        if groups is not None:
            _, first = np.unique(groups[rows[order]], return_index=True)
            order = order[np.sort(first)]
        top = order[:k]
        if not complete and (len(top) < k or faiss_scores[found].min() >= scores[top[-1]] - self._eps):
            return None
        keys, meta = self._exact._keys, self._exact._meta
        return [Hit(keys[r], s, dict(meta[r])) for r, s in zip(rows[top].tolist(), scores[top].tolist())]
