from __future__ import annotations

import json

import numpy as np
import pytest

from medcm.data.manifest import load_image
from medcm.data.synthetic_radiographs import CLASSES, make_case, make_cases, write_dataset
from medcm.report.text import report_text_for_training


def test_classes_cycle_and_reports_name_the_content():
    cases = make_cases(2 * len(CLASSES), seed=0, image_size=64)
    assert [c.label for c in cases] == list(CLASSES) * 2
    for case in cases:
        text = report_text_for_training(case.report).lower()
        if case.label == "normal":
            assert "lesion" not in text or "without" in text
        else:
            size, shape, zone = case.label.split(" ", 2)
            assert zone in text


def test_patient_left_is_drawn_on_the_image_right():
    rng = np.random.default_rng(0)
    left = make_case("large circle upper left", rng, 64).pixels
    bright = np.argwhere(left > 0.7)
    assert bright[:, 1].mean() > 32 and bright[:, 0].mean() < 32


def test_normal_cases_have_no_lesion():
    case = make_case("normal", np.random.default_rng(1), 64)
    assert float((case.pixels > 0.7).mean()) < 0.001


def test_unknown_label_is_refused():
    with pytest.raises(ValueError, match="label"):
        make_case("huge hexagon", np.random.default_rng(0))


def test_written_dataset_round_trips(tmp_path):
    manifest = write_dataset(tmp_path, n_train=4, n_dev=2, image_size=48)
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert [line["split"] for line in lines] == ["train"] * 4 + ["dev"] * 2
    original = make_cases(4, seed=0, image_size=48)
    for line, case in zip(lines[:4], original):
        np.testing.assert_allclose(load_image(tmp_path / line["image"])[0], case.pixels, atol=1e-4)
