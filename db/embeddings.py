"""The embedding methods of `db.store.CaseStore`: writing vectors, reading them back for an index, and
searching them inside PostgreSQL with pgvector; each public method is one transaction.

Which studies still lack embeddings is `db.embedding_queries`; the pgvector column, trigger and
search SQL are `db.pgvector`.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

import db.embedding_queries as embedding_queries
import db.pgvector as pgvector
import db.read as read
import db.write as write
from db.connect import Database
from db.models import Embedding, Report
from db.pgvector import VectorHit
from db.records import EmbeddingInput, EmbeddingMatrix, PendingStudy, StoreError


class EmbeddingMethods(Database):
    """Embeddings of instances and reports, keyed by SOPInstanceUID or StudyInstanceUID, one row per
    (kind, model, key); a PostgreSQL store with pgvector also keeps each as a `vector` it can search.

    Args:
        url: a SQLAlchemy URL, as for `db.store.CaseStore`.
    """

    def __init__(self, url: str) -> None:
        super().__init__(url)
        try:
            with self._engine.connect() as connection:
                self._pgvector = pgvector.is_enabled(connection)  # then every write fills its column too
        except BaseException:
            self._engine.dispose()
            raise

    def add_embeddings(self, embeddings: Sequence[EmbeddingInput]) -> int:
        """Insert or replace embeddings (one transaction); see `ingest` for the keys.

        Returns:
            The number of embeddings written.

        Raises:
            StoreError: an invalid vector, an unknown key, or a study without a report.
        """
        with self._session(write=True) as s:
            return len(self._put_embeddings(s, embeddings))

    def _put_embeddings(self, s: Session, embeddings: Sequence[EmbeddingInput]) -> list[Embedding]:
        rows = write.put_embeddings(s, embeddings)
        if self._pgvector and rows:
            s.flush()  # the rows need their ids, and the trigger must see the new blobs before their vectors
            pgvector.write(s, [(row.id, row.vector) for row in rows])
        return rows

    def embedding_matrix(self, kind: str, model_id: str) -> EmbeddingMatrix:
        """Every vector of `kind` for `model_id`, for building a vector index.

        "image": one row per instance embedding (storage order), keyed by SOPInstanceUID.
        "report": one row per study, keyed by StudyInstanceUID: the embedding of its newest report
        version that has one for this model. Meta modality/body_part of a report row are the
        study's distinct values, sorted and comma-joined.

        Raises:
            StoreError: unknown kind, or stored vectors of mixed dimension.
        """
        write.check_kind("embedding_matrix", kind)
        with self._session() as s:
            if kind == "image":
                return read.image_matrix(s, model_id)
            return read.report_matrix(s, model_id)

    def count_embeddings(self, kind: str, model_id: str) -> int:
        """The number of rows `embedding_matrix(kind, model_id)` returns (for reports: studies)."""
        write.check_kind("count_embeddings", kind)
        with self._session() as s:
            if kind == "image":
                query = select(func.count(Embedding.id))
            else:
                query = select(func.count(func.distinct(Report.study_id))).join(
                    Embedding, Embedding.report_id == Report.id
                )
            return s.scalar(query.where(Embedding.kind == kind, Embedding.model_id == model_id)) or 0

    def studies_to_embed(self, model_id: str, after: str | None = None, limit: int = 32,
                         shard: tuple[int, int] | None = None) -> list[PendingStudy]:
        """The next `limit` studies lacking embeddings of `model_id`, by StudyInstanceUID after `after`.

        Done means: at least one image embedding (when it has instances) and an embedding of its
        latest report version (when it has a report); see `db.embedding_queries` for why not every
        instance. `shard=(index, count)` keeps only studies with `shard_of(uid, count) == index`.

        Raises:
            StoreError: empty model_id, a limit below 1 or an invalid shard.
        """
        write.check_text("studies_to_embed model_id", model_id)
        write.check_limit("studies_to_embed", limit)
        shard = embedding_queries.check_shard(shard)
        with self._session() as s:
            return embedding_queries.pending_studies(s, model_id, after, limit, shard)

    def embedding_stamp(self, kind: str, model_id: str) -> str:
        """A short string that changes whenever embeddings of (kind, model_id) are added or replaced.

        A vector index saved with the stamp of the rows it was built from is current while the
        stamp matches; counting rows alone would miss a replaced vector (an amended report).
        """
        write.check_kind("embedding_stamp", kind)
        with self._session() as s:
            count, newest = s.execute(
                select(func.count(Embedding.id), func.max(Embedding.created_at)).where(
                    Embedding.kind == kind, Embedding.model_id == model_id
                )
            ).one()
        return f"{count}:{newest.isoformat() if newest is not None else '-'}"

    # ------------------------------------------------------------------ pgvector
    @property
    def pgvector_enabled(self) -> bool:
        """Whether this (PostgreSQL) store keeps its embeddings in pgvector too (`enable_pgvector`)."""
        return self._pgvector

    def enable_pgvector(self) -> int:
        """Keep every embedding in a pgvector column as well, for `search_vectors`; idempotent.

        Returns:
            How many stored embeddings were converted now.

        Raises:
            StoreError: not PostgreSQL, no pgvector on the server, or a role that may not create it.
        """
        with self._session(write=True) as s:
            converted = pgvector.enable(s.connection())
        self._pgvector = True
        return converted

    def create_pgvector_hnsw(self, kind: str, model_id: str, m: int = 16, ef_construction: int = 64) -> int:
        """Build an HNSW index over the (kind, model_id) embeddings: `search_vectors` of them becomes
        approximate (the index's nearest candidates, scored exactly); idempotent.

        Returns:
            The embedding dimension indexed.

        Raises:
            StoreError: pgvector not enabled, unknown kind, or no such embeddings yet.
        """
        write.check_kind("create_pgvector_hnsw", kind)
        with self._session(write=True) as s:
            return pgvector.create_hnsw(s.connection(), kind, model_id, m, ef_construction)

    def search_vectors(self, kind: str, model_id: str, queries: np.ndarray, k: int = 10,
                       filters: dict[str, str | Collection[str]] | None = None, exclude: Collection[str] = (),
                       group_by: str | None = None) -> list[list[VectorHit]]:
        """Cosine search inside PostgreSQL, per row of `queries` [Q, D] (see `db.pgvector.search`): exact,
        or among an HNSW index's candidates where `create_pgvector_hnsw` built one.

        Rows written without their pgvector value (by a process that opened the store before
        pgvector was enabled) are converted first.

        Raises:
            StoreError: pgvector not enabled on this store, unknown kind, or a bad filter.
        """
        write.check_kind("search_vectors", kind)
        if not self._pgvector:
            with self._engine.connect() as connection:  # enabled since this store was opened?
                self._pgvector = pgvector.is_enabled(connection)
            if not self._pgvector:
                raise StoreError(f"search_vectors: pgvector is not enabled on {self!r}; expected enable_pgvector() "
                                 "first (PostgreSQL with the pgvector extension)")
        with self._session() as s:
            missing = pgvector.has_missing(s)
        if missing:
            with self._session(write=True) as s:
                pgvector.fill_missing(s)
        with self._session() as s:
            return pgvector.search_batch(s, kind, model_id, queries, k, filters, exclude, group_by)
