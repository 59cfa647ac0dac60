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
`medcm.index.VectorIndex.search`: case-insensitive filters (a report matches a modality or body
part when any of its study's instances has it), `exclude`, `group_by`, ties by key ascending.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import bindparam, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from db._views import study_tags
from db.records import StoreError

COLUMN = "pg_vector"
TRIGGER = "embeddings_pg_vector_stale"
MISSING_INDEX = "ix_embeddings_pg_vector_missing"
FILL_BATCH = 2_000  # rows converted per statement batch by fill_missing

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
    return not (reflected and name in (COLUMN, MISSING_INDEX))


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


def search(s: Session, kind: str, model_id: str, query: np.ndarray, k: int,
           filters: dict[str, str | Collection[str]] | None = None, exclude: Collection[str] = (),
           group_by: str | None = None) -> list[VectorHit]:
    """The k embeddings of (kind, model_id) nearest `query` [D] by cosine, best first, ties by key.

    Keys and metadata are those of `CaseStore.embedding_matrix` ("image": SOPInstanceUID;
    "report": StudyInstanceUID, its newest report version that has an embedding).

    Raises:
        StoreError: a filter value that is not a string.
    """
    sql, params = _search_sql(kind, filters or {}, exclude, group_by)
    params.update(model_id=model_id, k=k, q=np.asarray(query, np.float32).tolist())
    rows = s.execute(sql, params).all()
    hits = [VectorHit(row.key, 1.0 - float(row.distance), _meta(kind, row)) for row in rows]
    return _with_study_tags(s, hits) if kind == "report" else hits


def _search_sql(kind: str, filters: dict[str, str | Collection[str]], exclude: Collection[str],
                group_by: str | None):
    """The search statement and its parameters (all but model_id, k and q)."""
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
    statement = text(sql).bindparams(*(bindparam(name, expanding=True) for name in expanding))
    return statement, params


def _meta(kind: str, row) -> dict[str, str]:
    if kind == "image":
        return {"study_uid": row.study_uid, "sop_instance_uid": row.key, "modality": row.modality,
                "body_part": row.body_part}
    return {"study_uid": row.key, "report_version": str(row.version), "_study_id": str(row.study_id)}


def _with_study_tags(s: Session, hits: list[VectorHit]) -> list[VectorHit]:
    """Report hits with their study's modalities and body parts, as `embedding_matrix` gives them."""
    ids = [int(hit.meta["_study_id"]) for hit in hits]
    tags = study_tags(s, ids)
    tagged = []
    for hit, study_id in zip(hits, ids):
        modalities, body_parts = tags.get(study_id, ((), ()))
        meta = {"study_uid": hit.key, "modality": ",".join(modalities), "body_part": ",".join(body_parts),
                "report_version": hit.meta["report_version"]}
        tagged.append(VectorHit(hit.key, hit.score, meta))
    return tagged
