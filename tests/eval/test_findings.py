"""Finding-level measures: the name table, the truth, the pairs the checker reads, and P/R/F1, laterality and
hallucination of hand-made drafts whose numbers are worked out by hand."""

from __future__ import annotations

import pytest

from medcm.eval.consistency import extract_claims
from medcm.eval.findings import (
    asserted_pairs,
    finding_block,
    finding_name,
    score_texts,
    study_truth,
    targets_met,
)
from medcm.eval.report import finding_lines, markdown_table

NODULE, EFFUSION, CARDIO, PTX, CONS = "pulmonary nodule", "pleural effusion", "cardiomegaly", "pneumothorax", "consolidation"


@pytest.mark.parametrize(("finding", "organ", "name"), [
    ("nodule", "lung", NODULE), ("nodule", None, NODULE), ("nodule", "liver", "liver lesion"), ("nodule", "kidney", None),
    ("lesion", "liver", "liver lesion"), ("lesion", "lung", None), ("effusion", "pleura", EFFUSION),
    ("effusion", None, EFFUSION), ("effusion", "pericardium", None), ("enlargement", "heart", CARDIO),
    ("enlargement", "liver", None), ("opacity", "lung", CONS), ("atelectasis", "lung", None),
])
def test_finding_name_table(finding, organ, name):
    assert finding_name(finding, organ) == name


@pytest.mark.parametrize(("meta", "truth"), [
    ({"finding": "pleural effusion", "side": "left"}, (EFFUSION, "left")),
    ({"finding": "Pulmonary Nodule", "side": "Right", "zone": "upper"}, (NODULE, "right")),
    ({"finding": "normal", "side": "left"}, ("normal", None)),
    ({"finding": "cardiomegaly", "side": "left"}, (CARDIO, None)),
    ({"finding": "effusion", "side": "right"}, (EFFUSION, "right")),  # medcm.data.synthetic_ct's name
    ({"finding": "nodule", "side": ""}, (NODULE, None)),
    ({"finding": "pulmonary embolism", "side": "left"}, None),
    ({"label": "small circle upper left"}, None),
    ({}, None),
])
def test_study_truth(meta, truth):
    assert study_truth(meta) == truth


@pytest.mark.parametrize(("text", "pairs", "unmapped"), [
    ("FINDINGS: There is a small right pleural effusion.\nIMPRESSION: Small right pleural effusion.",
     {(EFFUSION, "right")}, {}),
    ("Left pleural effusion. Right pleural effusion.", {(EFFUSION, "bilateral")}, {}),
    ("The heart is enlarged. No pneumothorax.", {(CARDIO, None)}, {}),
    ("There is a small right pleural effusion with adjacent compressive atelectasis.", {(EFFUSION, "right")},
     {"atelectasis": 1}),
    ("The lungs are clear. No pleural effusion.", set(), {}),
    ("Pleural effusion. Small left pleural effusion.", {(EFFUSION, "left")}, {}),  # the side-less mention joins it
    ("Pneumothorax.", {(PTX, None)}, {}),
    ("Possible right lower lobe nodule.", set(), {}),  # hedged: no claim
    ("There is a 3.4 cm hypodense lesion in the left lobe of the liver.", {("liver lesion", "left")}, {}),
])
def test_asserted_pairs_read_by_the_checker(text, pairs, unmapped):
    got, missed = asserted_pairs(extract_claims(text))
    assert got == pairs and dict(missed) == unmapped


# (truth, draft) worked by hand: tp, fp, fn; laterality named / wrong; hallucinated findings
HAND = [
    ((NODULE, "right"), "There is a 12 mm nodule in the right lower lobe."),  # tp 1; named, right side
    ((NODULE, "left"), "There is a 12 mm nodule in the right lower lobe."),  # fp 1 fn 1; named, wrong side
    (("normal", None), "Small left pleural effusion. The heart is enlarged."),  # fp 2; hallucinates both
    ((EFFUSION, "bilateral"), "Left pleural effusion. Right pleural effusion."),  # tp 1; named, right side
    ((CARDIO, None), "The lungs are clear."),  # fn 1
    ((PTX, "left"), "Pneumothorax."),  # fp 1 fn 1; no side named: not a laterality case
    ((CONS, "right"), "Patchy airspace opacity in the right lower lobe, consistent with pneumonia. "
                      "Right lower lobe consolidation."),  # tp 1; named, right side
    ((NODULE, "right"), "Right upper lobe nodule. Small left pleural effusion."),  # tp 1 fp 1; hallucinates effusion
]


