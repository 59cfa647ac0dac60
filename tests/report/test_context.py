"""Tests for medcm.report.context (claims with medspaCy's ConText) and medcm.report.assertions (when they clash).

The spaCy pipeline is built once per session (``build_pipeline`` is cached).
"""

from __future__ import annotations

import sys

import pytest

from medcm.report.assertions import FindingClaim, alternatives, denies, first_conflict
from medcm.report.context import build_pipeline, contradicting_pairs, finding_claims, finding_labels, sentence_claims


def only(sentence: str) -> FindingClaim:
    (claim,) = sentence_claims(sentence)
    return claim


# --- what a sentence claims ------------------------------------------------------------------
@pytest.mark.parametrize(("sentence", "expected"), [
    ("There is a 12 mm rounded nodule in the right lower lung zone.", ("nodule", "lung", "right", "present")),
    ("No suspicious pulmonary nodule.", ("nodule", "lung", None, "absent")),
    ("Hypoattenuating 2.3 cm hepatic lesion in the right lobe.", ("lesion", "liver", "right", "present")),
    ("No focal liver lesion.", ("lesion", "liver", None, "absent")),
    ("Renal calculi.", ("stone", "kidney", None, "present")),
    ("Moderate right-sided pneumothorax.", ("pneumothorax", "pleura", "right", "present")),
    ("Bilateral pleural effusions.", ("effusion", "pleura", "bilateral", "present")),
    ("No pericardial effusion.", ("effusion", "pericardium", None, "absent")),
    ("Consolidation in the RLL.", ("consolidation", "lung", "right", "present")),
    ("Cardiomegaly with pulmonary edema.", ("enlargement", "heart", None, "present")),  # the term names the organ
    ("The heart is mildly enlarged.", ("enlargement", "heart", None, "present")),
    ("A nodule is not seen.", ("nodule", "lung", None, "absent")),
    ("The effusion has resolved.", ("effusion", "pleura", None, "absent")),
    ("Pneumothorax cannot be excluded.", ("pneumothorax", "pleura", None, "uncertain")),
    ("Findings may represent early pneumonia.", ("pneumonia", "lung", None, "uncertain")),
    ("History of left femur fracture.", ("fracture", "bone", "left", "historical")),
    ("No change in the right lower lobe nodule.", ("nodule", "lung", "right", "present")),  # "no change": pseudo
    ("CT without contrast shows a mass in the left kidney.", ("mass", "kidney", "left", "present")),
    ("Acute subdural hematoma over the left hemisphere.", ("hemorrhage", "brain", "left", "present")),
    ("No hydronephrosis.", ("hydronephrosis", "kidney", None, "absent")),
    # normal statements: an absent claim of any finding ("abnormality") in the organs they name
    ("The lungs are clear.", ("abnormality", "lung", None, "absent")),
    ("Normal chest radiograph.", ("abnormality", "chest", None, "absent")),
    ("Unremarkable CT of the abdomen.", ("abnormality", "abdomen", None, "absent")),
    ("The liver is normal in size and attenuation.", ("abnormality", "liver", None, "absent")),
    ("The heart size is normal.", ("enlargement", "heart", None, "absent")),
    ("No acute cardiopulmonary process.", ("abnormality", "cardiopulmonary", None, "absent")),
    ("The osseous structures are intact.", ("abnormality", "bone", None, "absent")),
])
def test_claim_of_a_sentence(sentence: str, expected: tuple) -> None:
    c = sentence_claims(sentence)[0]
    assert (c.finding, c.organ, c.side, c.status) == expected
    assert c.sentence == sentence


def test_details_size_degree_count_qualifiers() -> None:
    c = only("There is a 12 mm rounded nodule in the right lower lung zone.")
    assert (c.size_mm, c.count, c.term) == (12.0, "one", "nodule")
    assert only("A 1.2 x 0.8 cm nodule in the left upper lobe.").size_mm == pytest.approx(12.0)
    assert only("No nodule larger than 5 mm.").max_mm == 5.0 and only("No nodule larger than 5 mm.").size_mm is None
    assert only("Small left pleural effusion.").degree == "small"
    assert only("Multiple pulmonary nodules.").count == "many"
    assert only("No acute osseous abnormality.").qualifiers == {"acute"}
    assert only("No new pulmonary nodule.").qualifiers == {"new"}
    assert only("Old healed rib fracture.").qualifiers == {"chronic"}


@pytest.mark.parametrize("sentence", [
    "The lungs are otherwise clear.",  # partial
    "Normal enhancement of the liver.",  # an attribute, not the organ
    "The pulmonary vascularity is normal.",
    "The lateral meniscus is normal.",  # a structure the lexicon does not know
    "No evidence of Crohn disease.",  # a disease the lexicon does not know: not "no abnormality"
    "There is no evidence of fat within the mass.",  # denies the fat, not the mass
    "CT was performed to evaluate for renal stones.",  # an indication
    "No transverse process abnormality.",  # "process" is anatomy here: no organ, no claim
])
def test_sentences_without_claims(sentence: str) -> None:
    assert sentence_claims(sentence) == ()


