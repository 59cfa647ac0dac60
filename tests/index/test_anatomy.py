"""The anatomy prior: header regions, region head probabilities, the bonus and the re-ranked order."""

from __future__ import annotations

import numpy as np
import pytest

from medcm.config import AnatomyPriorConfig
from medcm.index.anatomy import (anatomy_bonus, coarse_regions, header_region, modality_set, prior_scores,
                                 region_probabilities)

MEDPIX = ("Abdomen", "Head", "Reproductive and Urinary System", "Spine and Muscles", "Thorax")


@pytest.mark.parametrize("body_part, description, expected", [
    ("HEAD", "", {"Head": 1.0}),
    ("LSPINE", "", {"Spine and Muscles": 1.0}),
    ("ANKLE", "", {"Spine and Muscles": 1.0}),          # an extremity: MedPix files it under muscles
    ("CHEST", "", {"Thorax": 1.0}),
    ("", "CT ABD/PELVIS W CONTRAST", {"Abdomen": 0.5, "Reproductive and Urinary System": 0.5}),
    ("KIDNEY", "", {"Reproductive and Urinary System": 1.0}),
    ("", "AX T2 FLAIR BRAIN", {"Head": 1.0}),
    ("XYZ", "Chest PA", {"Thorax": 1.0}),                 # a body part naming no class: the description speaks
])
def test_header_region_maps_dicom_terms_onto_the_model_classes(body_part, description, expected):
    stated = header_region(body_part, description, MEDPIX)
    assert {MEDPIX[i]: float(p) for i, p in enumerate(stated) if p} == pytest.approx(expected)


def test_header_region_is_none_when_the_header_says_nothing_useful():
    assert header_region("", "", MEDPIX) is None
    assert header_region("WHOLEBODY", "SCOUT", MEDPIX) is None
    assert header_region("HEAD", "", ("cat", "dog")) is None  # classes that name no region
    assert coarse_regions("Brain and Neuro") == {"head"}
    assert coarse_regions("ABDOMEN") == {"abdomen"} and coarse_regions("Pulmonary") == {"thorax"}
    assert coarse_regions("COR T1 HIPPOCAMPUS") == {"head"} and coarse_regions("R HIP") == {"extremity"}


def test_region_probabilities_are_the_softmax_of_the_linear_head():
    weight = np.array([[1.0, 0.0], [0.0, 2.0]])
    probs = region_probabilities(np.array([[1.0, 0.0], [0.0, 1.0]]), weight, np.array([0.0, 0.5]))
    assert probs.sum(axis=1) == pytest.approx([1.0, 1.0])
    assert probs[0, 0] == pytest.approx(np.exp(1) / (np.exp(1) + np.exp(0.5)))
    assert probs[1, 1] == pytest.approx(np.exp(2.5) / (1 + np.exp(2.5)))


def test_bonus_adds_modality_match_and_region_agreement():
    prior = AnatomyPriorConfig(modality_weight=0.1, region_weight=0.2)
    query_mod = [modality_set("CT"), modality_set("")]
    cand_mod = [modality_set("CT,MR"), modality_set("MR"), frozenset()]
    q_reg = np.array([[1.0, 0.0], [0.5, 0.5]])
    c_reg = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    bonus = anatomy_bonus(query_mod, cand_mod, q_reg, c_reg, prior)
    np.testing.assert_allclose(bonus, [[0.1 + 0.2, 0.0, 0.1], [0.1, 0.1, 0.1]], atol=1e-6)
    no_region = anatomy_bonus(query_mod, cand_mod, None, c_reg, prior)
    np.testing.assert_allclose(no_region, [[0.1, 0, 0], [0, 0, 0]], atol=1e-6)


def test_prior_reorders_only_the_candidates_and_a_zero_bonus_keeps_cosine_order():
    similarity = np.array([[0.9, 0.8, 0.7, 0.1]])
    assert list(np.argsort(-prior_scores(similarity, np.zeros((1, 4)), 4)[0], kind="stable")) == [0, 1, 2, 3]
    bonus = np.array([[0.0, 0.0, 0.3, 1.0]])
    assert list(np.argsort(-prior_scores(similarity, bonus, 3)[0], kind="stable")) == [2, 0, 1, 3]  # 3 is beyond the page
    assert list(np.argsort(-prior_scores(similarity, bonus, 4)[0], kind="stable")) == [3, 2, 0, 1]


def test_prior_config_refuses_negative_weights():
    with pytest.raises(ValueError, match="anatomy_prior"):
        AnatomyPriorConfig(region_weight=-0.1)
    assert not AnatomyPriorConfig().active and AnatomyPriorConfig(modality_weight=0.1).active
