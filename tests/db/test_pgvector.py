"""pgvector on a PostgreSQL case store: search inside the database answers as the exact index does.

Runs where a PostgreSQL server with pgvector is given (CI: scripts/start_test_postgres.sh after
scripts/install_pgvector.sh) and sets MEDCM_TEST_POSTGRES_URL.
"""

from __future__ import annotations

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.orm import Session

from db import pgvector
from db.models import Base
from db.store import CaseStore, EmbeddingInput, InstanceInput, ReportInput, StoreError
from medcm.index.exact import VectorIndex

MODEL, OTHER_MODEL, DIM = "model-a", "model-b", 16
MODALITIES, BODY_PARTS = ("CT", "MR", "CR"), ("CHEST", "HEAD", "Abdomen")


def random_archive(rng: np.random.Generator, studies: int = 40) -> tuple[list[InstanceInput], list[ReportInput]]:
    """Studies of 1-4 instances over 1-2 series, mixed modalities and body parts; most have a report."""
    instances, reports = [], []
    for s in range(studies):
        study = f"2.{s}"
        for n in range(int(rng.integers(1, 5))):
            series = f"2.{s}.{n % 2}"
            metadata = {"modality": str(rng.choice(MODALITIES)), "body_part": str(rng.choice(BODY_PARTS))}
            instances.append(InstanceInput(f"2.{s}.{n % 2}.{n}", study, series, f"P{s % 7}", f"/a/{s}-{n}.dcm",
                                           f"{s:032x}{n:032x}", metadata))
        if s % 5:
            reports.append(ReportInput(study, f"FINDINGS: case {s}.", [("FINDINGS", f"case {s}.")]))
    return instances, reports


def filled_store(url: str, seed: int = 0) -> CaseStore:
    """A store with image and report embeddings of two models; some studies have a newer report version
    without an embedding (so the search must use the newest version that has one)."""
    rng = np.random.default_rng(seed)
    store = CaseStore(url)
    instances, reports = random_archive(rng)
    store.ingest(instances, reports)
    vectors = [EmbeddingInput("image", i.sop_instance_uid, model, rng.standard_normal(DIM).astype(np.float32))
               for i in instances for model in (MODEL, OTHER_MODEL)]
    vectors += [EmbeddingInput("report", r.study_uid, model, rng.standard_normal(DIM).astype(np.float32))
                for r in reports for model in (MODEL, OTHER_MODEL)]
    store.add_embeddings(vectors)
    for report in reports[::3]:  # an amendment, not embedded
        store.sign_report(report.study_uid, report.text + " Amended.", report.sections, "dr-a")
    return store


def exact_index(store: CaseStore, kind: str, model: str = MODEL) -> VectorIndex:
    matrix = store.embedding_matrix(kind, model)
    return VectorIndex.build(list(matrix.keys), matrix.vectors, list(matrix.meta), model)


def assert_same_hits(got, want) -> None:
    assert [h.key for h in got] == [h.key for h in want]
    assert [h.meta for h in got] == [h.meta for h in want]
    np.testing.assert_allclose([h.score for h in got], [h.score for h in want], atol=1e-5)


SEARCHES = [
    dict(kind="image", k=5),
    dict(kind="image", k=7, group_by="study_uid"),
    dict(kind="image", k=4, filters={"modality": "ct"}, group_by="study_uid"),
    dict(kind="image", k=6, filters={"modality": ["MR", "CR"], "body_part": "abdomen"}),
    dict(kind="image", k=3, exclude=["2.0.0.0", "2.1.0.0"], group_by="modality"),
    dict(kind="image", k=500),  # more than there are: every row, in order
    dict(kind="image", k=3, filters={"unknown_field": "x"}),  # rows lack the field: none match
    dict(kind="report", k=5),
    dict(kind="report", k=5, filters={"modality": "MR"}),  # any instance of the study
    dict(kind="report", k=4, filters={"body_part": ["HEAD", "chest"], "modality": "CT"}, exclude=["2.1", "2.2"]),
    dict(kind="report", k=3, filters={"report_version": "1"}, group_by="study_uid"),
]


