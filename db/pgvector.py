"""pgvector on a PostgreSQL case store: embeddings searched inside the database, exactly.

A store on PostgreSQL keeps every embedding as a float32 blob (`embeddings.vector`, the source of
truth on every database). Enabling pgvector adds, beside it, a `vector` column the server can
score (`embeddings.pg_vector`), so many app servers search one archive without each loading every
vector into memory. The column, its trigger and its partial index are created on demand by
`enable` (`CREATE EXTENSION vector` needs a privileged role, and a store must open on servers
without pgvector), not by a migration; `db.migrations.env` leaves them out of schema comparison.

Keeping the column right, whoever writes: the store fills it with each embedding it writes; a
trigger resets it to NULL when a blob is replaced without it (a writer that predates pgvector on
this store), and `fill_missing` converts NULL rows before each search (a partial index finds them).

Search is exact (a sequential scan, `<=>` cosine distance) with the semantics of
`medcm.index.exact.VectorIndex.search`: case-insensitive filters (a report matches a modality or body
part when any of its study's instances has it), `exclude`, `group_by`, ties by key ascending. An
HNSW index built by `create_hnsw` makes the search of its (kind, model) approximate and fast: the
same query over the index's nearest candidates.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import bindparam, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from db.read import study_tags
from db.records import StoreError

COLUMN = "pg_vector"
TRIGGER = "embeddings_pg_vector_stale"
MISSING_INDEX = "ix_embeddings_pg_vector_missing"
HNSW_PREFIX = "ix_embeddings_hnsw_"  # + kind + "_" + a hash of the model id: one HNSW index per (kind, model)
FILL_BATCH = 2_000  # rows converted per statement batch by fill_missing
HNSW_MAX_FETCH = 1_000  # candidates an HNSW search may ask for (pgvector's ef_search limit); beyond: exact
HNSW_EF_SEARCH = 200  # the least ef_search: recall@10 0.69 at 40 on random 256-d vectors, see BENCHMARKS.md

# Per kind: SQL of each meta field a filter or group_by may name, over the aliases of _search_sql.
_IMAGE_FIELDS = {"study_uid": "st.study_uid", "sop_instance_uid": "i.sop_instance_uid",
                 "modality": "i.modality", "body_part": "i.body_part"}
_REPORT_FIELDS = {"study_uid": "st.study_uid", "report_version": "CAST(n.version AS TEXT)"}
_STUDY_TAGS = {"modality": "i.modality", "body_part": "i.body_part"}  # a report's: any of its study's instances


@dataclass(frozen=True)
class VectorHit:
    """One row found by `search`: its key, cosine similarity to the query and its metadata."""

    key: str
    score: float
    meta: dict[str, str]


def include_object(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    """Alembic's `include_object` hook: leave this module's column and index out of schema comparison."""
    return not (reflected and (name in (COLUMN, MISSING_INDEX) or (name or "").startswith(HNSW_PREFIX)))


def is_enabled(connection: Connection) -> bool:
    """Whether this database's `embeddings` table has the pgvector column (False on SQLite)."""
    if connection.dialect.name != "postgresql":
        return False
    found = connection.execute(text(
        "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()"
        " AND table_name = 'embeddings' AND column_name = :column AND udt_name = 'vector'"), {"column": COLUMN})
    return found.first() is not None


