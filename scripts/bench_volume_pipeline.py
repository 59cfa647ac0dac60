"""Benchmark: volume encoders through the real training loop, "3d" vs "2.5d" vs slice by slice (issue 7).

Unlike `bench_volume_retrieval.py` (each encoder in its own minimal loop against fixed text
vectors), every run here is `medcm.model.train.train` as `medcm train --volume-encoder KIND` runs it: the
named config (default cpu-small: frozen MiniLM with a trained projection, augmentation, warm-up
and cosine schedule), the checkpoint picked on 10% of the training cases held out, then reloaded.

- "3d": `VolumeEncoder3D` (MONAI 3D ResNet10) on each series;
- "2.5d": the 2D tower over sampled slices with gated attention pooling;
- "none": no volume encoder: every slice is a 2D training pair, and a study is the normalised mean
  of its slices' embeddings, as the engine does for a checkpoint without a volume encoder.

Data: `medcm.data.synthetic_ct` chest CT series (nodule, effusion, rib fracture or normal, with side
and level in the report), a new set per seed. On the dev split: image→report R@1/5/10 among the
distinct dev reports, finding P@1 (the nearest dev report names the case's finding) overall and per
finding, training seconds, and query embedding volumes/s (series already prepared in memory).
Usage:

    .venv/bin/python scripts/bench_volume_pipeline.py [--seeds 0 1 2] [--epochs 20] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medcm.checkpoint import load_checkpoint
from medcm.config import get_config, with_overrides, with_volume_kind
from medcm.data.manifest import PairedImageDataset, read_manifest, records_to_pairs, split_records
from medcm.runtime import cpu_name
from medcm.data.synthetic_ct import FINDINGS, write_volume_dataset
from medcm.model.train import embed_dataset, train

KINDS = ("3d", "2.5d", "none")


def study_vectors(checkpoint, records) -> tuple[torch.Tensor, float]:
    """One normalised vector `[N, D]` per dev case, and query volumes (studies) per second."""
    config = checkpoint.config
    volume = config.model.volume
    dataset = PairedImageDataset(records_to_pairs(records, volumes=volume is not None), config.preprocess,
                                 volume=volume)
    if dataset.errors:
        raise RuntimeError(f"unreadable dev data: {dataset.errors[0]}")
    embed_dataset(checkpoint.model, dataset, config, torch.device("cpu"), batch_size=16)  # warm-up: not timed
    start = time.perf_counter()
    rows = embed_dataset(checkpoint.model, dataset, config, torch.device("cpu"), batch_size=16)
    seconds = time.perf_counter() - start
    cases = [pair.case_id for pair in dataset.pairs]
    vectors = torch.stack([F.normalize(rows[[i for i, c in enumerate(cases) if c == r.case_id]].mean(0), dim=0)
                           for r in records])
    return vectors, len(records) / seconds


def retrieval(vectors: torch.Tensor, records, text_of) -> dict[str, float]:
    """Image→report recall among the distinct dev reports, and finding P@1 (overall and per finding)."""
    reports = list(dict.fromkeys(r.report for r in records))
    finding_of = {r.report: r.meta["finding"] for r in records}
    sims = vectors @ text_of(reports).t()
    own = torch.tensor([reports.index(r.report) for r in records])
    ranks = (sims > sims[torch.arange(len(records)), own][:, None]).sum(dim=1) + 1
    hits = [finding_of[reports[int(k)]] == r.meta["finding"] for k, r in zip(sims.argmax(dim=1), records)]
    out = {f"R@{k}": float((ranks <= k).float().mean()) for k in (1, 5, 10)}
    out["finding P@1"] = float(np.mean(hits))
    for finding in FINDINGS:
        mine = [hit for hit, r in zip(hits, records) if r.meta["finding"] == finding]
        out[f"P@1 {finding}"] = float(np.mean(mine)) if mine else float("nan")
    out["chance R@1"] = 1.0 / len(reports)
    return out


def run(kind: str, manifest: Path, args: argparse.Namespace, seed: int, out: Path) -> dict[str, float]:
    config = with_overrides(get_config(args.config), epochs=args.epochs, batch_size=args.batch, seed=seed)
    config = with_volume_kind(config, kind)
    config = dataclasses.replace(config, preprocess=dataclasses.replace(config.preprocess, image_size=args.size))
    if kind == "3d":
        config = dataclasses.replace(config, model=dataclasses.replace(
            config.model, volume=dataclasses.replace(config.model.volume, size=args.size, depth=args.depth3d)))
    elif kind == "2.5d":
        config = with_volume_kind(config, "2.5d")  # again: its slices take the image size set above
        config = dataclasses.replace(config, model=dataclasses.replace(
            config.model, volume=dataclasses.replace(config.model.volume, n_slices=args.n_slices)))
    records = read_manifest(manifest)
    train_records, val_records = split_records(records, "train", None, 0.1, seed)
    dev = [r for r in records if r.split == "dev"]
    start = time.perf_counter()
    result = train(config, train_records, val_records, out / kind, progress=False)
    seconds = time.perf_counter() - start
    best = load_checkpoint(result.best_dir)
    vectors, rate = study_vectors(best, dev)

    def text_of(texts: list[str]) -> torch.Tensor:
        with torch.no_grad():
            return best.model.encode_text(texts).float()

    pairs = len(records_to_pairs(train_records, volumes=kind != "none"))
    return {**retrieval(vectors, dev, text_of), "train s": seconds, "train pairs": pairs, "query studies/s": rate,
            "best epoch": best.metrics.get("epoch")}


def _cell(values: list[float], digits: int) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(results: dict[str, list[dict]]) -> str:
    quality = ("R@1", "R@5", "R@10", "finding P@1") + tuple(f"P@1 {f}" for f in FINDINGS)
    speed = ("train s", "query studies/s")
    lines = ["| volume encoder | train pairs | " + " | ".join(quality + speed) + " |",
             "|---|---:|" + "---:|" * (len(quality) + len(speed))]
    for kind, runs in results.items():
        cells = [_cell([r[m] for r in runs], 2) for m in quality] + [_cell([r[m] for r in runs], 0) for m in speed]
        lines.append(f"| {kind} | {runs[0]['train pairs']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="cpu-small")
    parser.add_argument("--train", type=int, default=240, help="training cases (10%% of them pick the checkpoint)")
    parser.add_argument("--dev", type=int, default=60, help="dev cases (the retrieval gallery)")
    parser.add_argument("--depth", type=int, default=24, help="slices per synthetic series")
    parser.add_argument("--size", type=int, default=64, help="in-plane pixels, written and encoded")
    parser.add_argument("--depth3d", type=int, default=16, help="resampled depth for the 3d encoder")
    parser.add_argument("--n-slices", type=int, default=8, help="sampled slices for the 2.5d encoder")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="save settings, per-seed results and the table as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results: dict[str, list[dict]] = {kind: [] for kind in args.kinds}
    chance = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix="medcm-volume-pipeline-") as folder:
            manifest = write_volume_dataset(Path(folder) / "data", args.train, args.dev, seed=seed, depth=args.depth,
                                            size=args.size)
            for kind in args.kinds:
                results[kind].append(run(kind, manifest, args, seed, Path(folder)))
                chance.append(results[kind][-1]["chance R@1"])
                print(f"seed {seed} {kind}: " + ", ".join(f"{k} {v:.3g}" for k, v in results[kind][-1].items()
                                                           if isinstance(v, float)), flush=True)
    header = (f"{cpu_name()}, {args.threads} threads, torch {torch.__version__}; config {args.config}; {args.train} train "
              f"/ {args.dev} dev cases of [{args.depth}, {args.size}, {args.size}], {args.epochs} epochs, batch "
              f"{args.batch}, seeds {args.seeds}; chance R@1 {statistics.mean(chance):.3f}")
    text = table(results)
    print(f"\n{header}\n\n{text}")
    if args.out:
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        args.out.write_text(json.dumps({"settings": settings, "header": header, "results": results, "table": text},
                                       indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
