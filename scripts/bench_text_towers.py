"""Benchmark: how well text towers group MedPix reports by anatomy, before any image is involved.

Each tower embeds every MedPix 2.0 report (mean-pooled transformer states, the input of the text
projection); each dev report's nearest train reports by cosine are scored as report→report region P@1
and P@5, location P@1 (MedPix's finer "Location") and modality P@1. No training and no seed: a frozen
tower gives one number. Adapted towers come from `medcm train` checkpoints (`--checkpoint`, one per
seed: mean ± sd). Also reports the embedding time per 100 reports. Usage:

    .venv/bin/python scripts/bench_text_towers.py --data ../shared/data/medpix-2.0 \\
        --models all-MiniLM-L6-v2 all-mpnet-base-v2 --checkpoint runs/medpix-bench/medpix-cpu/seed*
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter
from pathlib import Path

import torch

from medcm.checkpoint import load_checkpoint
from medcm.config import TextEncoderConfig
from medcm.data.medpix import read_medpix
from medcm.data.records import ManifestRecord
from medcm.model.encoders.text import TextEncoder

FIELDS = ("region", "location", "modality")
BATCH = 16


def case_labels(record: ManifestRecord) -> dict[str, str | None]:
    """A case's region and modality (case metadata) and its most common image "location"."""
    locations = Counter(meta.get("location") for meta in record.image_meta
                        if meta.get("location") not in (None, "", "Left Blank"))
    return {"region": record.meta.get("region"), "modality": record.meta.get("modality"),
            "location": locations.most_common(1)[0][0] if locations else None}


@torch.no_grad()
def embed(tower: TextEncoder, texts: list[str]) -> tuple[torch.Tensor, float]:
    """L2-normalised pooled states `[N, H]` (whole transformer, eval mode) and seconds per 100 texts."""
    tower.eval()
    start = time.perf_counter()
    rows = torch.cat([tower.pooled(texts[i : i + BATCH]).float() for i in range(0, len(texts), BATCH)])
    return torch.nn.functional.normalize(rows, dim=1), 100 * (time.perf_counter() - start) / len(texts)


def knn_scores(queries: torch.Tensor, pool: torch.Tensor, query_labels: list[dict], pool_labels: list[dict]) -> dict[str, float]:
    """Region P@1/P@5, location P@1 and modality P@1 of each query's nearest pool rows (labelled queries only)."""
    top = (queries @ pool.T).topk(5, dim=1).indices.tolist()
    scores: dict[str, float] = {}
    for name, k in (("region", 1), ("region", 5), ("location", 1), ("modality", 1)):
        hits = [sum(pool_labels[j][name] == labels[name] for j in row[:k]) / k
                for row, labels in zip(top, query_labels) if labels[name]]
        scores[f"{name} P@{k}"] = sum(hits) / len(hits)
    return scores


def fmt(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the MedPix 2.0 folder")
    parser.add_argument("--models", nargs="*", default=["all-MiniLM-L6-v2"],
                        help="frozen towers: a packaged model name or a local folder")
    parser.add_argument("--checkpoint", nargs="*", default=[], help="medcm checkpoints whose text tower to score")
    parser.add_argument("--max-length", type=int, default=256)
    args = parser.parse_args()
    records = read_medpix(args.data)
    pool = [r for r in records if r.split == "train"]
    queries = [r for r in records if r.split == "dev"]
    pool_labels, query_labels = [case_labels(r) for r in pool], [case_labels(r) for r in queries]
    towers: list[tuple[str, TextEncoder]] = []
    for name in args.models:
        path = None if name == "all-MiniLM-L6-v2" else name
        towers.append((f"{name} (frozen)", TextEncoder(TextEncoderConfig(model_path=path, max_length=args.max_length), 64, "linear")))
    for folder in args.checkpoint:
        checkpoint = load_checkpoint(folder)
        towers.append((f"{checkpoint.config.name} text tower (adapted)", checkpoint.model.text))
    rows: dict[str, list[dict[str, float]]] = {}
    for label, tower in towers:
        pool_rows, per_100 = embed(tower, [r.report for r in pool])
        query_rows, _ = embed(tower, [r.report for r in queries])
        rows.setdefault(label, []).append({**knn_scores(query_rows, pool_rows, query_labels, pool_labels),
                                           "s per 100 reports": per_100})
        print(label, rows[label][-1], flush=True)
    heads = list(next(iter(rows.values()))[0])
    print(f"\nMedPix 2.0 dev reports ({len(queries)}) against train reports ({len(pool)}), report→report kNN")
    print("| text tower | runs | " + " | ".join(heads) + " |\n" + "|---" * (len(heads) + 2) + "|")
    for label, runs in rows.items():
        print(f"| {label} | {len(runs)} | " + " | ".join(fmt([r[h] for r in runs]) for h in heads) + " |")


if __name__ == "__main__":
    main()
