"""Benchmark: embedding throughput of `medcm embed` (studies/s, images/s) over a synthetic case store.

Two SQLite stores are built (ingested without a checkpoint, so nothing is embedded yet):
- "2D": `--studies` synthetic radiographs (`medcm.data.synthetic_radiographs.write_dataset`, one image and one
  report per study, `--size` px);
- "CT": `--ct-studies` synthetic chest CT series (`medcm.data.synthetic_ct`, `--depth` slices of
  `--size` px; `--ct-studies 0` skips them), embedded one vector per series by the volume encoder.

Each repeat embeds the whole store with a NEW untrained checkpoint of `--config` (another seed, so
another model_id: a study is "done" once it has vectors of that model_id, so every repeat embeds
everything again; the store keeps the earlier models' rows). The run is `medcm.engine.embed_archive.
embed_archive`, the function `Engine.embed_archive` (and `medcm embed`) calls, with the engine and
store wrapped in timers: image encoder (`Engine.embed_visual`: resizing or volume assembly and the
encoders), text encoder, store queries (`studies_to_embed`), store writes (`add_embeddings`); the
rest is reading the files again, decoding DICOM and its display pipeline (`read_instance`). A bare
pydicom read+decode of the same files is the baseline. Medians over `--repeats`; before each repeat
the model embeds one study untimed. Usage:

    .venv/bin/python scripts/bench_embed.py [--studies 500] [--ct-studies 16] [--repeats 3] [--batch-studies 32]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pydicom
import torch

from db.store import CaseStore
from medcm.model.align import DualEncoder
from medcm.checkpoint import save_checkpoint
from medcm.config import MedcmConfig, get_config
from medcm.dicom.read import read_instance
from medcm.engine.embed_archive import EmbedSummary, embed_archive
from medcm.engine.facade import Engine
from medcm.runtime import cpu_name
from medcm.data.synthetic_radiographs import write_dataset
from medcm.data.synthetic_ct import write_volume_dataset

PARTS = ("read + decode + display (rest)", "image encoder", "text encoder", "store queries", "store writes")


class _Timed:
    """Adds the wall time of each call of `method` on `target` to `times[part]`."""

    def __init__(self, target: Any, times: dict[str, float], parts: dict[str, str], device: torch.device) -> None:
        self._target, self._times, self._parts, self._device = target, times, parts, device

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if name not in self._parts:
            return value

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            result = value(*args, **kwargs)
            if self._device.type == "cuda":
                torch.cuda.synchronize(self._device)
            self._times[self._parts[name]] += time.perf_counter() - start
            return result

        return timed


@dataclasses.dataclass(frozen=True)
class Run:
    studies: int
    instances: int
    image_rows: int
    report_rows: int
    seconds: float
    parts: dict[str, float]


def make_checkpoint(config: MedcmConfig, seed: int, folder: Path) -> Path:
    """An untrained checkpoint of `config`; another seed gives other weights, hence another model_id."""
    torch.manual_seed(seed)
    return save_checkpoint(folder, DualEncoder(config.model, config.preprocess.image_size).eval(), config)


def embed_once(url: str, checkpoint: Path, device: str | None, batch_studies: int, warm_files: list[Path]) -> Run:
    """One timed embedding of the whole store at `url` with `checkpoint` (whose vectors it does not hold yet).

    `warm_files` (one study's) are embedded first, untimed."""
    engine = Engine(CaseStore(url), checkpoint=checkpoint, device=device)
    engine.embed_visual([read_instance(str(f), name=str(f)) for f in warm_files])  # untimed warm-up
    engine.embed_texts(["warm-up report text"])
    times: dict[str, float] = defaultdict(float)
    embedder = _Timed(engine, times, {"embed_visual": "image encoder", "embed_texts": "text encoder"}, engine.device)
    store = _Timed(engine.store, times, {"studies_to_embed": "store queries", "add_embeddings": "store writes"},
                   engine.device)
    start = time.perf_counter()
    summary: EmbedSummary = embed_archive(embedder, store, batch_studies, progress=False)
    seconds = time.perf_counter() - start
    if summary.failed:
        raise RuntimeError(f"embedding failed: {summary.failed[0]}")
    times[PARTS[0]] = seconds - sum(times.values())
    return Run(summary.studies, 0, summary.image_embeddings, summary.report_embeddings, seconds, dict(times))


def bare_decode(files: list[Path]) -> float:
    """Seconds of a bare pydicom read + decode of `files`."""
    start = time.perf_counter()
    for file in files:
        pydicom.dcmread(file).pixel_array
    return time.perf_counter() - start


def bench_store(label: str, url: str, files: list[Path], config: MedcmConfig, tmp: Path, args: argparse.Namespace,
                seed0: int) -> list[str]:
    """Markdown rows of one store: studies/s and images/s (median, min–max) and the time split."""
    runs = []
    for repeat in range(args.repeats):
        checkpoint = make_checkpoint(config, seed0 + repeat, tmp / f"ckpt-{label}-{repeat}")
        run = embed_once(url, checkpoint, args.device, args.batch_studies, [f for f in files if f.parent == files[0].parent])
        runs.append(dataclasses.replace(run, instances=len(files)))
        print(f"{label} repeat {repeat + 1}: {run.studies} studies, {len(files)} files, {run.image_rows} image and "
              f"{run.report_rows} report rows in {run.seconds:.1f} s", flush=True)
    seconds = [r.seconds for r in runs]
    median = statistics.median(seconds)
    studies, rows = runs[0].studies, runs[0].image_rows

    def rate(count: int) -> str:
        return f"{count / median:.1f} ({count / max(seconds):.1f}–{count / min(seconds):.1f})"

    split = ", ".join(f"{part} {100 * statistics.median(r.parts.get(part, 0.0) / r.seconds for r in runs):.0f}%"
                      for part in PARTS)
    bare = bare_decode(files)
    return [f"| {label} | {studies} | {len(files)} | {rows} | {median:.1f} | {rate(studies)} | {rate(len(files))} "
            f"| {len(files) / bare:.0f} | {split} |"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=500, help="synthetic 2D studies (default 500)")
    parser.add_argument("--ct-studies", type=int, default=16, help="synthetic CT series studies (default 16; 0: none)")
    parser.add_argument("--depth", type=int, default=32, help="slices per CT series (default 32)")
    parser.add_argument("--size", type=int, default=256, help="image and CT slice side in px (default 256)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs, each with a new model_id (default 3)")
    parser.add_argument("--batch-studies", type=int, default=32, help="studies per batch, as medcm embed (default 32)")
    parser.add_argument("--config", default="cpu-small", help="config of the untrained checkpoint (default cpu-small)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available, as medcm embed)")
    args = parser.parse_args()
    if min(args.studies, args.repeats, args.batch_studies) < 1 or args.ct_studies < 0:
        parser.error("--studies, --repeats and --batch-studies must be >= 1, --ct-studies >= 0")
    config = get_config(args.config)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    where = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else cpu_name()
    print(f"device: {device} ({where}); torch {torch.__version__}, {torch.get_num_threads()} torch threads; "
          f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        stores = []
        write_dataset(tmp / "2d", n_train=args.studies, n_dev=0, image_size=args.size)
        stores.append((f"2D ({args.size} px)", tmp / "2d" / "cases"))
        if args.ct_studies:
            write_volume_dataset(tmp / "ct", n_train=args.ct_studies, n_dev=0, depth=args.depth, size=args.size)
            stores.append((f"CT ({args.depth}x{args.size}x{args.size})", tmp / "ct"))
        for index, (label, folder) in enumerate(stores):
            url = f"sqlite:///{tmp / f'store-{index}.db'}"
            start = time.perf_counter()
            result = Engine(CaseStore(url)).ingest(sorted(p for p in folder.iterdir() if p.is_dir()))
            if result.errors:
                raise RuntimeError(f"ingest failed: {result.errors[0]}")
            files = sorted(folder.rglob("*.dcm"))
            print(f"{label}: ingested {len(files)} files in {time.perf_counter() - start:.1f} s (not timed)", flush=True)
            rows += bench_store(label, url, files, config, tmp, args, seed0=1000 * index)
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}\n")
    print(f"| archive ({args.config}, untrained) | studies | DICOM files | image vectors | seconds (median) "
          "| studies/s median (min–max) | images/s median (min–max) | bare pydicom files/s | time split (median) |")
    print("|---|---:|---:|---:|---:|---|---|---:|---|")
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