def enable(connection: Connection) -> int:
    """Create the extension, column, trigger and partial index if missing, and fill the column.

    Idempotent; run inside the caller's transaction.

    Returns:
        How many stored embeddings were converted.

    Raises:
        StoreError: not PostgreSQL, pgvector not installed on the server, or a role that may not
            create the extension.
    """
    if connection.dialect.name != "postgresql":
        raise StoreError(f"pgvector: the store is on {connection.dialect.name}; expected PostgreSQL "
                         "(use the exact or faiss index backend)")
    if is_enabled(connection):  # only convert: creating the rest again would need the owner's rights
        return fill_missing(connection)
    available = connection.execute(text("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")).first()
    if available is None:
        raise StoreError("pgvector: the PostgreSQL server has no 'vector' extension; expected pgvector installed "
                         "(Debian: postgresql-NN-pgvector, or build it: scripts/install_pgvector.sh)")
    try:
        with connection.begin_nested():  # a refused CREATE EXTENSION must not abort the caller's transaction
            connection.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
    except DBAPIError as err:
        raise StoreError(f"pgvector: CREATE EXTENSION vector failed ({str(err.orig).strip().splitlines()[0]}); "
                         "expected a role allowed to create it (a superuser can run it once per database)") from None
    connection.execute(text(f"ALTER TABLE embeddings ADD COLUMN IF NOT EXISTS {COLUMN} vector"))
    # A row holds the blob and the vector (2 x 4 bytes x D): past PostgreSQL's ~2 kB limit at D=256 one
    # goes to the TOAST table. PLAIN keeps the vector in the row, so a search scans only rows (the
    # blob moves out instead): 7x faster at 10k rows of D=256 here.
    connection.execute(text(f"ALTER TABLE embeddings ALTER COLUMN {COLUMN} SET STORAGE PLAIN"))
    connection.execute(text(
        f"CREATE OR REPLACE FUNCTION {TRIGGER}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        f" IF NEW.vector IS DISTINCT FROM OLD.vector AND NEW.{COLUMN} IS NOT DISTINCT FROM OLD.{COLUMN}"
        f" THEN NEW.{COLUMN} := NULL; END IF; RETURN NEW; END $$"))
    connection.execute(text(f"DROP TRIGGER IF EXISTS {TRIGGER} ON embeddings"))
    connection.execute(text(
        f"CREATE TRIGGER {TRIGGER} BEFORE UPDATE ON embeddings FOR EACH ROW EXECUTE FUNCTION {TRIGGER}()"))
    connection.execute(text(
        f"CREATE INDEX IF NOT EXISTS {MISSING_INDEX} ON embeddings (id) WHERE {COLUMN} IS NULL"))
    converted = fill_missing(connection)
    connection.execute(text("ANALYZE embeddings"))  # plan the first searches on real row counts
    return converted


def write(s: Connection | Session, rows: Sequence[tuple[int, bytes]]) -> None:
    """Set the pgvector column of embedding rows (id, float32 blob), e.g. just after they were written.

    One statement per FILL_BATCH rows, vectors in pgvector's text form: Python's repr of each
    float32 value parses back to the same float32.
    """
    for a in range(0, len(rows), FILL_BATCH):
        batch = rows[a : a + FILL_BATCH]
        vectors = ["[" + ",".join(map(repr, np.frombuffer(blob, "<f4").tolist())) + "]" for _, blob in batch]
        s.execute(text(f"UPDATE embeddings AS e SET {COLUMN} = CAST(v.vec AS vector)"
                       " FROM unnest(CAST(:ids AS INTEGER[]), CAST(:vecs AS TEXT[])) AS v(id, vec) WHERE e.id = v.id"),
                  {"ids": [row_id for row_id, _ in batch], "vecs": vectors})


def fill_missing(connection: Connection | Session) -> int:
    """Convert every embedding whose pgvector column is NULL from its blob; returns how many."""
    done = 0
    while True:
        rows = connection.execute(text(
            f"SELECT id, vector FROM embeddings WHERE {COLUMN} IS NULL ORDER BY id LIMIT {FILL_BATCH}")).all()
        if not rows:
            return done
        write(connection, [(row_id, bytes(blob)) for row_id, blob in rows])
        done += len(rows)


def has_missing(connection: Connection | Session) -> bool:
    """Whether some embedding lacks its pgvector value (answered by the partial index)."""
    return connection.execute(text(f"SELECT 1 FROM embeddings WHERE {COLUMN} IS NULL LIMIT 1")).first() is not None


def hnsw_name(kind: str, model_id: str) -> str:
    """The name of the HNSW index of (kind, model_id) embeddings (PostgreSQL names are at most 63 bytes)."""
    return f"{HNSW_PREFIX}{kind}_{hashlib.sha1(model_id.encode()).hexdigest()[:16]}"


def create_hnsw(connection: Connection, kind: str, model_id: str, m: int = 16, ef_construction: int = 64) -> int:
    """Build an HNSW index over the (kind, model_id) embeddings; searches of them become approximate.

    A partial expression index: only this kind and model, at their dimension (an HNSW index needs one).
    Idempotent. Later writes are indexed as they come.

    Returns:
        The embedding dimension indexed.

    Raises:
        StoreError: pgvector not enabled, or no embeddings of (kind, model_id) to index.
    """
    if not is_enabled(connection):
        raise StoreError("pgvector HNSW: pgvector is not enabled on this store; expected enable_pgvector() first")
    dim = _dim(connection, kind, model_id)
    if dim is None:
        raise StoreError(f"pgvector HNSW: no {kind} embeddings of model {model_id!r}; expected them embedded first")
    connection.execute(text(
        f"CREATE INDEX IF NOT EXISTS {hnsw_name(kind, model_id)} ON embeddings USING hnsw"
        f" ((CAST({COLUMN} AS vector({dim}))) vector_cosine_ops)"
        f" WITH (m = {int(m)}, ef_construction = {int(ef_construction)}) WHERE {_rows_of(kind, model_id)}"))
    return dim


