"""Calibration of similarities on an archive's own studies: percentiles, thresholds, leave-one-study-out neighbours."""

from __future__ import annotations

import numpy as np
import pytest

from medcm.index.calibration import (
    Calibration,
    calibrate,
    neighbour_similarities,
    percentile_of,
    study_means,
    threshold_of,
)

REFERENCE = np.arange(1, 21) / 20.0  # 0.05, 0.10, ..., 1.00


@pytest.mark.parametrize("value, expected", [
    (0.0, 0.0), (0.05, 5.0), (0.07, 5.0), (0.5, 50.0), (0.999, 95.0), (1.0, 100.0), (7.0, 100.0)])
def test_percentile_is_the_share_of_the_reference_at_or_below(value, expected):
    assert percentile_of(REFERENCE, value) == pytest.approx(expected)


def test_percentile_of_an_empty_reference_is_none():
    assert percentile_of(np.zeros(0), 0.5) is None


@pytest.mark.parametrize("below, expected", [(0.0, None), (5.0, 0.05), (5.1, 0.10), (10.0, 0.10), (50.0, 0.5),
                                             (100.0, 1.0)])
def test_threshold_is_the_least_value_reaching_the_percentile(below, expected):
    assert threshold_of(REFERENCE, below) == (None if expected is None else pytest.approx(expected))


def test_below_the_threshold_exactly_when_below_the_percentile():
    rng = np.random.default_rng(0)
    reference = np.sort(np.round(rng.normal(0.7, 0.1, 37), 2))  # rounded: ties
    for below in (1.0, 2.5, 5.0, 10.0, 33.3):
        threshold = threshold_of(reference, below)
        for value in np.concatenate([reference, reference + 1e-4, reference - 1e-4]):
            assert (percentile_of(reference, value) < below) == (value < threshold), (below, value)


def test_threshold_refuses_a_percentile_out_of_range():
    with pytest.raises(ValueError, match="expected a number from 0 to 100"):
        threshold_of(REFERENCE, 101)


def test_study_means_normalise_the_mean_of_each_studys_rows():
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [3.0, 4.0]])
    studies, means = study_means(vectors, ["a", "a", "b"])
    assert studies == ["a", "b"]
    np.testing.assert_allclose(means, [[2 ** -0.5, 2 ** -0.5], [0.6, 0.8]], atol=1e-6)
    with pytest.raises(ValueError, match="expected \\[N, D\\] and N ids"):
        study_means(vectors, ["a"])


def _naive(queries, query_groups, candidates, candidate_groups, k):
    nearest, hood = [], []
    for q, group in zip(queries, query_groups):
        scores = sorted((float(q @ c) for c, g in zip(candidates, candidate_groups) if g != group), reverse=True)
        nearest.append(scores[0] if scores else np.nan)
        hood.append(np.mean(scores[:k]) if scores else np.nan)
    return np.array(nearest), np.array(hood)


@pytest.mark.parametrize("k", [1, 3, 40])
def test_neighbour_similarities_equal_a_naive_loop_leaving_the_own_study_out(k):
    rng = np.random.default_rng(k)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    queries, candidates = unit(rng.normal(size=(300, 8))), unit(rng.normal(size=(30, 8)))
    query_groups = [f"s{i % 31}" for i in range(300)]  # s30 has no candidate: all 30 candidates count
    candidate_groups = [f"s{i}" for i in range(30)]
    got = neighbour_similarities(queries, query_groups, candidates, candidate_groups, k)
    want = _naive(queries, query_groups, candidates, candidate_groups, k)
    np.testing.assert_allclose(got[0], want[0], atol=1e-5)
    np.testing.assert_allclose(got[1], want[1], atol=1e-5)


def test_a_query_with_only_its_own_candidates_gets_nan():
    nearest, hood = neighbour_similarities(np.eye(2), ["a", "b"], np.eye(2)[:1], ["a"], 5)
    assert np.isnan(nearest[0]) and np.isnan(hood[0]) and (nearest[1], hood[1]) == (0.0, 0.0)


def _ring_archive(similarities: np.ndarray):
    """Study j's image is at cosine similarities[j] to study j+1's report, 0.9 to its own, 0 to the rest."""
    n = len(similarities)
    reports = np.eye(n + 1)[:n]  # one orthonormal axis per study, and a spare one
    images = np.zeros((n, n + 1))
    for j, a in enumerate(similarities):
        images[j, (j + 1) % n], images[j, j], images[j, n] = a, 0.9, np.sqrt(1 - a * a - 0.81)  # unit length
    studies = [f"study-{j}" for j in range(n)]
    return images, studies, reports, studies


def test_calibrate_on_a_known_archive_gives_its_nearest_similarities_leave_one_out():
    similarities = np.linspace(0.05, 0.40, 8)
    images, image_studies, reports, report_studies = _ring_archive(similarities)
    calibration = calibrate(images, image_studies, reports, report_studies, neighbours=2)
    np.testing.assert_allclose(calibration.nearest, similarities, atol=1e-6)  # the own report (0.9) is left out
    np.testing.assert_allclose(calibration.neighbourhood, similarities / 2, atol=1e-6)  # mean with one 0
    assert (calibration.studies, calibration.archive_studies, calibration.neighbours) == (8, 8, 2)
    assert calibration.typical == pytest.approx(np.median(similarities / 2))
    assert calibration.percentile(0.2) == pytest.approx(37.5)  # 0.05, 0.10, 0.15, 0.20 of 8
    assert calibration.neighbourhood_percentile(0.01) == 0.0
    assert calibration.threshold(25.0) == pytest.approx(similarities[1] / 2)


def test_calibrate_samples_at_most_max_studies_with_its_seed():
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(90, 6))
    studies = [f"s{i // 3}" for i in range(90)]  # 30 studies of 3 images
    candidates = rng.normal(size=(30, 6))
    candidates /= np.linalg.norm(candidates, axis=1, keepdims=True)
    one = calibrate(vectors, studies, candidates, [f"s{i}" for i in range(30)], max_studies=10, seed=3)
    again = calibrate(vectors, studies, candidates, [f"s{i}" for i in range(30)], max_studies=10, seed=3)
    other = calibrate(vectors, studies, candidates, [f"s{i}" for i in range(30)], max_studies=10, seed=4)
    assert (one.studies, one.archive_studies) == (10, 30)
    np.testing.assert_array_equal(one.nearest, again.nearest)
    assert not np.array_equal(one.nearest, other.nearest)
    full = calibrate(vectors, studies, candidates, [f"s{i}" for i in range(30)])
    assert set(one.nearest.tolist()) <= set(full.nearest.tolist())


def test_an_archive_without_candidates_has_an_empty_reference():
    calibration = calibrate(np.eye(3), ["a", "b", "c"], np.zeros((0, 0)), [], neighbours=5)
    assert calibration.studies == 0 and calibration.typical is None and calibration.percentile(0.5) is None
    assert calibration.threshold(5.0) is None
    assert isinstance(calibration, Calibration)


def test_calibrate_refuses_mismatched_inputs():
    with pytest.raises(ValueError, match="one id per candidate"):
        calibrate(np.eye(2), ["a", "b"], np.eye(2), ["a"])
    with pytest.raises(ValueError, match="max_studies"):
        calibrate(np.eye(2), ["a", "b"], np.eye(2), ["a", "b"], max_studies=0)
    with pytest.raises(ValueError, match="neighbours"):
        calibrate(np.eye(2), ["a", "b"], np.eye(2), ["a", "b"], neighbours=0)
