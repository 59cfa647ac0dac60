"""Retrieval metrics at case level: Recall@K and median rank."""

from __future__ import annotations

import torch

DEFAULT_KS = (1, 5, 10)


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
