"""Search latency inside PostgreSQL (pgvector: exact, and HNSW) against the in-memory exact index.

Fills an empty PostgreSQL database with N image embeddings (4 instances per study, random
L2-normalised float32 [N, 256], modalities CT/MR/CR) through `CaseStore`, enables pgvector, and
reports per size: the time to write the embeddings with and without the pgvector column, the time
to enable pgvector on stored rows, the time to load the in-memory index from the store, and the
median latency of one query (top-10) for three searches the app makes, after a VACUUM ANALYZE (as
autovacuum runs after a bulk write): exact in the database, through an HNSW index (with its recall of
the exact top-10), and in memory. Checks that exact search in the database and in memory agree.
The database is emptied first and after: give it a throw-away one.

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

from db import pgvector  # noqa: E402
from db.store import CaseStore, EmbeddingInput, InstanceInput  # noqa: E402
from medcm.index.exact import VectorIndex  # noqa: E402
from medcm.runtime import cpu_name  # noqa: E402

from bench_search import DIM, K, timed  # noqa: E402

MODEL, PER_STUDY, CHUNK, RECALL_QUERIES = "bench", 4, 5_000, 50
CLUSTER_SPREAD = 0.5  # noise norm around a centre: cosine to the centre ~0.9
SEARCHES = {  # name -> search options, as medcm.engine.facade asks them
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


def make_vectors(rng: np.random.Generator, n: int, clusters: int) -> np.ndarray:
    """n unit vectors [n, D]: uniformly random (clusters=0: the hardest case for HNSW), or around
    `clusters` fixed random centres (cosine ~0.9 to their centre), as a trained model's embeddings
    gather by anatomy and finding."""
    noise = rng.standard_normal((n, DIM), dtype=np.float32)
    if clusters:
        centres = np.random.default_rng(12345).standard_normal((clusters, DIM), dtype=np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        noise = centres[rng.integers(0, clusters, n)] + CLUSTER_SPREAD * noise / np.sqrt(DIM)
    return noise / np.linalg.norm(noise, axis=1, keepdims=True)


def fill(store: CaseStore, n: int, rng: np.random.Generator, clusters: int) -> tuple[np.ndarray, float]:
    """Store n instances and their embeddings; returns the vectors and the seconds spent writing embeddings."""
    vectors = make_vectors(rng, n, clusters)
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


def bench(url: str, n: int, repeats: int, clusters: int) -> tuple[list[tuple], tuple]:
    """Search rows (n, search, pgvector exact ms, HNSW ms, HNSW recall@K, in-memory ms) and the
    setup row (n, write s blob only, write s with pgvector, enable s, load s, HNSW build s)."""
    rng = np.random.default_rng(0)
    empty(url)
    with CaseStore(url) as store:  # pgvector off: blobs only
        _, plain_write = fill(store, n, rng, clusters)
        start = time.perf_counter()
        store.enable_pgvector()  # converts the n stored rows
        enable_s = time.perf_counter() - start
    empty(url)
    with CaseStore(url) as store:
        store.enable_pgvector()  # on an empty store: every write below fills the column too
        _, pg_write = fill(store, n, rng, clusters)
        vacuum(url)
        start = time.perf_counter()
        matrix = store.embedding_matrix("image", MODEL)
        index = VectorIndex.build(list(matrix.keys), matrix.vectors, list(matrix.meta), MODEL)
        load_s = time.perf_counter() - start
        queries = make_vectors(rng, RECALL_QUERIES, clusters)  # queries like the archive's vectors
        exact = {}
        for name, options in SEARCHES.items():
            exact[name] = [[h.key for h in index.search(q, K, **options)] for q in queries]
            for query, want in zip(queries[:3], exact[name]):  # the same answers, or the timing means nothing
                assert [h.key for h in store.search_vectors("image", MODEL, query[None], K, **options)[0]] == want
        start = time.perf_counter()
        store.create_pgvector_hnsw("image", MODEL)  # searches of these vectors now go through HNSW
        build_s = time.perf_counter() - start
        vacuum(url)
        rows = []
        for name, options in SEARCHES.items():
            found = [[h.key for h in hits] for hits in store.search_vectors("image", MODEL, queries, K, **options)]
            recall = sum(len(set(f) & set(e)) for f, e in zip(found, exact[name])) / sum(map(len, exact[name]))
            hnsw_ms = timed(lambda: store.search_vectors("image", MODEL, queries[:1], K, **options), repeats)
            with store._session(write=True) as s:  # drop the index for the exact timing, then rebuild it
                s.execute(text(f"DROP INDEX {pgvector.hnsw_name('image', MODEL)}"))
            pg_ms = timed(lambda: store.search_vectors("image", MODEL, queries[:1], K, **options), repeats)
            store.create_pgvector_hnsw("image", MODEL)
            exact_ms = timed(lambda: index.search(queries[0], K, **options), repeats)
            rows.append((n, name, pg_ms, hnsw_ms, recall, exact_ms))
            print(f"  N={n:>8,} {name:34s} pgvector exact {pg_ms:8.1f} ms, HNSW {hnsw_ms:6.1f} ms "
                  f"(recall@{K} {recall:.3f}); in-memory exact {exact_ms:7.2f} ms", flush=True)
    empty(url)
    setup = (n, plain_write, pg_write, enable_s, load_s, build_s)
    print(f"  N={n:>8,} writes: {plain_write:.1f} s without pgvector, {pg_write:.1f} s with; enabling on "
          f"{n:,} stored rows {enable_s:.1f} s; loading the in-memory index {load_s:.1f} s; "
          f"HNSW build {build_s:.1f} s", flush=True)
    return rows, setup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=os.environ.get("MEDCM_TEST_POSTGRES_URL"),
                        help="an empty throw-away PostgreSQL database (default: $MEDCM_TEST_POSTGRES_URL)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--clusters", type=int, default=0,
                        help="vectors around this many centres, like a trained model's (default 0: uniform)")
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per search (median reported)")
    args = parser.parse_args()
    if not args.db:
        parser.error("--db: no PostgreSQL URL given and MEDCM_TEST_POSTGRES_URL is not set")
    results = [bench(args.db, n, args.repeats, args.clusters) for n in args.sizes]
    engine = create_engine(args.db)
    with engine.connect() as conn:
        server = conn.execute(text("SHOW server_version")).scalar_one()
        version = conn.execute(text("SELECT default_version FROM pg_available_extensions WHERE name = 'vector'"))
        version = version.scalar_one()
    engine.dispose()
    data = f"vectors around {args.clusters} centres" if args.clusters else "uniformly random vectors"
    print(f"\nMachine: {cpu_name()}; PostgreSQL {server} on loopback, default settings; pgvector {version}; "
          f"D={DIM}, top-{K}, {PER_STUDY} images per study, {data}; recall over {RECALL_QUERIES} queries\n")
    print(f"| N | search | pgvector exact (ms) | pgvector HNSW (ms) | HNSW recall@{K} | in-memory exact (ms) |")
    print("|---:|---|---:|---:|---:|---:|")
    for rows, _ in results:
        for n, name, pg_ms, hnsw_ms, recall, exact_ms in rows:
            print(f"| {n:,} | {name} | {pg_ms:.1f} | {hnsw_ms:.1f} | {recall:.3f} | {exact_ms:.2f} |")
    print("\n| N | write s, blob only | write s, + pgvector | enable on stored rows (s) | load in-memory index (s) "
          "| build HNSW (s) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for _, (n, plain_write, pg_write, enable_s, load_s, build_s) in results:
        print(f"| {n:,} | {plain_write:.1f} | {pg_write:.1f} | {enable_s:.1f} | {load_s:.1f} | {build_s:.1f} |")


if __name__ == "__main__":
    main()
