"""Tests for medcm.model.finding_head: each label's best-F1 threshold folded into the head's bias."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from medcm.config import REPORT_FINDINGS, AuxHeadConfig
from medcm.model.align import DualEncoder
from medcm.model.finding_head import best_f1_thresholds, set_operating_points


def test_best_f1_threshold_sits_between_the_last_kept_and_the_next_logit():
    logits = np.array([[3.0, 0.0], [2.0, 1.0], [1.0, 2.0], [-1.0, 5.0]])
    targets = np.array([[1, 0], [1, 0], [0, 0], [0, 0]])
    # label 0: the two positives rank first; predicting them is F1 1.0, the cut half-way to the next logit.
    # label 1: no positive, the threshold is left at 0.
    np.testing.assert_allclose(best_f1_thresholds(logits, targets), [1.5, 0.0])
    # An interleaved ranking: predicting the top 3 (2 of 2 positives, 1 false) beats the top 1 (F1 0.8 vs 0.67).
    np.testing.assert_allclose(best_f1_thresholds(np.array([[4.0], [3.0], [2.0], [0.0]]),
                                                   np.array([[1], [0], [1], [0]])), [1.0])
    with pytest.raises(ValueError, match=r"\[N, K\]"):
        best_f1_thresholds(np.zeros((3, 2)), np.zeros((3, 1)))


def test_operating_points_move_probability_one_half_to_the_threshold(tiny_config):
    head = AuxHeadConfig(field=REPORT_FINDINGS, classes=("effusion", "normal"), multi_label=True, on_embedding=True)
    model = DualEncoder(dataclasses.replace(tiny_config.model, aux_head=head), tiny_config.preprocess.image_size)
    dim = tiny_config.model.embed_dim
    with torch.no_grad():
        model.aux_head.weight.zero_()
        model.aux_head.weight[0, 0] = 4.0
        model.aux_head.bias.fill_(-3.0)  # every image is below 0.5 before
    vectors = np.zeros((4, dim), np.float32)
    vectors[:, 0] = [1.0, 0.9, 0.2, 0.0]
    targets = np.array([[1, 0], [1, 0], [0, 1], [0, 1]])
    points = set_operating_points(model, vectors, targets)
    probabilities = [model.image_findings(v)["effusion"] for v in vectors]
    assert [p > 0.5 for p in probabilities] == [True, True, False, False]
    # the old probability at the new 0.5 point: sigmoid(4 * (0.9 + 0.2) / 2 - 3)
    assert points["effusion"] == pytest.approx(1 / (1 + np.exp(-(4 * 0.55 - 3))))
    with pytest.raises(ValueError, match="no finding head"):
        set_operating_points(DualEncoder(tiny_config.model, tiny_config.preprocess.image_size), vectors, targets)
