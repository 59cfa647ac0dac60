"""Search latency at scale: bare numpy matmul vs VectorIndex (float32, float16) vs FaissIndex (IndexFlatIP).

Seeded random L2-normalised float32 vectors [N, 256]; for each size, the median latency of one
query top-10 and of a batch of 64 queries, the build time and the bytes each index holds its rows in.
Every method runs on 2 threads. Prints a markdown table naming the machine.

    .venv/bin/python scripts/bench_search.py --sizes 10000 100000 1000000
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "2")  # before numpy loads its BLAS

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402

from medcm.index.exact import VectorIndex  # noqa: E402
from medcm.runtime import cpu_name  # noqa: E402

DIM, K, BATCH = 256, 10, 64


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of `fn` in ms over `repeats` runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def bare_topk(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Top-k row numbers [Q, k] of `queries` [Q, D] @ `vectors` [N, D].T by argpartition (unsorted)."""
    scores = queries @ vectors.T
    return np.argpartition(-scores, k, axis=1)[:, :k]


def methods(vectors: np.ndarray, keys: list[str]) -> dict[str, tuple[float, int, Callable]]:
    """Name -> (build seconds, bytes of the rows, search(queries [Q, D])) for each method available here."""
    out: dict[str, tuple[float, int, Callable]] = {}
    out["numpy matmul + argpartition"] = (0.0, vectors.nbytes, lambda q: bare_topk(vectors, q, K))
    for dtype in ("float32", "float16"):
        start = time.perf_counter()
        index = VectorIndex.build(keys, vectors, None, "bench", dtype=dtype)
        out[f"VectorIndex {dtype}"] = (time.perf_counter() - start, index.vectors.nbytes,
                                       lambda q, index=index: index.search_batch(q, K))
    try:
        import faiss
    except ImportError:
        print("faiss-cpu not installed: FAISS rows skipped (pip install 'medcm[faiss]')")
        return out
    faiss.omp_set_num_threads(2)
    from medcm.index.faiss import FaissIndex

    start = time.perf_counter()
    flat = faiss.IndexFlatIP(DIM)
    flat.add(vectors)
    out["faiss IndexFlatIP (bare)"] = (time.perf_counter() - start, vectors.nbytes, lambda q: flat.search(q, K))
    start = time.perf_counter()
    fast = FaissIndex(VectorIndex.build(keys, vectors, None, "bench"))
    out["FaissIndex"] = (time.perf_counter() - start, fast.vectors.nbytes, lambda q: fast.search_batch(q, K))
    return out


def bench(n: int, repeats: int) -> list[tuple[str, int, float, int, float, float]]:
    """Rows (method, N, build s, bytes, ms per query, ms per batch of 64) at size `n`."""
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, DIM), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = rng.standard_normal((BATCH, DIM), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    keys = [f"k{i:07d}" for i in range(n)]
    rows = []
    for name, (build_s, nbytes, search) in methods(vectors, keys).items():
        one = timed(lambda: search(queries[:1]), repeats)
        many = timed(lambda: search(queries), max(3, repeats // 4))
        rows.append((name, n, build_s, nbytes, one, many))
        print(f"  {name:30s} N={n:>9,}  1 query {one:8.2f} ms  64 queries {many:9.1f} ms", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=30, help="timed runs per single query (median reported)")
    args = parser.parse_args()
    try:
        import torch

        torch.set_num_threads(2)
    except ImportError:
        pass
    rows = [row for n in args.sizes for row in bench(n, args.repeats)]
    print(f"\nMachine: {cpu_name()}, 2 threads, D={DIM}, top-{K}, numpy {np.__version__}\n")
    print("| method | N | build (s) | rows (MiB) | 1 query (ms) | 64 queries (ms) | per query in batch (ms) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, n, build_s, nbytes, one, many in rows:
        print(f"| {name} | {n:,} | {build_s:.2f} | {nbytes / 2**20:.0f} | {one:.2f} | {many:.1f} | {many / BATCH:.2f} |")


if __name__ == "__main__":
    main()
