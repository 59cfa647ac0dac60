"""The evaluation's own self-contradiction checker: a table of contradicting and consistent reports (synonyms,
laterality, sub-sites, normal statements, sections, hedges, time points), its claims, its independence from the
drafter's checker, and the demo report wording as ground truth."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from medcm.data import demo_reports
from medcm.eval.consistency import (
    ANY_FINDING,
    Claim,
    contradicts,
    extract_claims,
    find_contradictions,
    find_contradictions_many,
)

ISSUE_DRAFT = ("There is a 12 mm rounded nodule in the right lower lung zone. No suspicious pulmonary nodule. "
               "The lungs are clear.\nIMPRESSION: Normal chest radiograph.")

CONTRADICTING = [
    ISSUE_DRAFT,
    "There is a 12 mm rounded nodule in the right lower lung zone.\nIMPRESSION: Normal chest radiograph.",
    "No pleural effusion. Small left pleural effusion.",  # "no X" covers "left X"
    "Bilateral pleural effusions. No left pleural effusion.",  # bilateral includes left
    "Left pneumothorax. No left pneumothorax.",
    "FINDINGS: Hepatic mass in segment 7.\nIMPRESSION: No liver mass.",  # hepatic = liver, across sections
    "A pulmonary nodule in the left upper lobe. No lung nodules.",  # pulmonary = lung, plural
    "The liver is unremarkable. A 2 cm hypodense lesion in the liver.",  # normal organ vs a finding in it
    "The lungs are clear. Small right pleural effusion.",  # "the lungs are clear" also speaks for the pleura
    "Cardiomegaly. The heart size is normal.",
    "The cardiomediastinal silhouette is within normal limits. The heart is moderately enlarged.",
    "FINDINGS: Small left apical pneumothorax.\nIMPRESSION: There is no pneumothorax.",
    "Unremarkable CT of the abdomen. Hypodense lesion in the right lobe of the liver.",
    "The costophrenic angles are sharp. Moderate right pleural effusion.",
]

CONSISTENT = [
    "Left pleural effusion. No right pleural effusion.",  # "left X" vs "no right X"
    "Large left pneumothorax. No pneumothorax on the right.",
    "Liver mass. No pulmonary mass.",  # different organs
    "Nodule in the right upper lobe. No nodule in the right lower lobe.",  # a denial naming another part
    "Mass in the left kidney. No other mass is seen.",
    "Possible left lower lobe pneumonia. No consolidation.",  # hedged: no assertion
    "Right lower lobe opacity, cannot exclude pneumonia. No pleural effusion.",
    "The heart size is normal. Small pericardial effusion.",  # size only; pericardium is not the heart
    "Lungs are otherwise clear. Right lower lobe opacity.",  # "otherwise": an exception was stated
    "There is a hypodense mass with surrounding normal liver.",  # not a verdict on the liver
    "No acute cardiopulmonary abnormality. Stable 5 mm nodule in the left upper lobe.",
    "Heterogeneous mass in the right kidney. There is no evidence of fat within the mass.",  # a reference, not a denial
    "Non-displaced fracture of the right femoral neck. No displaced fracture.",  # a narrower denial
    "HISTORY: Left pneumothorax.\nFINDINGS: No pneumothorax.",  # history is not this study
    "Initial radiograph shows no pneumothorax. Follow-up radiograph after 2 days: left pneumothorax.",  # time points
    "The lungs are clear. No pleural effusion or pneumothorax. Heart size is normal.",
    "",
]


@pytest.mark.parametrize("report", CONTRADICTING)
def test_contradicting_reports_are_found(report):
    assert find_contradictions(report), report


@pytest.mark.parametrize("report", CONSISTENT)
def test_consistent_reports_pass(report):
    assert find_contradictions(report) == [], [c.describe() for c in find_contradictions(report)]


def test_the_issue_draft_contradicts_itself_four_ways():
    pairs = find_contradictions(ISSUE_DRAFT)
    denials = {(c.denied.text, c.denied.organ) for c in pairs}
    # the nodule against: the explicit denial, the clear lungs, and the normal radiograph (lung)
    assert ("nodule", "lung") in denials
    assert ("lungs are clear", "lung") in denials
    assert ("Normal chest radiograph", "lung") in denials
    assert {c.asserted.sentence for c in pairs} == {"There is a 12 mm rounded nodule in the right lower lung zone."}
    assert {c.denied.section for c in pairs} == {"BODY", "IMPRESSION"}


def test_claims_carry_finding_organ_side_and_subsites():
    claims = extract_claims("There is a 12 mm rounded nodule in the right lower lung zone. No hepatic lesion.")
    assert [(c.finding, c.negated, c.organ, c.side) for c in claims] == [
        ("nodule", False, "lung", "right"), ("lesion", True, "liver", None)]
    assert claims[0].subsites == frozenset({"lower"})
    chest = extract_claims("IMPRESSION: Normal chest radiograph.")
    assert {c.organ for c in chest} == {"lung", "pleura", "heart", "mediastinum", "pericardium"}
    assert all(c.finding == ANY_FINDING and c.negated and c.section == "IMPRESSION" for c in chest)


def _claim(finding="effusion", negated=False, organ="pleura", side=None, subsites=()):
    return Claim(finding, negated, organ, side, frozenset(subsites), "FINDINGS", "s.", finding)


@pytest.mark.parametrize(("asserted", "denied", "expected"), [
    (_claim(side="left"), _claim(negated=True), True),
    (_claim(side="left"), _claim(negated=True, side="right"), False),
    (_claim(side=None), _claim(negated=True, side="right"), False),  # an unsided finding may be on the left
    (_claim(side="bilateral"), _claim(negated=True, side="right"), True),
    (_claim(side="left"), _claim(negated=True, side="bilateral"), True),
    (_claim(organ=None), _claim(negated=True), True),  # an unknown organ fits any
    (_claim(organ="pericardium"), _claim(negated=True), False),
    (_claim(subsites={"lower"}), _claim(negated=True, subsites={"upper"}), False),
    (_claim(subsites={"lower"}), _claim(negated=True, subsites={"lower", "right"}), True),
    (_claim(), _claim(finding="mass", negated=True), False),
    (_claim(organ=None), _claim(finding=ANY_FINDING, negated=True), False),  # "lungs clear" needs a lung finding
    (_claim(), _claim(finding=ANY_FINDING, organ=None, negated=True), True),  # "normal study" denies everything
    (_claim(negated=True), _claim(negated=True), False),
])
def test_contradicts_rules(asserted, denied, expected):
    assert contradicts(asserted, denied) is expected


def test_many_reports_in_one_batch_match_one_at_a_time():
    reports = CONTRADICTING[:4] + CONSISTENT[:4]
    batch = find_contradictions_many(reports)
    assert [bool(x) for x in batch] == [True] * 4 + [False] * 4
    assert batch[0] == find_contradictions(reports[0])
    with pytest.raises(TypeError, match="list of texts"):
        find_contradictions_many("one report")


def test_demo_wording_as_ground_truth():
    """Each demo finding sentence beside each normal statement: the demo marks which normal statements
    the finding makes false. Every flag must be one of those; most of those must be flagged (the misses
    are "no focal consolidation / airspace opacity" beside a nodule, which this checker does not equate)."""
    rng = np.random.default_rng(0)
    details = {"side": "right", "severity": "moderate", "zone": "lower", "size_mm": "12", "ctr": "0.6"}
    hits = expected_hits = false_alarms = 0
    for (modality, finding), (findings, impressions) in demo_reports._TEMPLATES.items():
        exam = "CR" if modality == "CR" else ("CT ABDOMEN" if finding == "liver lesion" else "CT CHEST")
        words = demo_reports._words(finding, details, rng)
        normals = [(v, finding in false_for.replace("lung", demo_reports._LUNG).split(","))
                   for variants, false_for in demo_reports._NORMALS[exam].items() for v in variants]
        for positive in (t.format(**words) for t in findings + impressions):
            for normal, expected in normals:
                found = bool(find_contradictions(f"FINDINGS: {positive}\nIMPRESSION: {normal}"))
                hits += found and expected
                expected_hits += expected
                false_alarms += found and not expected
    assert false_alarms == 0
    assert hits / expected_hits >= 0.9, (hits, expected_hits)


def test_generated_demo_reports_never_contradict_themselves():
    rng = np.random.default_rng(1)
    cases = [("normal", "CR", "CHEST"), ("pleural effusion", "CR", "CHEST"), ("pulmonary nodule", "CR", "CHEST"),
             ("pneumothorax", "CR", "CHEST"), ("cardiomegaly", "CR", "CHEST"), ("pulmonary nodule", "CT", "CHEST"),
             ("liver lesion", "CT", "ABDOMEN")]
    reports = [demo_reports.demo_report(f, m, b, {"side": side, "severity": "small", "zone": "upper", "size_mm": "8",
                                                  "ctr": "0.6"}, rng)
               for f, m, b in cases for side in ("left", "right") for _ in range(10)]
    assert sum(bool(x) for x in find_contradictions_many(reports)) == 0


def test_independent_of_the_drafters_checker():
    tree = ast.parse(Path(__file__).parents[2].joinpath("medcm/eval/consistency.py").read_text(encoding="utf-8"))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    forbidden = {"medcm.report.assertions", "medcm.report.context", "medcm.report.lexicon", "medspacy"}
    assert not imported & forbidden
    assert not any(name.startswith("medspacy") for name in imported)