def test_score_texts_by_hand():
    truths, texts = [t for t, _ in HAND], [d for _, d in HAND]
    got = score_texts(texts, truths, [f"c{i}" for i in range(len(HAND))])
    assert (got["studies"], got["tp"], got["fp"], got["fn"]) == (8, 4, 5, 3)
    assert got["precision"] == pytest.approx(4 / 9) and got["recall"] == pytest.approx(4 / 7)
    assert got["f1"] == pytest.approx(0.5)  # 2 (4/9)(4/7) / (4/9 + 4/7)
    assert got["laterality"] == {"errors": 1, "named": 5, "rate": pytest.approx(0.2)}
    wrong = got["hallucination"]
    assert wrong["studies"] == 2 and wrong["rate"] == pytest.approx(2 / 8)
    assert wrong["by_finding"] == {
        CARDIO: {"hallucinated": 1, "asserted": 1, "rate": pytest.approx(1 / 8)},
        CONS: {"hallucinated": 0, "asserted": 1, "rate": 0.0},
        EFFUSION: {"hallucinated": 2, "asserted": 3, "rate": pytest.approx(2 / 8)},
        PTX: {"hallucinated": 0, "asserted": 1, "rate": 0.0},
        NODULE: {"hallucinated": 0, "asserted": 3, "rate": 0.0},
    }
    assert [p["case_id"] for p in got["problems"]] == ["c1", "c2", "c7"]
    assert got["problems"][0] == {"case_id": "c1", "truth": [NODULE, "left"], "asserted": [[NODULE, "right"]],
                                  "hallucinated": [], "wrong_side": True}
    assert got["problems"][1]["hallucinated"] == [CARDIO, EFFUSION] and not got["problems"][1]["wrong_side"]


def test_perfect_and_empty_drafts():
    truths, texts = [t for t, _ in HAND], [d for _, d in HAND]
    perfect = score_texts(["Right nodule.", "Left nodule.", "The lungs are clear.", "Bilateral pleural effusions.",
                           "Cardiomegaly.", "Left pneumothorax.", "Right lower lobe consolidation.", "Right nodule."], truths)
    assert (perfect["precision"], perfect["recall"], perfect["f1"]) == (1.0, 1.0, 1.0)
    assert perfect["laterality"]["rate"] == 0.0 and perfect["hallucination"]["rate"] == 0.0
    silent = score_texts([""] * len(texts), truths)
    assert (silent["tp"], silent["fp"], silent["fn"]) == (0, 0, 7)
    assert silent["precision"] is None and silent["recall"] == 0.0 and silent["f1"] is None
    assert silent["laterality"] == {"errors": 0, "named": 0, "rate": None} and silent["hallucination"]["rate"] == 0.0


def test_a_truth_without_side_takes_any_side_and_judges_no_laterality():
    got = score_texts(["Left pleural effusion. The heart is enlarged."], [(EFFUSION, None)])
    assert (got["tp"], got["fp"], got["fn"]) == (1, 1, 0)
    assert got["laterality"]["named"] == 0 and got["hallucination"]["by_finding"][CARDIO]["hallucinated"] == 1


def test_score_texts_needs_one_truth_per_text():
    with pytest.raises(ValueError, match="2 texts vs 1 truths"):
        score_texts(["a", "b"], [("normal", None)])


def test_targets_met():
    system = {"f1": 0.9, "laterality": {"rate": 0.1}, "hallucination": {"rate": 0.05}}
    got = targets_met(system, 0)
    assert {k: v["met"] for k, v in got.items()} == {"finding F1": True, "laterality error rate": False,
                                                     "hallucinated-finding rate": True, "self-contradicting drafts": True}
    assert got["finding F1"] == {"target": ">= 0.85", "value": 0.9, "met": True}
    unknown = targets_met({"f1": 0.5, "laterality": {"rate": None}, "hallucination": {"rate": 0.2}}, 3)
    assert [v["met"] for v in unknown.values()] == [False, None, False, False]
    assert targets_met(system)["self-contradicting drafts"]["met"] is None


