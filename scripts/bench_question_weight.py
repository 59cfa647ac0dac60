"""Benchmark: the clinical question's weight (`QuestionConfig.weight`), tuned on MedPix train only.

Pool = one half of train (`splits.json`'s `train_1`), queries = the other half (`train_2`); dev is never
read. Embeds both once, then for each weight blends every query's History into its query as `medcm eval`'s
history block does (`medcm.eval.history`) and prints one markdown row per weight: image→report recall,
image→image region/modality P@1, draft BLEU-4 / ROUGE-L (consensus preset, the checkpoint's anatomy prior;
no METEOR, to keep the sweep fast). Usage:

    .venv/bin/python scripts/bench_question_weight.py --data ../shared/data/medpix-2.0 --checkpoint RUN/best \
        --out runs/question-weight.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from medcm.checkpoint import load_checkpoint
from medcm.data.manifest import read_dataset
from medcm.eval.evaluate import (cached_sentence_embedder, embed_records, encode_texts, retrieval_metrics,
                                 scored_drafts)
from medcm.eval.history import history_block
from medcm.report.draft import DRAFT_PRESETS

COLUMNS = ("i→r R@1", "i→r R@5", "i→r R@10", "region P@1", "modality P@1", "BLEU-4", "ROUGE-L")


def row(arm: dict) -> dict[str, float]:
    """The table's columns of one arm of a history block."""
    i2r = arm["image_to_report"]
    return {"i→r R@1": i2r["R@1"], "i→r R@5": i2r["R@5"], "i→r R@10": i2r["R@10"],
            "region P@1": arm["region_P@1"], "modality P@1": arm["modality_P@1"],
            "BLEU-4": arm["draft"]["BLEU-4"], "ROUGE-L": arm["draft"]["ROUGE-L"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the MedPix 2.0 folder (with splits.json's train_1/train_2)")
    parser.add_argument("--checkpoint", required=True, help="a checkpoint trained on MedPix train")
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0])
    parser.add_argument("--pool-half", default="train_1")
    parser.add_argument("--query-half", default="train_2")
    parser.add_argument("--out", help="also write the rows as JSON here")
    args = parser.parse_args()
    halves = json.loads((Path(args.data) / "splits.json").read_text(encoding="utf-8"))
    records = read_dataset(args.data, "medpix")
    pool_ids, query_ids = set(halves[args.pool_half]), set(halves[args.query_half])
    if pool_ids & query_ids or not pool_ids or not query_ids:
        raise SystemExit(f"{args.pool_half} and {args.query_half}: expected two disjoint non-empty halves")
    pool_records = [r for r in records if r.case_id in pool_ids]
    query_records = [r for r in records if r.case_id in query_ids]
    device = torch.device("cpu")
    checkpoint = load_checkpoint(args.checkpoint, device)
    start = time.perf_counter()
    pool = embed_records(checkpoint, pool_records, device)
    queries = embed_records(checkpoint, query_records, device)
    seconds = time.perf_counter() - start
    print(f"embedded {len(pool_records)} pool and {len(query_records)} query cases in {seconds:.0f} s")
    embedder = cached_sentence_embedder(checkpoint, device)
    prior = checkpoint.config.anatomy_prior
    rows = {}
    for weight in args.weights:
        block = history_block(queries, lambda texts: encode_texts(checkpoint, texts, device), weight, {},
                              lambda blended: retrieval_metrics(blended, pool, prior),
                              lambda blend: scored_drafts(queries, pool, embedder, DRAFT_PRESETS["consensus"], prior,
                                                          checkpoint.model.image_findings, blend, meteor=False)[2])
        if block is None:
            raise SystemExit("no query case has a History")
        rows[weight] = row(block["with"])
        print(f"weight {weight}: " + ", ".join(f"{k} {v:.4f}" for k, v in rows[weight].items()), flush=True)
    print(f"\n{block['queries_with_history']} of {block['queries']} queries have a History; prior {prior}\n")
    print("| weight | " + " | ".join(COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for weight, values in rows.items():
        print(f"| {weight:g} | " + " | ".join(f"{values[c]:.3f}" if "BLEU" not in c else f"{values[c]:.4f}"
                                             for c in COLUMNS) + " |")
    if args.out:
        Path(args.out).write_text(json.dumps({str(w): v for w, v in rows.items()}, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
