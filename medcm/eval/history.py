"""The clinical question measured: retrieval and drafting with and without each query's History blended in.

MedPix cases carry a History (the clinical question the images were taken for), kept in a record's
`meta["history"]` by `medcm.data.medpix`. The "with" arm blends each query case's History embedding into
its image query as the engine blends a study's clinical question (`medcm.engine.question.blend_query`):
per image row for image→report recall and image→image precision, per case for drafting (ranking and
sentence scores; the finding head and the image scores that decide sides keep the image query). The
anatomy prior keeps each image's own anatomy. What the text tower sees on the pool side is unchanged:
a report's FINDINGS and IMPRESSION (`report_text_for_training`), never its HISTORY, so the History does
not meet itself in the pool; in the within-dev image→report recall the query's own report is also its
Findings and Diagnosis only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from medcm.engine.question import blend_query, blend_rows

__all__ = ["HISTORY_KEY", "blended_queries", "case_vectors", "history_block", "history_lines", "history_texts",
           "summary"]

HISTORY_KEY = "history"  # the record metadata field holding the clinical question
RETRIEVAL_KEYS = ("region_P@1", "region_P@5", "modality_P@1")


def history_texts(records: Sequence[Any]) -> dict[str, str]:
    """Case id → its History, for the records that have one."""
    return {r.case_id: text.strip() for r in records if (text := str(r.meta.get(HISTORY_KEY) or "")).strip()}


def case_vectors(queries: Any) -> dict[str, np.ndarray]:
    """One image query per query case: the normalised mean of its image rows (`medcm.eval.evaluate.query_vectors`)."""
    rows: dict[str, list[np.ndarray]] = {}
    for case, vector in zip(queries.image_case, queries.image_emb):
        rows.setdefault(case, []).append(vector)
    return {case: (m := np.mean(r, axis=0)) / max(float(np.linalg.norm(m)), 1e-12) for case, r in rows.items()}


def blended_queries(queries: Any, vectors: dict[str, np.ndarray], weight: float) -> tuple[Any, dict[str, np.ndarray]]:
    """The query set with its image rows blended with their case's History vector, and the per-case blended
    drafting queries (of the cases in `vectors`).

    Args:
        queries: the embedded queries (`medcm.eval.evaluate.EmbeddedSet`).
        vectors: case id → History text embedding `[D]`.
        weight: the History's share of the blend.
    """
    dim = queries.image_emb.shape[1]
    rows = np.stack([vectors.get(case, np.zeros(dim, np.float32)) for case in queries.image_case]) \
        if queries.image_case else np.zeros((0, dim), np.float32)
    has = np.array([case in vectors for case in queries.image_case], dtype=bool)
    blended = dataclasses.replace(queries, image_emb=blend_rows(queries.image_emb, rows, has, weight),
                                  image_anatomy=queries.anatomy())  # the anatomy stays each image's own
    per_case = {case: blend_query(vector, vectors[case], weight)
                for case, vector in case_vectors(queries).items() if case in vectors}
    return blended, per_case


def summary(retrieval: dict[str, Any], draft: dict[str, float]) -> dict[str, Any]:
    """One arm: image→report recall, image→image precision and the draft metrics."""
    return {"image_to_report": retrieval["image_to_report"], **{k: retrieval[k] for k in RETRIEVAL_KEYS},
            "draft": draft}


def history_block(queries: Any, encode: Callable[[list[str]], np.ndarray], weight: float, without: dict[str, Any],
                  retrieve: Callable[[Any], dict[str, Any]],
                  draft: Callable[[dict[str, np.ndarray]], dict[str, float]]) -> dict[str, Any] | None:
    """Retrieval and drafting with each query's History blended in at `weight`, beside `without` (the image-only arm).

    Args:
        queries: the embedded queries (`EmbeddedSet`); their records' `meta["history"]` are the questions.
        encode: the text encoder (`[N] texts → [N, D]`).
        weight: the History's share of the blend (`QuestionConfig.weight`).
        without: the image-only arm, `summary(...)` of the evaluation's own retrieval and draft.
        retrieve: the retrieval metrics of a query set (`retrieval_metrics` against the pool, with the
            image-only arm's prior).
        draft: the draft metrics when each case in the given map drafts from that query vector (`run_drafts`'
            `text_queries`, with the image-only arm's settings).

    Returns:
        None when no query has a History; else the weight, the number of queries with one, and both arms.
    """
    texts = history_texts(queries.records)
    if not texts:
        return None
    cases = list(texts)
    vectors = dict(zip(cases, np.asarray(encode([texts[c] for c in cases]), np.float32)))
    blended, per_case = blended_queries(queries, vectors, weight)
    return {"weight": weight, "queries": len(queries.records), "queries_with_history": len(texts),
            "pool_text": "FINDINGS and IMPRESSION of each pool report (never its HISTORY)",
            "without": without, "with": summary(retrieve(blended), draft(per_case))}


def history_lines(block: dict[str, Any]) -> list[str]:
    """The history block as markdown: both arms side by side, and what the text tower sees."""
    columns = [*((f"i→r {k}", lambda a, k=k: a["image_to_report"][k]) for k in ("R@1", "R@5", "R@10")),
               *((key, lambda a, key=key: a[key]) for key in RETRIEVAL_KEYS),
               *((key, lambda a, key=key: a["draft"].get(key)) for key in ("BLEU-4", "ROUGE-L", "METEOR"))]
    lines = ["## The clinical question (History)", "",
             f"{block['queries_with_history']} of {block['queries']} queries carry a History; the \"with\" arm blends "
             f"its text embedding into the image query at weight {block['weight']:g} (retrieval and draft; the anatomy "
             f"prior and the finding head keep the image). The pool side is {block['pool_text']}.", "",
             "| arm | " + " | ".join(name for name, _ in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for arm in ("without", "with"):
        values = [get(block[arm]) if block[arm] else None for _, get in columns]
        lines.append(f"| {arm} History | " + " | ".join("–" if v is None else f"{v:.4f}" for v in values) + " |")
    return lines + [""]