def test_a_listed_denial_and_a_but_clause() -> None:
    claims = sentence_claims("No pleural effusion or pneumothorax, but small left consolidation.")
    assert [(c.finding, c.status) for c in claims] == [
        ("effusion", "absent"), ("pneumothorax", "absent"), ("consolidation", "present")]
    effusion, pneumothorax = sentence_claims("Small left pleural effusion, no right pneumothorax.")
    assert (effusion.side, effusion.status, pneumothorax.side, pneumothorax.status) == (
        "left", "present", "right", "absent")


def test_scope_ends_at_a_semicolon_a_bracket_and_a_run_on_sentence() -> None:
    claims = sentence_claims("No pneumothorax; small left pleural effusion.")
    assert [(c.finding, c.status) for c in claims] == [("pneumothorax", "absent"), ("effusion", "present")]
    claims = sentence_claims("Chest film (no prior available) shows a right lower lobe nodule.")
    assert [(c.finding, c.status) for c in claims] == [("nodule", "present")]
    claims = sentence_claims("No hip fracture is seen.Axial CT shows bilateral sacral fractures.")
    assert [(c.finding, c.organ, c.side, c.status) for c in claims] == [
        ("fracture", "joint", None, "absent"), ("fracture", "spine", "bilateral", "present")]


def test_finding_claims_splits_text_and_checks_types() -> None:
    claims = finding_claims("The lungs are clear. No pneumothorax.")
    assert [(c.finding, c.sentence) for c in claims] == [
        ("abnormality", "The lungs are clear."), ("pneumothorax", "No pneumothorax.")]
    with pytest.raises(TypeError, match="sentence must be str"):
        sentence_claims(b"No effusion.")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="FindingClaim.status"):
        FindingClaim("nodule", "lung", None, "negated", "x.")


def test_pipeline_is_built_once_and_names_the_setup_script(monkeypatch: pytest.MonkeyPatch) -> None:
    assert build_pipeline() is build_pipeline()
    monkeypatch.setitem(sys.modules, "medspacy", None)  # as if not installed
    with pytest.raises(ImportError, match=r"medspacy.*bash scripts/setup\.sh"):
        build_pipeline.__wrapped__()


# --- when two sentences contradict -----------------------------------------------------------
CONTRADICTIONS = [
    # synonyms
    ("No focal hepatic lesion.", "2 cm hypodense lesion in the liver."),
    ("No pulmonary nodule.", "8 mm nodule in the left lung."),
    ("No renal stones.", "Nephrolithiasis."),
    ("No focal airspace opacity.", "Consolidation in the right lower lobe."),  # opacity includes consolidation
    # laterality
    ("No effusion.", "Small left effusion."),
    ("No left pneumothorax.", "Bilateral pneumothoraces."),
    ("No right pleural effusion.", "Bilateral pleural effusions."),
    ("Both lungs are clear.", "Right lower lobe consolidation."),
    ("The left kidney is unremarkable.", "Left hydronephrosis."),
    # number and size
    ("No nodule.", "12 mm nodule in the right lower lobe."),
    ("No nodules.", "Multiple pulmonary nodules."),
    ("No nodule larger than 5 mm.", "A 1.2 cm nodule in the right upper lobe."),
    # global normal statements
    ("The lungs are clear.", "There is a 12 mm rounded nodule in the right lower lung zone."),
    ("The lungs are clear.", "Small left pleural effusion."),
    ("Normal chest radiograph.", "Small right pneumothorax."),
    ("Normal chest radiograph.", "Mild cardiomegaly."),
    ("The abdomen is unremarkable.", "2 cm hypodense liver lesion."),
    ("The liver is unremarkable.", "Hypoattenuating hepatic lesion."),
    ("The heart size is normal.", "The heart is mildly enlarged."),
    ("No acute cardiopulmonary process.", "Small left pleural effusion."),
    # assertion status
    ("No pneumothorax.", "Small pneumothorax cannot be excluded."),  # a doubt against a denial
    ("No new nodule.", "New 6 mm nodule in the left upper lobe."),
    ("No acute fracture.", "Acute fracture of the left fifth rib."),
]
NOT_CONTRADICTIONS = [
    ("No focal liver lesion.", "2 cm cyst in the right kidney."),  # another organ
    ("No pericardial effusion.", "Small left pleural effusion."),
    ("Small left pleural effusion.", "No right pleural effusion."),  # another side
    ("No bilateral effusions.", "Left pleural effusion."),
    ("The left kidney is unremarkable.", "Right hydronephrosis."),
    ("No nodule larger than 5 mm.", "A 4 mm nodule in the right upper lobe."),  # under the threshold
    ("The lungs are clear.", "Mild cardiomegaly."),  # another organ
    ("The liver is unremarkable.", "Simple cyst in the left kidney."),
    ("The heart size is normal.", "Small left pleural effusion."),
    ("The lungs are otherwise clear.", "Small left pleural effusion."),  # partial normal
    ("No acute cardiopulmonary process.", "Stable 5 mm pulmonary nodule."),  # not acute
    ("No acute fracture.", "Old healed rib fracture."),
    ("No new nodule.", "Stable 6 mm nodule."),
    ("No change in the nodule.", "Nodule in the right lower lobe."),  # "no change" denies nothing
    ("History of pneumothorax.", "No pneumothorax."),  # another time
    ("No other lesion.", "Hepatic lesion."),
    ("No renal mass.", "The mass is heterogeneous."),  # a mass of unknown site
    ("No pleural effusion.", "Pneumothorax."),  # another finding
]


