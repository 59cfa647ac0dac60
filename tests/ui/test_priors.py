"""The priors panel's choice of the prior series set beside the one on screen."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
pytest.importorskip("gradio")

from ui.priors import matching_series  # noqa: E402
from ui.study import ImageRef, ReviewStudy  # noqa: E402


def _ref(modality: str, frames: int) -> ImageRef:
    return ImageRef(f"/s/{modality}{frames}.dcm", "1.2", "1.3", f"{modality} {frames}", frames, modality=modality)


def test_the_longest_series_of_the_same_modality_is_set_beside_this_one():
    study = ReviewStudy("1.9", (_ref("CT", 1), _ref("MR", 40), _ref("CT", 30), _ref("CT", 12)))
    assert matching_series(study, "CT") == 2  # the volume, not the scout
    assert matching_series(study, "MR") == 1


def test_without_that_modality_the_longest_series_is_set_and_ties_keep_the_first():
    study = ReviewStudy("1.9", (_ref("DX", 1), _ref("CR", 1), _ref("US", 4)))
    assert matching_series(study, "CT") == 2
    assert matching_series(ReviewStudy("1.9", (_ref("DX", 1), _ref("CR", 1))), "CT") == 0