def hnsw_dim(s: Connection | Session, kind: str, model_id: str) -> int | None:
    """The dimension of the HNSW index of (kind, model_id), or None when there is none."""
    found = s.execute(text("SELECT 1 FROM pg_indexes WHERE schemaname = current_schema() AND indexname = :name"),
                      {"name": hnsw_name(kind, model_id)}).first()
    return None if found is None else _dim(s, kind, model_id)


def search(s: Session, kind: str, model_id: str, query: np.ndarray, k: int,
           filters: dict[str, str | Collection[str]] | None = None, exclude: Collection[str] = (),
           group_by: str | None = None) -> list[VectorHit]:
    """The k embeddings of (kind, model_id) nearest `query` [D] by cosine, best first, ties by key.

    Keys and metadata are those of `CaseStore.embedding_matrix` ("image": SOPInstanceUID;
    "report": StudyInstanceUID, its newest report version that has an embedding). Exact, unless
    (kind, model_id) has an HNSW index (`create_hnsw`): then the hits are searched among the index's
    approximate nearest candidates (max(40, 4k) at first, 4x more while fewer than k pass the filters,
    exact past HNSW_MAX_FETCH) and scored exactly.

    Raises:
        StoreError: a filter value that is not a string.
    """
    return search_batch(s, kind, model_id, np.reshape(query, (1, -1)), k, filters, exclude, group_by)[0]


def search_batch(s: Session, kind: str, model_id: str, queries: np.ndarray, k: int,
                 filters: dict[str, str | Collection[str]] | None = None, exclude: Collection[str] = (),
                 group_by: str | None = None) -> list[list[VectorHit]]:
    """`search` for each row of `queries` [Q, D]; the HNSW index is looked up once."""
    dim = hnsw_dim(s, kind, model_id)
    return [_search_one(s, kind, model_id, np.asarray(query, np.float32).tolist(), k, filters, exclude, group_by, dim)
            for query in queries]


def _search_one(s: Session, kind: str, model_id: str, q: list[float], k: int, filters, exclude, group_by,
                dim: int | None) -> list[VectorHit]:
    fetch = max(40, 4 * k)
    while dim is not None and fetch <= HNSW_MAX_FETCH:
        # The graph search keeps ef_search candidates: at least HNSW_EF_SEARCH, for recall (pgvector's default: 40).
        s.execute(text(f"SET LOCAL hnsw.ef_search = {max(fetch, HNSW_EF_SEARCH)}"))
        hits = _run(s, kind, model_id, q, k, filters, exclude, group_by, (dim, fetch))
        if len(hits) >= k:
            return hits
        fetch *= 4
    return _run(s, kind, model_id, q, k, filters, exclude, group_by, None)


def _run(s: Session, kind: str, model_id: str, q: list[float], k: int, filters, exclude, group_by,
         candidates: tuple[int, int] | None) -> list[VectorHit]:
    sql, params = _search_sql(kind, filters or {}, exclude, group_by, model_id, candidates)
    params.update(model_id=model_id, k=k, q=q)
    rows = s.execute(sql, params).all()
    if kind == "image":
        return [VectorHit(row.key, 1.0 - float(row.distance), {"study_uid": row.study_uid, "sop_instance_uid": row.key,
                                                              "modality": row.modality, "body_part": row.body_part})
                for row in rows]
    tags = study_tags(s, [row.study_id for row in rows])  # a report's meta: its study's modalities and body parts
    hits = []
    for row in rows:
        modalities, body_parts = tags.get(row.study_id, ((), ()))
        meta = {"study_uid": row.key, "modality": ",".join(modalities), "body_part": ",".join(body_parts),
                "report_version": str(row.version)}
        hits.append(VectorHit(row.key, 1.0 - float(row.distance), meta))
    return hits


def _dim(s: Connection | Session, kind: str, model_id: str) -> int | None:
    return s.execute(text("SELECT dim FROM embeddings WHERE kind = :kind AND model_id = :model_id LIMIT 1"),
                     {"kind": kind, "model_id": model_id}).scalar()


