"""What `medcm eval` knows of image and case anatomy: header first, region head otherwise, pooled per case."""

from __future__ import annotations

import numpy as np
import pytest

from medcm.eval.anatomy import case_anatomy, image_anatomy

CLASSES = ("Head", "Thorax")
HEAD = (CLASSES, np.array([[4.0, 0.0], [0.0, 4.0]], np.float32), np.zeros(2, np.float32))


def test_header_region_overrides_the_head_and_modality_comes_from_metadata():
    vectors = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], np.float32)
    metas = [{"modality": "CT"}, {"modality": "MR", "body_part": "CHEST"}, {}]
    anatomy = image_anatomy(vectors, metas, HEAD)
    assert anatomy.modalities == [frozenset({"CT"}), frozenset({"MR"}), frozenset()]
    assert anatomy.regions[0, 0] == pytest.approx(np.exp(4) / (np.exp(4) + 1))  # predicted: head
    np.testing.assert_allclose(anatomy.regions[1], [0.0, 1.0])                  # stated by the header: thorax
    assert image_anatomy(vectors, metas, None).regions is None


def test_case_anatomy_pools_its_images_and_a_case_without_images_is_uniform():
    images = image_anatomy(np.array([[1.0, 0.0], [0.0, 1.0]], np.float32), [{"modality": "CT"}, {"modality": "MR"}], HEAD)
    cases = case_anatomy(images, ["a", "a"], ["a", "b"])
    assert cases.modalities == [frozenset({"CT", "MR"}), frozenset()]
    np.testing.assert_allclose(cases.regions[0], [0.5, 0.5], atol=1e-6)
    np.testing.assert_allclose(cases.regions[1], [0.5, 0.5])
