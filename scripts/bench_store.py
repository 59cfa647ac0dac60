"""Benchmark: ingest, search and drafting speed, each against a bare baseline measured in the same run.

1. Ingest throughput (files/s) into a SQLite store, with and without embeddings. Ingest without
   embeddings is compared with a bare pydicom read + decode of the same files (`dcmread(f).pixel_array`).
   Ingest with embeddings is compared with the bare forward time of its encoders: the image tower
   (`encode_image`) and the text tower (`encode_text`) run again, on a freshly loaded copy of the
   same checkpoint (so the frozen text tower's cache starts empty, as it did for the ingest), over
   the very inputs the ingest handed them (the prepared image batches and the report texts,
   recorded during the ingest) in the same batches, timed in the same run. Both models get the
   same one-batch warm-up first. Tokenising is part of the text tower's forward time; reading,
   decoding, preparing images, previews and the store are not.
2. Search latency at 10k and 100k stored embeddings (exact cosine, top-10) vs a bare
   `matrix @ query` + `np.argpartition` top-k over the same vectors.
3. Time from a DICOM file on disk to a finished draft, with the ingested cases as the pool.

The model is an untrained cpu-small (timings do not depend on the weights). Usage:

    .venv/bin/python scripts/bench_store.py [--files 300] [--config cpu-small] [--repeats 3]

The ingest timings are the best of `--repeats` runs, each into a new database, bare and ingest
runs interleaved: the development machine is shared, and a burst of load from elsewhere should
not land on one side of a ratio only.
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
from medcm.checkpoint import load_checkpoint, save_checkpoint
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


class _Recorder:
    """Wraps a model's `encode_image` and `encode_text` to keep every batch they are given (the
    synthetic radiographs here never reach `encode_volume`)."""

    def __init__(self, model: DualEncoder) -> None:
        self.images: list[torch.Tensor] = []
        self.texts: list[list[str]] = []
        encode_image, encode_text = model.encode_image, model.encode_text

        def record_image(images: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            self.images.append(images)
            return encode_image(images, *args, **kwargs)

        def record_text(texts: list[str], *args, **kwargs) -> torch.Tensor:
            self.texts.append(list(texts))
            return encode_text(texts, *args, **kwargs)

        model.encode_image, model.encode_text = record_image, record_text


@torch.no_grad()
def _warm_up(model: DualEncoder, image_size: int) -> None:
    model.encode_image(torch.zeros(1, 1, image_size, image_size))
    model.encode_text(["warm-up"])


@torch.no_grad()
def _bare_forward(model: DualEncoder, recorded: _Recorder) -> float:
    start = time.perf_counter()
    for images in recorded.images:
        model.encode_image(images)
    for texts in recorded.texts:
        model.encode_text(texts)
    return time.perf_counter() - start


def _time(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def bench_ingest(tmp: Path, n_files: int, checkpoint: Path, repeats: int) -> list[tuple[str, str]]:
    write_dataset(tmp / "data", n_train=n_files, n_dev=0, image_size=256)
    cases = tmp / "data" / "cases"
    files = sorted(cases.rglob("*.dcm"))
    bare, plain, embedded, forward = [], [], [], []
    for repeat in range(repeats):  # interleaved, so a burst of load from elsewhere hits both sides of a ratio
        bare.append(_time(lambda: [pydicom.dcmread(file).pixel_array for file in files]))
        plain_engine = Engine(CaseStore(f"sqlite:///{tmp / f'plain-{repeat}.db'}"))  # opening: not ingest
        plain.append(_time(lambda: plain_engine.ingest([cases])))
        engine = Engine(CaseStore(f"sqlite:///{tmp / f'cases-{repeat}.db'}"), checkpoint=checkpoint, device="cpu")
        image_size = engine.checkpoint.config.preprocess.image_size
        _warm_up(engine.checkpoint.model, image_size)
        recorded = _Recorder(engine.checkpoint.model)
        embedded.append(_time(lambda: engine.ingest([cases])))
        fresh = load_checkpoint(checkpoint, "cpu").model.eval()
        _warm_up(fresh, image_size)
        forward.append(_bare_forward(fresh, recorded))
        del fresh
    bare_s, plain_s, embedded_s, forward_s = min(bare), min(plain), min(embedded), min(forward)
    n_images, n_texts = sum(len(batch) for batch in recorded.images), sum(len(batch) for batch in recorded.texts)
    again = _time(lambda: engine.ingest([cases]))  # all stored: read and hashed, not re-rendered or re-embedded
    best = f", best of {repeats}" if repeats > 1 else ""
    rows = [
        (f"bare pydicom read+decode, {len(files)} files (256 px){best}", f"{len(files) / bare_s:.0f} files/s"),
        ("ingest: metadata + preview + report, one transaction",
         f"{len(files) / plain_s:.0f} files/s ({plain_s / bare_s:.1f}x bare time)"),
        (f"bare forward: image tower over {n_images} prepared images + text tower over {n_texts} reports, "
         f"in ingest's batches ({len(recorded.images)} + {len(recorded.texts)}){best}", f"{forward_s:.2f} s"),
        ("ingest with image and report embeddings (cpu-small)",
         f"{len(files) / embedded_s:.0f} files/s ({embedded_s / bare_s:.1f}x bare time, "
         f"{embedded_s / forward_s:.2f}x bare forward)"),
        ("re-ingest of the same files (all already stored)",
         f"{len(files) / again:.0f} files/s ({again / bare_s:.1f}x bare time)"),
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
    parser.add_argument("--repeats", type=int, default=3, help="ingest timings: the best of this many runs")
    args = parser.parse_args()
    config = get_config(args.config)
    torch.manual_seed(0)
    rows = [("torch threads", str(torch.get_num_threads()))]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkpoint = save_checkpoint(tmp / "model", DualEncoder(config.model, config.preprocess.image_size), config)
        rows += bench_ingest(tmp, args.files, checkpoint, args.repeats)
    for n in (10_000, 100_000):
        rows += bench_search(n, config.model.embed_dim)
    print(f"| measurement ({args.config}) | result |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