@pytest.mark.parametrize("search", SEARCHES, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_search_in_postgres_answers_as_the_exact_index(postgres_url, search):
    with filled_store(postgres_url) as store:
        with store._engine.connect() as conn:
            stored = conn.execute(text("SELECT count(*) FROM embeddings")).scalar_one()
        assert store.enable_pgvector() == stored  # every stored row converted
        index = exact_index(store, search["kind"])
        queries = np.random.default_rng(1).standard_normal((4, DIM)).astype(np.float32)
        options = {name: value for name, value in search.items() if name != "kind"}
        got = store.search_vectors(search["kind"], MODEL, queries, **options)
        for query, hits in zip(queries, got):
            assert_same_hits(hits, index.search(query, **options))
        assert len(got[0]) == min(search["k"], len(index.search(queries[0], **{**options, "k": 10_000})))


def test_writes_after_enabling_fill_the_column_and_stale_writers_are_caught(postgres_url):
    with filled_store(postgres_url) as store:
        stale = CaseStore(postgres_url)  # opened before pgvector: writes blobs only
        assert not stale.pgvector_enabled
        store.enable_pgvector()
        assert store.enable_pgvector() == 0  # idempotent: nothing left to convert
        rng = np.random.default_rng(5)
        new = rng.standard_normal(DIM).astype(np.float32)
        store.add_embeddings([EmbeddingInput("image", "2.0.0.0", MODEL, new)])  # replaced, with its vector
        with store._engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM embeddings WHERE pg_vector IS NULL")).scalar_one() == 0
        hit = store.search_vectors("image", MODEL, new[None], k=1)[0][0]
        assert hit.key == "2.0.0.0" and hit.score == pytest.approx(1.0, abs=1e-6)

        replaced = rng.standard_normal(DIM).astype(np.float32)
        stale.add_embeddings([EmbeddingInput("image", "2.0.0.0", MODEL, replaced)])  # the trigger clears its vector
        with store._engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM embeddings WHERE pg_vector IS NULL")).scalar_one() == 1
        hit = store.search_vectors("image", MODEL, replaced[None], k=1)[0][0]  # converted before searching
        assert hit.key == "2.0.0.0" and hit.score == pytest.approx(1.0, abs=1e-6)
        assert_same_hits(store.search_vectors("image", MODEL, new[None], k=10)[0],
                         exact_index(store, "image").search(new, k=10))
        stale.close()


@pytest.mark.filterwarnings("ignore:Did not recognize type 'vector'")  # SQLAlchemy reflects it as NullType
def test_an_enabled_store_still_matches_its_migrations(postgres_url):
    with filled_store(postgres_url) as store:
        store.enable_pgvector()
        reopened = CaseStore(postgres_url)  # sees the column at open
        assert reopened.pgvector_enabled
        with reopened._engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"include_object": pgvector.include_object})  # as env.py
            assert compare_metadata(context, Base.metadata) == []
        reopened.close()


def test_pgvector_needs_postgres_and_enabling(tmp_path, postgres_url):
    with CaseStore(f"sqlite:///{tmp_path / 'cases.db'}") as store:
        with pytest.raises(StoreError, match="the store is on sqlite; expected PostgreSQL"):
            store.enable_pgvector()
        with pytest.raises(StoreError, match="pgvector is not enabled"):
            store.search_vectors("image", MODEL, np.ones((1, DIM), np.float32))
    with filled_store(postgres_url) as store:
        with pytest.raises(StoreError, match="filter 'modality' has values"):
            store.enable_pgvector()
            store.search_vectors("image", MODEL, np.ones((1, DIM), np.float32), filters={"modality": [1]})


@pytest.mark.filterwarnings("ignore:Did not recognize type 'vector'")  # SQLAlchemy reflects it as NullType
def test_an_hnsw_index_is_used_and_finds_nearly_the_exact_hits(postgres_url):
    with filled_store(postgres_url) as store:
        with pytest.raises(StoreError, match="pgvector is not enabled"):
            store.create_pgvector_hnsw("image", MODEL)
        store.enable_pgvector()
        with pytest.raises(StoreError, match="no image embeddings of model 'unknown'"):
            store.create_pgvector_hnsw("image", "unknown")
        for kind in ("image", "report"):
            assert store.create_pgvector_hnsw(kind, MODEL) == DIM
        assert store.create_pgvector_hnsw("image", MODEL) == DIM  # idempotent
        queries = np.random.default_rng(2).standard_normal((20, DIM)).astype(np.float32)
        with Session(store._engine) as s, s.begin():
            # A table this small is scanned and sorted, not searched through its index: forbid scans
            # and sorts, so these searches go through HNSW; the plan shows the partial index matches.
            for setting in ("enable_seqscan", "enable_bitmapscan", "enable_sort"):
                s.execute(text(f"SET LOCAL {setting} = off"))
            sql, params = pgvector._search_sql("image", {}, (), None, MODEL, (DIM, 40))
            params.update(model_id=MODEL, k=10, q=queries[0].tolist())
            plan = "\n".join(row[0] for row in s.execute(text("EXPLAIN " + sql.text), params))
            assert f"Index Scan using {pgvector.hnsw_name('image', MODEL)}" in plan
            for kind, options in [("image", {}), ("image", {"group_by": "study_uid"}),
                                  ("report", {"exclude": ["2.1"]}), ("image", {"filters": {"modality": "MR"}})]:
                index = exact_index(store, kind)
                found = [{h.key for h in pgvector.search(s, kind, MODEL, q, 5, **options)} for q in queries]
                exact = [{h.key for h in index.search(q, 5, **options)} for q in queries]
                recall = sum(len(f & e) for f, e in zip(found, exact)) / sum(map(len, exact))
                assert [len(f) for f in found] == [len(e) for e in exact] and recall >= 0.9, (kind, options, recall)
            # A filter too selective for the candidates: the search widens, then scans exactly.
            only = exact_index(store, "image").search(queries[0], 3, filters={"sop_instance_uid": "2.7.0.0"})
            assert [h.key for h in pgvector.search(s, "image", MODEL, queries[0], 3,
                                                  filters={"sop_instance_uid": "2.7.0.0"})] == [h.key for h in only]
        with store._engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"include_object": pgvector.include_object})
            assert compare_metadata(context, Base.metadata) == []