def _block_inputs():
    metas = [{"finding": "pulmonary nodule", "side": "right"}, {"finding": "normal"}, {"label": "no truth here"},
             {"finding": "pulmonary embolism", "side": "left"}, {"finding": "pleural effusion", "side": "left"}]
    texts = {"draft": ["Right nodule.", "Left effusion.", "Nodule.", "Nodule.", "Right pleural effusion."],
             "draft_report": ["Right nodule.", "The lungs are clear.", "x", "x", "Left pleural effusion."],
             "consensus": ["The lungs are clear."] * 5}
    return metas, texts


def test_finding_block_keeps_the_studies_with_a_known_truth():
    metas, texts = _block_inputs()
    contradiction = {"draft": {"contradicting": 2}, "draft_report": {"contradicting": 0}}
    block = finding_block(texts, metas, ["a", "b", "c", "d", "e"], contradiction)
    assert block["studies"] == 3 and block["unscorable"] == {"pulmonary embolism": 1}
    assert block["truth"] == {"normal": 1, "pleural effusion (left)": 1, "pulmonary nodule (right)": 1}
    assert list(block["systems"]) == ["draft", "draft_report", "consensus"] and block["primary"] == "draft_report"
    report = block["systems"]["draft_report"]
    assert (report["tp"], report["fp"], report["fn"], report["f1"]) == (2, 0, 0, 1.0)
    draft = block["systems"]["draft"]  # "Left effusion." on the normal study; the wrong side on study e
    assert (draft["tp"], draft["fp"], draft["fn"]) == (1, 2, 1)
    assert draft["laterality"] == {"errors": 1, "named": 2, "rate": 0.5}
    assert draft["hallucination"]["studies"] == 1 and [p["case_id"] for p in draft["problems"]] == ["b", "e"]
    assert block["systems"]["consensus"]["recall"] == 0.0 and block["systems"]["consensus"]["precision"] is None
    assert {k: v["met"] for k, v in block["targets"].items()} == {
        "finding F1": True, "laterality error rate": True, "hallucinated-finding rate": True,
        "self-contradicting drafts": True}
    fallback = finding_block({"draft": texts["draft"]}, metas, self_contradiction=contradiction)
    assert fallback["primary"] == "draft" and fallback["targets"]["self-contradicting drafts"]["value"] == 2
    assert [p["case_id"] for p in fallback["systems"]["draft"]["problems"]] == ["1", "4"]  # indices without ids


def test_finding_block_is_none_without_truth():
    assert finding_block({"draft": ["Right nodule."]}, [{"label": "x"}]) is None
    assert finding_block({"draft": ["Right nodule."]}, [{"finding": "pulmonary embolism"}]) is None


def test_markdown_shows_the_finding_table_and_targets():
    metas, texts = _block_inputs()
    block = finding_block(texts, metas, self_contradiction={"draft_report": {"contradicting": 0}})
    lines = "\n".join(finding_lines(block))
    assert "| draft (medcm), FINDINGS + IMPRESSION | 1.0000 | 1.0000 | 1.0000 | 0.0000 (0/2) | 0.0000 (0/3) | - |" in lines
    assert "| draft (medcm), FINDINGS as scored | 0.3333 | 0.5000 | 0.4000 | 0.5000 (1/2) | 0.3333 (1/3) | pleural effusion 1 |" \
        in lines
    assert "| consensus report | n/a | 0.0000 | n/a | n/a (0/0) | 0.0000 (0/3) | - |" in lines
    assert "| finding F1 | >= 0.85 | 1.0000 | yes |" in lines and "| self-contradicting drafts | <= 0 | 0 | yes |" in lines
    assert "Not judged (finding outside the checker's table): pulmonary embolism 1" in lines
    results = {"model_id": "m", "counts": {"pool_cases": 1, "pool_images": 1, "query_cases": 5, "query_images": 5,
                                           "scored_drafts": 5},
               "retrieval": {k: {"R@1": 0.0, "R@5": 0.0, "R@10": 0.0, "median_rank": 1.0}
                             for k in ("image_to_report", "report_to_image")},
               "draft": {"BLEU-4": 0.1}, "baselines": {}, "gap_closed": {},
               "trust": {"checker": "c", "self_contradiction": {}, "diversity": {}, "findings": block,
                         "randomization": {"method": "m", "shuffles": 1, "seed": 0, "levels": {}, "metrics": {}}}}
    assert "| finding F1 | >= 0.85 | 1.0000 | yes |" in markdown_table(results)
