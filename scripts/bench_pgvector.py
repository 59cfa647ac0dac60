"""Search latency inside PostgreSQL (pgvector, exact) against the in-memory exact index, on one store.

Fills an empty PostgreSQL database with N image embeddings (4 instances per study, random
L2-normalised float32 [N, 256], modalities CT/MR/CR) through `CaseStore`, enables pgvector, and
reports per size: the time to write the embeddings with and without the pgvector column, the time
to enable pgvector on stored rows, the time to load the in-memory index from the store, and the
median latency of one query (top-10) for three searches the app makes, after a VACUUM ANALYZE (as
autovacuum runs after a bulk write). Checks that both backends return the same keys. The database is emptied first and after: give it a throw-away one.

    export MEDCM_TEST_POSTGRES_URL=$(bash scripts/start_test_postgres.sh)
    .venv/bin/python scripts/bench_pgvector.py --sizes 10000 100000
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "2")  # before numpy loads its BLAS

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402

from db.store import CaseStore, EmbeddingInput, InstanceInput  # noqa: E402
from medcm.index import VectorIndex  # noqa: E402
from medcm.runtime import cpu_name  # noqa: E402

from bench_search import DIM, K, timed  # noqa: E402

MODEL, PER_STUDY, CHUNK = "bench", 4, 5_000
SEARCHES = {  # name -> search options, as medcm.engine asks them
    "top-10 images": {},
    "top-10 studies (best image each)": {"group_by": "study_uid"},
    "top-10 studies, modality MR": {"group_by": "study_uid", "filters": {"modality": "MR"}},
}


def empty(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA public CASCADE")
        conn.exec_driver_sql("CREATE SCHEMA public")
    engine.dispose()


def vacuum(url: str) -> None:
    """VACUUM ANALYZE the embeddings, as autovacuum does some time after a bulk write."""
    engine = create_engine(url, isolation_level="AUTOCOMMIT")  # VACUUM cannot run in a transaction
    with engine.connect() as conn:
        conn.exec_driver_sql("VACUUM ANALYZE embeddings")
    engine.dispose()


def fill(store: CaseStore, n: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Store n instances and their embeddings; returns the vectors and the seconds spent writing embeddings."""
    vectors = rng.standard_normal((n, DIM), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    modalities = rng.choice(["CT", "MR", "CR"], n)
    writing = 0.0
    for a in range(0, n, CHUNK):
        rows = range(a, min(a + CHUNK, n))
        store.ingest([InstanceInput(f"9.{i}", f"8.{i // PER_STUDY}", f"7.{i // PER_STUDY}", "", f"/b/{i}.dcm",
                                    f"{i:064x}", {"modality": str(modalities[i]), "body_part": "CHEST"})
                      for i in rows])
        start = time.perf_counter()
        store.add_embeddings([EmbeddingInput("image", f"9.{i}", MODEL, vectors[i]) for i in rows])
        writing += time.perf_counter() - start
    return vectors, writing


def bench(url: str, n: int, repeats: int) -> list[tuple]:
    rng = np.random.default_rng(0)
    empty(url)
    with CaseStore(url) as store:  # pgvector off: blobs only
        _, plain_write = fill(store, n, rng)
        start = time.perf_counter()
        store.enable_pgvector()  # converts the n stored rows
        enable_s = time.perf_counter() - start
    empty(url)
    with CaseStore(url) as store:
        store.enable_pgvector()  # on an empty store: every write below fills the column too
        vectors, pg_write = fill(store, n, rng)
        vacuum(url)
        start = time.perf_counter()
        matrix = store.embedding_matrix("image", MODEL)
        index = VectorIndex.build(list(matrix.keys), matrix.vectors, list(matrix.meta), MODEL)
        load_s = time.perf_counter() - start
        queries = rng.standard_normal((3, DIM), dtype=np.float32)
        rows = []
        for name, options in SEARCHES.items():
            for query in queries:  # the same answers, or the timing means nothing
                in_db = store.search_vectors("image", MODEL, query[None], K, **options)[0]
                assert [h.key for h in in_db] == [h.key for h in index.search(query, K, **options)], name
            pg_ms = timed(lambda: store.search_vectors("image", MODEL, queries[:1], K, **options), repeats)
            exact_ms = timed(lambda: index.search(queries[0], K, **options), repeats)
            rows.append((n, name, pg_ms, exact_ms))
            print(f"  N={n:>8,} {name:34s} pgvector {pg_ms:8.1f} ms  in-memory exact {exact_ms:7.2f} ms", flush=True)
    empty(url)
    print(f"  N={n:>8,} writes: {plain_write:.1f} s without pgvector, {pg_write:.1f} s with; enabling on "
          f"{n:,} stored rows {enable_s:.1f} s; loading the in-memory index {load_s:.1f} s", flush=True)
    return [(*row, plain_write, pg_write, enable_s, load_s) for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=os.environ.get("MEDCM_TEST_POSTGRES_URL"),
                        help="an empty throw-away PostgreSQL database (default: $MEDCM_TEST_POSTGRES_URL)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per search (median reported)")
    args = parser.parse_args()
    if not args.db:
        parser.error("--db: no PostgreSQL URL given and MEDCM_TEST_POSTGRES_URL is not set")
    rows = [row for n in args.sizes for row in bench(args.db, n, args.repeats)]
    engine = create_engine(args.db)
    with engine.connect() as conn:
        server = conn.execute(text("SHOW server_version")).scalar_one()
        pgvector = conn.execute(text("SELECT default_version FROM pg_available_extensions WHERE name = 'vector'"))
        pgvector = pgvector.scalar_one()
    engine.dispose()
    print(f"\nMachine: {cpu_name()}; PostgreSQL {server} on loopback, default settings; pgvector {pgvector}; "
          f"D={DIM}, top-{K}, {PER_STUDY} images per study\n")
    print("| N | search | pgvector (ms) | in-memory exact (ms) | write s, blob only | write s, + pgvector "
          "| enable on stored rows (s) | load in-memory index (s) |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for n, name, pg_ms, exact_ms, plain_write, pg_write, enable_s, load_s in rows:
        print(f"| {n:,} | {name} | {pg_ms:.1f} | {exact_ms:.2f} | {plain_write:.1f} | {pg_write:.1f} | "
              f"{enable_s:.1f} | {load_s:.1f} |")


if __name__ == "__main__":
    main()
