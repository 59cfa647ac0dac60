"""Benchmark: ingest, search and drafting speed, each against a bare baseline measured in the same run.

1. Ingest throughput (files/s) into a SQLite store, with and without embeddings, vs a bare
   pydicom read + decode of the same files.
2. Search latency at 10k and 100k stored embeddings (exact cosine, top-10) vs a bare
   `matrix @ query` + `np.argpartition` top-k over the same vectors.
3. Time from a DICOM file on disk to a finished draft, with the ingested cases as the pool.

The model is an untrained cpu-small (timings do not depend on the weights). Usage:

    .venv/bin/python scripts/bench_store.py [--files 300] [--config cpu-small]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
import torch

from db.store import CaseStore
from medcm.model.align import DualEncoder
from medcm.checkpoint import save_checkpoint
from medcm.config import get_config
from medcm.engine.facade import Engine
from medcm.engine.ingest import read_images
from medcm.index.exact import VectorIndex
from medcm.data.synthetic_radiographs import write_dataset


def _median_seconds(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_ingest(tmp: Path, n_files: int, checkpoint: Path) -> list[tuple[str, str]]:
    write_dataset(tmp / "data", n_train=n_files, n_dev=0, image_size=256)
    cases = tmp / "data" / "cases"
    files = sorted(cases.rglob("*.dcm"))
    start = time.perf_counter()
    for file in files:
        pydicom.dcmread(file).pixel_array
    bare = time.perf_counter() - start
    start = time.perf_counter()
    Engine(CaseStore(f"sqlite:///{tmp / 'plain.db'}")).ingest([cases])
    plain = time.perf_counter() - start
    engine = Engine(CaseStore(f"sqlite:///{tmp / 'cases.db'}"), checkpoint=checkpoint, device="cpu")
    start = time.perf_counter()
    engine.ingest([cases])
    embedded = time.perf_counter() - start
    start = time.perf_counter()
    engine.ingest([cases])  # everything already stored: read and hashed, not re-rendered or re-embedded
    again = time.perf_counter() - start
    rows = [
        (f"bare pydicom read+decode, {len(files)} files (256 px)", f"{len(files) / bare:.0f} files/s"),
        ("ingest: metadata + preview + report, one transaction", f"{len(files) / plain:.0f} files/s ({plain / bare:.1f}x bare time)"),
        ("ingest with image and report embeddings (cpu-small)", f"{len(files) / embedded:.0f} files/s ({embedded / bare:.1f}x bare time)"),
        ("re-ingest of the same files (all already stored)", f"{len(files) / again:.0f} files/s ({again / bare:.1f}x bare time)"),
    ]
    query = read_images([cases / "train-00003" / "image.dcm"])[0]
    engine.draft(query)  # warm: builds the indexes and loads the text model's caches
    draft_time = _median_seconds(lambda: engine.draft(read_images([cases / "train-00003" / "image.dcm"])[0]), 5)
    rows.append((f"DICOM on disk → finished draft ({len(files)} cases in the pool, median of 5)", f"{draft_time * 1000:.0f} ms"))
    return rows


def bench_search(n: int, dim: int) -> list[tuple[str, str]]:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    meta = [{"study_uid": f"s{i // 3}", "modality": "CT" if i % 2 else "MR"} for i in range(n)]
    index = VectorIndex.build([f"k{i}" for i in range(n)], vectors, meta, "bench")
    queries = [v / np.linalg.norm(v) for v in rng.standard_normal((20, dim)).astype(np.float32)]

    def bare(q):
        scores = vectors @ q
        top = np.argpartition(-scores, 10)[:10]
        return top[np.argsort(-scores[top])]

    t_bare = statistics.median(_median_seconds(lambda q=q: bare(q), 1) for q in queries)
    t_index = statistics.median(_median_seconds(lambda q=q: index.search(q, k=10), 1) for q in queries)
    t_filter = statistics.median(_median_seconds(lambda q=q: index.search(q, k=10, filters={"modality": "CT"}), 1) for q in queries)
    t_group = statistics.median(_median_seconds(lambda q=q: index.search(q, k=10, group_by="study_uid"), 1) for q in queries)
    return [
        (f"{n:,} x {dim}: bare matmul + top-10", f"{t_bare * 1000:.2f} ms"),
        (f"{n:,} x {dim}: VectorIndex.search top-10", f"{t_index * 1000:.2f} ms ({t_index / t_bare:.2f}x bare)"),
        (f"{n:,} x {dim}: with a modality filter", f"{t_filter * 1000:.2f} ms ({t_filter / t_bare:.2f}x bare)"),
        (f"{n:,} x {dim}: grouped by study", f"{t_group * 1000:.2f} ms ({t_group / t_bare:.2f}x bare)"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--config", default="cpu-small")
    args = parser.parse_args()
    config = get_config(args.config)
    torch.manual_seed(0)
    rows = [("torch threads", str(torch.get_num_threads()))]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkpoint = save_checkpoint(tmp / "model", DualEncoder(config.model, config.preprocess.image_size), config)
        rows += bench_ingest(tmp, args.files, checkpoint)
    for n in (10_000, 100_000):
        rows += bench_search(n, config.model.embed_dim)
    print(f"| measurement ({args.config}) | result |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
