from __future__ import annotations

import pytest
import torch

from medcm.eval.retrieval import case_retrieval_metrics, first_hit_ranks, mean_recall, recall_at_k


def _brute_force_ranks(similarity, positives):
    ranks = []
    for scores, pos in zip(similarity.tolist(), positives.tolist()):
        best = max(s for s, p in zip(scores, pos) if p)
        ranks.append(1 + sum(1 for s, p in zip(scores, pos) if not p and s >= best))
    return ranks


def test_ranks_match_brute_force_on_random_data():
    g = torch.Generator().manual_seed(0)
    similarity = torch.randn(40, 25, generator=g)
    positives = torch.rand(40, 25, generator=g) < 0.1
    positives[torch.arange(40), torch.randint(0, 25, (40,), generator=g)] = True
    assert first_hit_ranks(similarity, positives).tolist() == _brute_force_ranks(similarity, positives)


def test_ties_count_against_the_query():
    similarity = torch.tensor([[0.5, 0.5, 0.1]])
    assert first_hit_ranks(similarity, torch.tensor([[False, True, False]])).tolist() == [2]


def test_recall_and_median():
    metrics = recall_at_k(torch.tensor([1, 2, 6, 20]), ks=(1, 5, 10))
    assert metrics == {"R@1": 0.25, "R@5": 0.5, "R@10": 0.75, "median_rank": 2.0}


def test_case_level_metrics_count_any_image_of_the_case():
    text = torch.eye(3)
    images = torch.tensor([[1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0], [0.9, 0.1, 0]])
    metrics = case_retrieval_metrics(images, ["a", "c", "b", "a"], text, ["a", "b", "c"])
    assert metrics["image_to_text"]["R@1"] == 1.0
    assert metrics["text_to_image"]["R@1"] == 1.0
    assert mean_recall(metrics) == 1.0
    shuffled = case_retrieval_metrics(images, ["b", "a", "c", "c"], text, ["a", "b", "c"])
    assert shuffled["image_to_text"]["R@1"] == 0.0


def test_a_query_without_positive_is_an_error():
    with pytest.raises(ValueError, match="positive"):
        first_hit_ranks(torch.zeros(1, 2), torch.zeros(1, 2, dtype=torch.bool))
