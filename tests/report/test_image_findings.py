"""Tests for medcm.report.image_findings: which claims the query image's finding probabilities contradict."""

from __future__ import annotations

import pytest

from medcm.report.context import sentence_claims
from medcm.report.image_findings import claim_label, shown, unseen_claim

SEEN = {"effusion": 0.9, "effusion:left": 0.3, "effusion:right": 0.8, "effusion:bilateral": 0.2,
        "nodule": 0.1, "opacity": 0.2, "consolidation": 0.1}


def why(sentence: str, probabilities=SEEN) -> str | None:
    found = unseen_claim(sentence_claims(sentence), probabilities, 0.5)
    return None if found is None else found[1]


@pytest.mark.parametrize(("sentence", "reason"), [
    ("Small right pleural effusion.", None),
    ("Small left pleural effusion.", "left pleura effusion — the image shows the right side, not this one: "
                                     "P(effusion:right) 0.80, P(effusion:left) 0.30"),
    ("Bilateral pleural effusions.", "bilateral pleura effusion — the image's P(effusion:bilateral) is 0.20 < 0.50"),
    ("There is a 12 mm nodule in the right upper lobe.", "right lung nodule — the image's P(nodule) is 0.10 < 0.50"),
    ("No pleural effusion.", "pleura effusion — the image shows effusion: P(effusion) 0.90 >= 0.50"),
    ("No left pleural effusion.", None),  # a sided denial; the image's effusion has no side of its own here
    ("No pneumothorax.", None),  # a label the head never learnt is not judged
    ("No focal consolidation.", None),
    ("The lungs are clear.", "normal — the image shows effusion: P(effusion) 0.90 >= 0.50"),  # the chest's pleura too
    ("The liver is unremarkable.", None),  # a normal statement covers only the organs it names
    ("No acute cardiopulmonary abnormality.", "normal — the image shows effusion: P(effusion) 0.90 >= 0.50"),
    ("Possible right pleural effusion.", None),  # uncertain claims are left to the reader
])
def test_unseen_claims_and_their_reasons(sentence: str, reason: str | None) -> None:
    assert why(sentence) == reason


def test_an_unsure_side_leaves_the_neighbours_side_standing() -> None:
    unsure = {**SEEN, "effusion:left": 0.45, "effusion:right": 0.48}  # both below the threshold
    assert why("Small left pleural effusion.", unsure) is None
    assert why("Small left pleural effusion.", {**unsure, "effusion:right": 0.5}) is not None


def test_labels_and_shown() -> None:
    (claim,) = sentence_claims("Small right pleural effusion.")
    assert claim_label(claim) == "effusion:right"
    assert shown(claim, SEEN, 0.5) and not shown(claim, SEEN, 0.95) and not shown(claim, {}, 0.5)


def test_without_sides_only_presence_and_bilateral_are_judged() -> None:
    claims = sentence_claims("Small left pleural effusion.")
    assert unseen_claim(claims, SEEN, 0.5, sides=False) is None  # the head's right side is not asked
    (claim, reason) = unseen_claim(sentence_claims("Bilateral pleural effusions."), SEEN, 0.5, sides=False)
    assert reason.endswith("P(effusion:bilateral) is 0.20 < 0.50")
    assert unseen_claim(sentence_claims("Small left pleural effusion."), {"effusion": 0.3}, 0.5, sides=False)
