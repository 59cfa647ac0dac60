"""Drafts of a demo archive's held-out studies with and without the image check, on one checkpoint.

    .venv/bin/python scripts/bench_image_check.py --manifest .medcm-demo/archive/manifest.jsonl \
        --checkpoint .medcm-demo/model

The check is `medcm.report.image_findings` fed by the checkpoint's finding head (`DualEncoder.image_findings`);
"retrieval only" drafts the same queries from the same cases without it. Prints, per arm, finding precision,
recall and F1 (finding and side), laterality errors and hallucinating studies (`medcm.eval.findings`), and
BLEU-4 and ROUGE-L of the drafted FINDINGS; and, before any drafting, the share of the k nearest pool images
and reports (k = 1, 5, 10) whose study has the query's finding and side.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", required=True, help="a demo archive's manifest.jsonl (meta: finding, side)")
    parser.add_argument("--checkpoint", required=True, help="a checkpoint or run folder with a finding head")
    args = parser.parse_args()

    import torch

    from medcm.checkpoint import load_checkpoint
    from medcm.data.manifest import read_manifest, split_records
    from medcm.eval.evaluate import cached_sentence_embedder, embed_records, reference_findings, run_drafts
    from medcm.eval.findings import score_texts, study_truth
    from medcm.eval.metrics import draft_metrics
    from medcm.report.draft_types import DRAFT_PRESETS

    checkpoint, device = load_checkpoint(args.checkpoint), torch.device("cpu")
    if checkpoint.model.finding_head() is None:
        print(f"{args.checkpoint}: no finding head (aux_head.field 'report:findings'); nothing to compare")
        return 1
    pool_records, query_records = split_records(read_manifest(args.manifest), "train", "dev", 0.0, 0)
    pool, queries = embed_records(checkpoint, pool_records, device), embed_records(checkpoint, query_records, device)

    truth = {r.case_id: study_truth(r.meta) for r in pool_records + query_records}
    query_truth = [truth[c] for c in queries.image_case]
    for name, matrix, keys in (("image→image", pool.image_emb, pool.image_case),
                               ("image→report", pool.report_emb, pool.case_ids)):
        order = np.argsort(-(queries.image_emb @ matrix.T), axis=1)
        shares = [np.mean([[truth[keys[j]] == t for j in row[:k]] for row, t in zip(order, query_truth)]) for k in (1, 5, 10)]
        print(f"{name}: nearest k = 1 / 5 / 10 sharing finding and side: " + " / ".join(f"{s:.2f}" for s in shares))

    embed, ids = cached_sentence_embedder(checkpoint, device), [r.case_id for r in query_records]
    for name, image_findings in (("retrieval only", None), ("with the image check", checkpoint.model.image_findings)):
        run = run_drafts(queries, pool, embed, DRAFT_PRESETS["consensus"], None, image_findings)
        scores = score_texts([run.reports[c] for c in ids], [truth[c] for c in ids])
        text = draft_metrics([run.findings[c] for c in ids], [reference_findings(r) for r in query_records], meteor=False)
        lat, hal = scores["laterality"], scores["hallucination"]
        print(f"{name}: P/R/F1 {scores['precision']:.3f} / {scores['recall']:.3f} / {scores['f1']:.3f}, laterality "
              f"{lat['errors']}/{lat['named']}, hallucinating {hal['studies']}/{len(ids)}, BLEU-4 {text['BLEU-4']:.4f}, "
              f"ROUGE-L {text['ROUGE-L']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
