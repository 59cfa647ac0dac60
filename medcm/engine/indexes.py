"""The engine's vector indexes: which backend searches, and a cache of exact indexes saved with stamps.

The store is the truth; an index is a copy of its vectors of one kind ("image" or "report") for one
model. An exact index (`medcm.index.exact.VectorIndex`) is kept in memory and, given a folder, saved
there with a stamp file holding the store's `embedding_stamp` at build time: a later process loads
it while the stamp still matches and rebuilds it from the store otherwise. The "faiss" backend
searches a FAISS copy of the same exact index; "pgvector" needs no cache at all (PostgreSQL searches
its own vectors, see `medcm.index.pgvector.PgVectorIndex`).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Protocol

from medcm.index.exact import VectorIndex
from medcm.index.faiss import FaissIndex, check_backend, with_backend

__all__ = ["INDEX_BACKENDS", "STAMP_FILE", "IndexCache", "IndexStoreLike", "check_index_backend"]

log = logging.getLogger(__name__)

INDEX_BACKENDS = ("exact", "faiss", "pgvector")  # in memory, in memory on FAISS, inside PostgreSQL
STAMP_FILE = "store_stamp.txt"


class IndexStoreLike(Protocol):
    """The part of `db.store.CaseStore` an index cache reads."""

    def embedding_matrix(self, kind: str, model_id: str) -> Any: ...
    def embedding_stamp(self, kind: str, model_id: str) -> str: ...
    def enable_pgvector(self) -> int: ...


def check_index_backend(backend: str, store: IndexStoreLike) -> None:
    """Fail now, not at the first search: an unknown name, a missing FAISS, or a store without pgvector.

    "pgvector" is enabled on the store here (which converts its stored vectors once).

    Raises:
        ValueError: `backend` is not one of `INDEX_BACKENDS`, or FAISS is not installed.
        StoreError: "pgvector" on a store that cannot have it.
    """
    if backend not in INDEX_BACKENDS:
        raise ValueError(f"index backend is {backend!r}, expected one of {INDEX_BACKENDS}")
    if backend == "pgvector":
        store.enable_pgvector()
    else:
        check_backend(backend)


class IndexCache:
    """In-memory indexes of one model, backed by saved copies under `folder` (None: memory only).

    Args:
        store: the case store the indexes copy.
        folder: where indexes are saved, one subfolder per kind and model; None keeps them in memory.
        backend: "exact" or "faiss" (how a loaded index searches).
    """

    def __init__(self, store: IndexStoreLike, folder: Path | None, backend: str) -> None:
        self.store, self.folder, self.backend = store, folder, backend
        self._memory: dict[str, VectorIndex | FaissIndex] = {}

    def clear(self) -> None:
        """Forget every index held in memory (the store changed): the next use loads or rebuilds."""
        self._memory.clear()

    def drop(self, kind: str) -> None:
        """Forget the index of `kind` held in memory."""
        self._memory.pop(kind, None)

    def folder_of(self, kind: str, model_id: str) -> Path | None:
        """The folder the index of (`kind`, `model_id`) is saved in; None without a cache folder."""
        if self.folder is None:
            return None
        return self.folder / f"{kind}-{re.sub(r'[^A-Za-z0-9_.-]', '_', model_id)}"

    def get(self, kind: str, model_id: str) -> VectorIndex | FaissIndex | None:
        """The index held in memory, else the saved one while its stamp matches the store; None if neither."""
        index = self._memory.get(kind)  # one read: a signature may `drop` it from another thread meanwhile
        if index is None:
            index = self._load_saved(kind, model_id)
            if index is not None:
                self._memory[kind] = index
        return index

    def _load_saved(self, kind: str, model_id: str) -> VectorIndex | FaissIndex | None:
        folder = self.folder_of(kind, model_id)
        if folder is None or not (folder / STAMP_FILE).is_file():
            return None
        stamp = self.store.embedding_stamp(kind, model_id)
        try:
            if (folder / STAMP_FILE).read_text(encoding="utf-8") == stamp:
                index = VectorIndex.load(folder)
                if index.model_id == model_id:
                    return with_backend(index, self.backend)
        except (ValueError, FileNotFoundError) as err:
            log.warning("rebuilding index %s: %s", folder, err)
        return None

    def rebuild(self, kind: str, model_id: str, dim: int) -> VectorIndex | FaissIndex:
        """Rebuild the index of `kind` from the store's `dim`-wide vectors of `model_id`, save it and hold it."""
        stamp = self.store.embedding_stamp(kind, model_id)  # read first: rows added meanwhile make it stale
        matrix = self.store.embedding_matrix(kind, model_id)
        if matrix.keys:
            index = VectorIndex.build(list(matrix.keys), matrix.vectors, list(matrix.meta), model_id)
        else:
            index = VectorIndex(dim, model_id)
        folder = self.folder_of(kind, model_id)
        if folder is not None:
            index.save(folder)
            # Written last: an index whose stamp is missing or stale is rebuilt, never trusted.
            (folder / STAMP_FILE).write_text(stamp, encoding="utf-8")
        self._memory[kind] = with_backend(index, self.backend)
        return self._memory[kind]
