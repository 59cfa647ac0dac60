"""Case-level retrieval metrics (Recall@K, median rank) and `medcm eval`'s retrieval block (`retrieval_metrics`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from medcm.config import AnatomyPriorConfig
from medcm.eval.anatomy import Anatomy
from medcm.index.anatomy import anatomy_bonus, prior_scores

EmbeddedSet = Any  # `medcm.eval.evaluate.EmbeddedSet` (not imported: evaluate imports this module)

DEFAULT_KS = (1, 5, 10)
CURVE_KS = (1, 2, 3, 5, 10, 15, 20, 30, 50)


def first_hit_ranks(similarity: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """1-based rank of the best-ranked positive for each query.

    Args:
        similarity: `[Q, N]` scores, higher is more similar.
        positives: `[Q, N]` bool, True where item n is a correct answer for query q.

    Returns:
        `[Q]` long ranks (ties count against the query: a positive tied with a negative ranks below it).

    Raises:
        ValueError: shapes differ or a query has no positive.
    """
    if similarity.shape != positives.shape or similarity.ndim != 2:
        raise ValueError(f"similarity {tuple(similarity.shape)} and positives {tuple(positives.shape)} must be equal [Q, N]")
    positives = positives.bool()
    if not positives.any(dim=1).all():
        raise ValueError("every query needs at least one positive item")
    best_positive = similarity.masked_fill(~positives, float("-inf")).max(dim=1).values
    # Negatives scoring at least as high as the best positive rank above it.
    beaten_by = ((similarity >= best_positive[:, None]) & ~positives).sum(dim=1)
    return beaten_by + 1


def recall_at_k(ranks: torch.Tensor, ks: tuple[int, ...] = DEFAULT_KS) -> dict[str, float]:
    """Share of queries whose first positive is within the top K, plus the median rank."""
    metrics = {f"R@{k}": float((ranks <= k).float().mean()) for k in ks}
    metrics["median_rank"] = float(ranks.float().median())
    return metrics


def case_retrieval_metrics(
    image_emb: torch.Tensor,
    image_cases: list[str],
    text_emb: torch.Tensor,
    text_cases: list[str],
    ks: tuple[int, ...] = DEFAULT_KS,
) -> dict[str, dict[str, float]]:
    """Image→text and text→image retrieval where a hit is any item of the query's own case.

    Args:
        image_emb: `[I, D]` normalised image embeddings.
        image_cases: case id of each image.
        text_emb: `[T, D]` normalised report embeddings (one per case).
        text_cases: case id of each report.

    Returns:
        `{"image_to_text": {...}, "text_to_image": {...}}` with `R@k` and `median_rank`.
    """
    similarity = image_emb.float() @ text_emb.float().t()
    ids = {case: i for i, case in enumerate(dict.fromkeys([*image_cases, *text_cases]))}
    image_ids = torch.tensor([ids[c] for c in image_cases])
    text_ids = torch.tensor([ids[c] for c in text_cases])
    same_case = image_ids[:, None] == text_ids[None, :]
    return {
        "image_to_text": recall_at_k(first_hit_ranks(similarity, same_case), ks),
        "text_to_image": recall_at_k(first_hit_ranks(similarity.t(), same_case.t()), ks),
    }


def mean_recall(metrics: dict[str, dict[str, float]]) -> float:
    """The mean of every R@k in both directions: one number to pick the best checkpoint by."""
    values = [v for direction in metrics.values() for k, v in direction.items() if k.startswith("R@")]
    return sum(values) / len(values)


def ranking_scores(similarity: np.ndarray, query: Anatomy, candidates: Anatomy, prior: AnatomyPriorConfig | None) -> np.ndarray:
    """Scores `[Q, N]` to rank candidates by: the cosine, or with a prior the cosine plus its anatomy bonus."""
    if prior is None or not prior.active:
        return similarity
    bonus = anatomy_bonus(query.modalities, candidates.modalities, query.regions, candidates.regions, prior)
    return prior_scores(similarity, bonus, prior.candidates)


def retrieval_metrics(queries: EmbeddedSet, pool: EmbeddedSet, prior: AnatomyPriorConfig | None = None) -> dict[str, Any]:
    """Case-level image↔report recall within the queries; image→image region/modality precision against the pool.

    With `prior`, image queries rank reports and images by cosine plus the anatomy bonus (a report
    by its case's images' anatomy); report queries carry no anatomy and rank by cosine.
    """
    if not len(queries.image_case):
        raise ValueError("no query image could be read; nothing to evaluate")
    cosine = queries.image_emb @ queries.report_emb.T
    own = _own_case(queries)
    image_to_report = ranking_scores(cosine, queries.anatomy(), queries.case_anatomy(), prior)
    out: dict[str, Any] = {
        "image_to_report": recall_at_k(first_hit_ranks(torch.from_numpy(image_to_report), own), DEFAULT_KS),
        "report_to_image": recall_at_k(first_hit_ranks(torch.from_numpy(cosine).t(), own.t()), DEFAULT_KS),
    }
    out["image_to_report_curve"] = recall_curve(queries, image_to_report)
    similarity = ranking_scores(queries.image_emb @ pool.image_emb.T, queries.anatomy(), pool.anatomy(), prior)
    top = np.argsort(-similarity, axis=1, kind="stable")[:, :5]
    for key, field_name, k in (("region_P@1", "region", 1), ("region_P@5", "region", 5), ("modality_P@1", "modality", 1)):
        out[key] = _precision_at_k(top[:, :k], queries.image_meta, pool.image_meta, field_name)
    return out


def _own_case(queries: EmbeddedSet) -> torch.Tensor:
    """`[I, C]` True where report column c is image row i's own case."""
    case_index = {c: i for i, c in enumerate(queries.case_ids)}
    positives = torch.zeros(len(queries.image_case), len(case_index), dtype=torch.bool)
    for row, case in enumerate(queries.image_case):
        positives[row, case_index[case]] = True
    return positives


def recall_curve(queries: EmbeddedSet, scores: np.ndarray | None = None) -> dict[str, float]:
    """Image→report case-level recall at each K of `CURVE_KS` (for the plot), by `scores` (default: cosine)."""
    similarity = torch.from_numpy(queries.image_emb @ queries.report_emb.T if scores is None else scores)
    ranks = first_hit_ranks(similarity, _own_case(queries))
    return {str(k): float((ranks <= k).float().mean()) for k in CURVE_KS if k <= len(queries.case_ids)}


def _precision_at_k(top: np.ndarray, query_meta: list[dict], pool_meta: list[dict], field_name: str) -> float | None:
    """Mean share of the top-k pool images that share the query image's `field_name` (queries lacking it skipped)."""
    scores = []
    for row, meta in enumerate(query_meta):
        want = str(meta.get(field_name) or "")
        if want:
            scores.append(np.mean([str(pool_meta[j].get(field_name) or "") == want for j in top[row]]))
    return float(np.mean(scores)) if scores else None