def _rows_of(kind: str, model_id: str) -> str:
    """SQL literal condition for the rows of (kind, model_id): an HNSW index's predicate, and the search's
    (the planner uses a partial index only for a query whose WHERE visibly implies its predicate)."""
    if kind not in ("image", "report"):
        raise StoreError(f"pgvector: kind {kind!r}; expected 'image' or 'report'")
    return f"kind = '{kind}' AND model_id = '{model_id.replace(chr(39), chr(39) * 2)}'"


def _search_sql(kind: str, filters: dict[str, str | Collection[str]], exclude: Collection[str],
                group_by: str | None, model_id: str = "", candidates: tuple[int, int] | None = None):
    """The search statement and its parameters (all but model_id, k and q).

    `candidates=(dim, fetch)` restricts the search to the `fetch` rows the HNSW index finds nearest.
    """
    fields = _IMAGE_FIELDS if kind == "image" else _REPORT_FIELDS
    key = "i.sop_instance_uid" if kind == "image" else "st.study_uid"
    where, params, expanding = [], {}, []
    for n, (field, allowed) in enumerate(filters.items()):
        values = [allowed] if isinstance(allowed, str) else list(allowed)
        if not all(isinstance(v, str) for v in values):
            raise StoreError(f"pgvector search: filter {field!r} has values {values!r}; expected str or a collection of str")
        if field not in fields and not (kind == "report" and field in _STUDY_TAGS):
            where.append("FALSE")  # as in VectorIndex: a row lacking the field does not match
            continue
        params[f"f{n}"], expanding = [v.casefold() for v in values], expanding + [f"f{n}"]
        if field in fields:
            where.append(f"lower({fields[field]}) IN :f{n}")
        else:
            where.append(f"EXISTS (SELECT 1 FROM series se2 JOIN instances i ON i.series_id = se2.id"
                         f" WHERE se2.study_id = st.id AND lower({_STUDY_TAGS[field]}) IN :f{n})")
    excluded = [exclude] if isinstance(exclude, str) else list(exclude)
    if excluded:
        params["exclude"], expanding = excluded, expanding + ["exclude"]
        where.append(f"{key} NOT IN :exclude")
    prefix = ""
    if candidates is not None:
        dim, fetch = candidates
        prefix = (f"WITH candidates AS MATERIALIZED (SELECT id FROM embeddings WHERE {_rows_of(kind, model_id)}"
                  f" ORDER BY CAST({COLUMN} AS vector({dim})) <=> CAST(CAST(:q AS REAL[]) AS vector({dim}))"
                  f" LIMIT {int(fetch)}) ")
        where.append("e.id IN (SELECT id FROM candidates)")
    condition = " AND ".join(["TRUE", *where])
    distance = f"e.{COLUMN} <=> CAST(CAST(:q AS REAL[]) AS vector)"
    if kind == "image":
        source = ("FROM embeddings e JOIN instances i ON e.instance_id = i.id JOIN series se ON i.series_id = se.id"
                  " JOIN studies st ON se.study_id = st.id"
                  " WHERE e.kind = 'image' AND e.model_id = :model_id AND " + condition)
        columns = f"{key} AS key, st.study_uid, i.modality, i.body_part, {distance} AS distance"
    else:
        newest = ("SELECT DISTINCT ON (r.study_id) r.study_id, r.version, e.id AS embedding_id FROM embeddings e"
                  " JOIN reports r ON e.report_id = r.id WHERE e.kind = 'report' AND e.model_id = :model_id"
                  " ORDER BY r.study_id, r.version DESC")
        source = (f"FROM ({newest}) n JOIN embeddings e ON e.id = n.embedding_id JOIN studies st ON st.id = n.study_id"
                  " WHERE " + condition)
        columns = f"{key} AS key, st.id AS study_id, n.version, {distance} AS distance"
    group = fields.get(group_by) if group_by is not None else None
    if group is None:  # no grouping, or a field the rows lack: each row is a group of its own
        sql = f"SELECT {columns} {source} ORDER BY distance, key LIMIT :k"
    else:  # the best row of each group, then the best groups
        sql = (f"SELECT * FROM (SELECT DISTINCT ON ({group}) {columns} {source} ORDER BY {group}, distance, key) best"
               " ORDER BY distance, key LIMIT :k")
    statement = text(prefix + sql).bindparams(*(bindparam(name, expanding=True) for name in expanding))
    return statement, params
