"""Benchmark: the anatomy prior's weights on one or more checkpoints, MedPix dev against train (tuning on dev only).

Embeds the pool and the queries once per checkpoint, then scores every (modality weight, region weight)
pair of the grid: image→report recall, image→image region/modality P@1, and draft BLEU-4 / ROUGE-L
(consensus preset; no METEOR, to keep the sweep fast). Prints one markdown table with mean ± sd over the
checkpoints (seeds). Usage:

    .venv/bin/python scripts/bench_anatomy_prior.py --data ../shared/data/medpix-2.0 --checkpoints runs/medpix-bench/seed*/best
"""

from __future__ import annotations

import argparse
import itertools
import statistics

import torch

from medcm.checkpoint import load_checkpoint
from medcm.config import AnatomyPriorConfig
from medcm.data.manifest import read_dataset
from medcm.eval.evaluate import (cached_sentence_embedder, draft_reports, embed_records, reference_findings,
                                 retrieval_metrics)
from medcm.eval.metrics import draft_metrics
from medcm.report.draft import DRAFT_PRESETS

COLUMNS = ("i→r R@1", "i→r R@10", "region P@1", "modality P@1", "BLEU-4", "ROUGE-L")


def score_checkpoint(path: str, pool_records, query_records, grid) -> dict[tuple[float, float], dict[str, float]]:
    """Every grid point's metrics for one checkpoint."""
    checkpoint = load_checkpoint(path)
    device = torch.device("cpu")
    pool = embed_records(checkpoint, pool_records, device)
    queries = embed_records(checkpoint, query_records, device)
    embedder = cached_sentence_embedder(checkpoint, device)
    references = {r.case_id: reference_findings(r) for r in queries.records}
    out = {}
    for modality_weight, region_weight in grid:
        prior = AnatomyPriorConfig(modality_weight=modality_weight, region_weight=region_weight)
        retrieval = retrieval_metrics(queries, pool, prior)
        drafts, _ = draft_reports(queries, pool, embedder, DRAFT_PRESETS["consensus"], prior)
        scored = [c for c in drafts if references.get(c)]
        draft = draft_metrics([drafts[c] for c in scored], [references[c] for c in scored], meteor=False)
        out[(modality_weight, region_weight)] = {
            "i→r R@1": retrieval["image_to_report"]["R@1"], "i→r R@10": retrieval["image_to_report"]["R@10"],
            "region P@1": retrieval["region_P@1"], "modality P@1": retrieval["modality_P@1"],
            "BLEU-4": draft["BLEU-4"], "ROUGE-L": draft["ROUGE-L"]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the MedPix 2.0 folder")
    parser.add_argument("--checkpoints", nargs="+", required=True, help="one checkpoint per seed")
    parser.add_argument("--modality-weights", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.2])
    parser.add_argument("--region-weights", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.2, 0.4])
    args = parser.parse_args()
    records = read_dataset(args.data, "medpix")
    pool = [r for r in records if r.split == "train"]
    queries = [r for r in records if r.split == "dev"]
    grid = list(itertools.product(args.modality_weights, args.region_weights))
    runs = [score_checkpoint(path, pool, queries, grid) for path in args.checkpoints]
    print("| modality w | region w | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 2) + "|")
    for point in grid:
        cells = []
        for column in COLUMNS:
            values = [run[point][column] for run in runs if run[point][column] is not None]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.3f} ± {sd:.3f}" if values else "n/a")
        print(f"| {point[0]} | {point[1]} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