@pytest.mark.parametrize(("a", "b"), CONTRADICTIONS)
def test_contradicting_pairs_finds_contradictions_in_either_order(a: str, b: str) -> None:
    assert [p[:2] for p in contradicting_pairs([a, b])] == [(0, 1)]
    assert [p[:2] for p in contradicting_pairs([b, "The appendix is normal.", a])] == [(0, 2)]


@pytest.mark.parametrize(("a", "b"), NOT_CONTRADICTIONS)
def test_not_contradictions(a: str, b: str) -> None:
    assert contradicting_pairs([a, b]) == []
    assert contradicting_pairs([b, a]) == []


def test_findings_against_impression_and_the_reason() -> None:
    findings = ["There is a 12 mm rounded nodule in the right lower lung zone.", "No pleural effusion."]
    impression = ["Normal chest radiograph."]
    ((i, j, reason),) = contradicting_pairs(findings + impression)
    assert (i, j) == (0, 2)
    assert reason == "'Normal' (chest abnormality) vs 'nodule' (right lung nodule)"


def test_the_demo_draft_that_contradicted_itself() -> None:
    """The held-out normal chest radiograph's draft from issue 17: every pair but the normal ones clashes."""
    draft = ["There is a 12 mm rounded nodule in the right lower lung zone.", "No suspicious pulmonary nodule.",
             "The lungs are clear.", "Normal chest radiograph."]
    assert {p[:2] for p in contradicting_pairs(draft)} == {(0, 1), (0, 2), (0, 3)}


# --- the rules alone, on hand-made claims ------------------------------------------------------
def claim(finding: str, organ: str | None, side: str | None, status: str, **kw) -> FindingClaim:
    return FindingClaim(finding, organ, side, status, "s.", **kw)


def test_denies_table() -> None:
    nodule = claim("nodule", "lung", "right", "present", size_mm=12.0)
    assert denies(claim("nodule", None, None, "absent"), nodule)
    assert denies(claim("abnormality", "chest", None, "absent"), nodule)
    assert denies(claim("abnormality", None, None, "absent"), nodule)  # "Normal study."
    assert not denies(claim("abnormality", "abdomen", None, "absent"), nodule)
    assert not denies(claim("nodule", "lung", "left", "absent"), nodule)
    assert not denies(claim("nodule", "lung", None, "absent", max_mm=15.0), nodule)
    assert denies(claim("nodule", "lung", None, "absent", max_mm=10.0), nodule)
    assert not denies(nodule, claim("nodule", "lung", None, "absent"))  # argument order matters
    assert not denies(claim("nodule", "lung", None, "absent"), claim("nodule", "lung", None, "historical"))
    assert first_conflict([nodule], [claim("opacity", "lung", None, "absent")]) is not None


def test_alternatives_table() -> None:
    left = claim("effusion", "pleura", "left", "present", degree="small")
    assert alternatives(left, claim("effusion", "pleura", "right", "present"))
    assert alternatives(left, claim("effusion", "pleura", "left", "present", degree="large"))
    assert not alternatives(left, claim("effusion", "pleura", None, "present"))  # unspecified: compatible
    assert not alternatives(left, claim("effusion", "pericardium", "right", "present"))
    assert not alternatives(left, claim("effusion", "pleura", "right", "absent"))
    nodule = claim("nodule", "lung", None, "present", size_mm=12.0)
    assert not alternatives(nodule, claim("nodule", "lung", None, "present", size_mm=11.0))
    assert alternatives(nodule, claim("nodule", "lung", None, "present", size_mm=5.0))


def test_finding_labels_name_each_present_finding_and_its_kinds_with_and_without_its_side() -> None:
    text = ("There is a 12 mm nodule in the right lower lobe. Small left pleural effusion. "
            "No pneumothorax. Possible consolidation.")
    assert finding_labels(text) == ("effusion", "effusion:left", "fluid", "fluid:left", "lesion", "lesion:right",
                                    "nodule", "nodule:right", "opacity", "opacity:right")
    assert finding_labels("The lungs are clear. No pleural effusion.") == ("normal",)
