"""Tests for medcm.report.text: exact expected outputs for sections, sentences and metrics text."""

from __future__ import annotations

import math
import random

import pytest

from medcm.report.text import (
    SECTION_ALIASES,
    Report,
    clean_text,
    is_negated,
    normalize_for_metrics,
    report_text_for_training,
    section_order,
    sentence_key,
    split_sections,
    split_sentences,
)

MEDPIX = (
    "Findings: Axial CT images demonstrate a 2.3 cm hypodense lesion in segment VII of the "
    "liver (arrow). No ascites."
)


# --- aliases and order ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("FINDING", "FINDINGS"), ("FINDINGS", "FINDINGS"), ("IMPRESSIONS", "IMPRESSION"),
        ("CONCLUSION", "IMPRESSION"), ("CONCLUSIONS", "IMPRESSION"), ("OPINION", "IMPRESSION"),
        ("SUMMARY", "IMPRESSION"), ("HISTORY", "INDICATION"), ("CLINICAL HISTORY", "INDICATION"),
        ("CLINICAL INDICATION", "INDICATION"), ("REASON FOR EXAM", "INDICATION"),
        ("PROCEDURE", "TECHNIQUE"), ("EXAM", "TECHNIQUE"), ("EXAMINATION", "TECHNIQUE"),
        ("COMPARISONS", "COMPARISON"), ("RECOMMENDATIONS", "RECOMMENDATION"),
        ("DIAGNOSIS", "DIAGNOSIS"),
    ],
)
def test_section_aliases(alias: str, canonical: str) -> None:
    assert SECTION_ALIASES[alias] == canonical


def test_section_order() -> None:
    assert section_order == (
        "INDICATION", "COMPARISON", "TECHNIQUE", "FINDINGS", "IMPRESSION", "RECOMMENDATION")


# --- sections ---------------------------------------------------------------------------
F_I = (("FINDINGS", "The lungs are clear."), ("IMPRESSION", "Normal chest."))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("FINDINGS: The lungs are clear.\nIMPRESSION: Normal chest.", F_I),
        # Same line: an ALL-CAPS known header with ":" splits mid-line.
        ("FINDINGS: The lungs are clear. IMPRESSION: Normal chest.", F_I),
        ("Findings: The lungs are clear.\nImpression: Normal chest.", F_I),
        ("findings: The lungs are clear.\nconclusion: Normal chest.", F_I),
        ("FINDINGS\nThe lungs are clear.\nIMPRESSION\nNormal chest.", F_I),
        ("Findings - The lungs are clear.\nIMPRESSION -\nNormal chest.", F_I),
        ("<p>FINDINGS:&nbsp;The lungs are clear.<br>IMPRESSION: Normal chest.</p>", F_I),
        ("CLINICAL HISTORY: Fever. COMPARISON: None.",
         (("INDICATION", "Fever."), ("COMPARISON", "None."))),
        ("EXAM: CT CHEST HISTORY: COUGH", (("TECHNIQUE", "CT CHEST"), ("INDICATION", "COUGH"))),
        ("NOTIFICATION: Discussed with Dr. Smith.\nFINDINGS: Clear.",
         (("NOTIFICATION", "Discussed with Dr. Smith."), ("FINDINGS", "Clear."))),
        ("LUNGS: Clear.\nHEART: Normal size.", (("LUNGS", "Clear."), ("HEART", "Normal size."))),
        ("The lungs are clear.\nNo effusion.", (("BODY", "The lungs are clear.\nNo effusion."),)),
        ("Note: see prior.\nFINDINGS: Clear.",
         (("BODY", "Note: see prior."), ("FINDINGS", "Clear."))),
        ("FINDINGS: A.\nIMPRESSION: B.\nFINDINGS: C.",
         (("FINDINGS", "A.\nC."), ("IMPRESSION", "B."))),
        ("FINDINGS:\nIMPRESSION: Normal.", (("FINDINGS", ""), ("IMPRESSION", "Normal."))),
        ("FINDINGS:\nLine one\nline two.\n\n\nIMPRESSION: X.",
         (("FINDINGS", "Line one\nline two."), ("IMPRESSION", "X."))),
        # Mid-line headers must be ALL CAPS; title-case alone on a line is not a header.
        ("FINDINGS: Clear. Impression: normal.", (("FINDINGS", "Clear. Impression: normal."),)),
        ("Findings\nClear.", (("BODY", "Findings\nClear."),)),
        ("See http://example.org at 10:30", (("BODY", "See http://example.org at 10:30"),)),
        ("History: 45 y/o man with RUQ pain.\n" + MEDPIX + "\nDiagnosis: Hepatic cyst",
         (("INDICATION", "45 y/o man with RUQ pain."), ("FINDINGS", MEDPIX[10:]),
          ("DIAGNOSIS", "Hepatic cyst"))),
        ("", ()),
        ("  \n<br>&nbsp;", ()),
    ],
)
def test_split_sections(text: str, expected: tuple[tuple[str, str], ...]) -> None:
    assert split_sections(text).sections == expected


def test_report_accessors() -> None:
    report = split_sections("Intro.\nFINDINGS: A.\nCONCLUSION: B.")
    assert report.findings == "A."
    assert report.impression == "B."
    assert report.get("conclusions") == "B."
    assert report.get("body") == "Intro."
    assert report.get("RECOMMENDATION", "n/a") == "n/a"
    empty = split_sections("")
    assert empty == Report(()) and empty.findings == "" and empty.impression == ""


# --- cleaning ---------------------------------------------------------------------------
CLEAN_CASES = [
    ("a&nbsp;&nbsp;b", "a b"),
    ("a<br>b<br/>c<BR />d", "a\nb\nc\nd"),
    ("<p>Line one</p><p>Line two</p>", "Line one\n\nLine two"),
    ("<b>Bold</b> <span class='x'>text</span><!-- note -->", "Bold text"),
    ("size <5 mm and a < b", "size <5 mm and a < b"),
    ("&lt;5 mm &amp; stable", "<5 mm & stable"),
    ("&amp;lt;br&amp;gt;x", "x"),
    ("\u201cquoted\u201d \u2018x\u2019 2\u20133 cm \u2014 y\u2026", "\"quoted\" 'x' 2-3 cm - y..."),
    ("  a \t b  \n\n\n\n  c  ", "a b\n\nc"),
    ("___ ___ year old ______", "___ year old ___"),
    ("\r\nA\r\nB\rC\r\n", "A\nB\nC"),
    ("zero\u200bwidth\ufeff", "zerowidth"),
    ("", ""),
]


@pytest.mark.parametrize(("text", "expected"), CLEAN_CASES)
def test_clean_text(text: str, expected: str) -> None:
    assert clean_text(text) == expected


FRAGMENTS = ["<br>", "</p>", "<p>", "&nbsp;", "&amp;", "&lt;", "&gt;", "&amp;lt;", " ", "  ",
             "\t", "\n", "\r\n", "___", "_", "FINDINGS:", "a", "2.3 cm", "\u2019", "\u2014",
             "\u00a0", "<b>", "<", ">", "&", "amp;", "br", "nbsp;", "."]


@pytest.mark.parametrize("text", [t for t, _ in CLEAN_CASES] + [MEDPIX, "&amp;amp;nbsp;x"])
def test_clean_text_idempotent(text: str) -> None:
    once = clean_text(text)
    assert clean_text(once) == once


def test_clean_text_idempotent_random() -> None:
    rng = random.Random(1234)
    for _ in range(500):
        text = "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(0, 20)))
        once = clean_text(text)
        assert clean_text(once) == once, repr(text)


# --- sentences --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (MEDPIX, [MEDPIX[:-12], "No ascites."]),
        ("Discussed with Dr. Smith on the ward. Stable.",
         ["Discussed with Dr. Smith on the ward.", "Stable."]),
        ("Favor cyst vs. Hemangioma. Follow-up advised.",
         ["Favor cyst vs. Hemangioma.", "Follow-up advised."]),
        ("Small nodules, e.g. RUL, are stable. Likely benign, i.e. A cyst.",
         ["Small nodules, e.g. RUL, are stable.", "Likely benign, i.e. A cyst."]),
        ("Approx. 3 cm mass. No ascites.", ["Approx. 3 cm mass.", "No ascites."]),
        ("A 2.3 cm lesion. A 1.5 x 2.0 cm cyst.", ["A 2.3 cm lesion.", "A 1.5 x 2.0 cm cyst."]),
        ("Lesion measures 2.3 cm. No ascites.", ["Lesion measures 2.3 cm.", "No ascites."]),
        ("Mass measuring 2 cm. in size.", ["Mass measuring 2 cm. in size."]),
        ("See Fig. 2 for details. Stable.", ["See Fig. 2 for details.", "Stable."]),
        ("Lesion no. 3 is stable.", ["Lesion no. 3 is stable."]),
        ("Take 1 tab p.o. q.d. for 5 days.", ["Take 1 tab p.o. q.d. for 5 days."]),
        ("Seen by J. Smith, M.D. On call.", ["Seen by J. Smith, M.D. On call."]),
        ("St. Mary's Hospital records reviewed.", ["St. Mary's Hospital records reviewed."]),
        ("A 4 mm nodule in segment 7. The liver is normal.",
         ["A 4 mm nodule in segment 7.", "The liver is normal."]),
        ("1. No acute process. 2. Stable 4 mm nodule.",
         ["No acute process.", "Stable 4 mm nodule."]),
        ("1. No acute process\n2. Stable 4 mm nodule",
         ["No acute process.", "Stable 4 mm nodule."]),
        ("1) Cardiomegaly 2) Small effusion", ["Cardiomegaly.", "Small effusion."]),
        ("(1) Cardiomegaly. (2) Small effusion.", ["Cardiomegaly.", "Small effusion."]),
        ("1. Normal chest 2. No change 3. Stable", ["Normal chest.", "No change.", "Stable."]),
        ("1. Lesion in segment 2. Stable since prior.",
         ["Lesion in segment 2.", "Stable since prior."]),
        ("- Cardiomegaly\n- Small left effusion\n- No pneumothorax",
         ["Cardiomegaly.", "Small left effusion.", "No pneumothorax."]),
        ("- Cardiomegaly\nwith mild edema\n- No effusion",
         ["Cardiomegaly with mild edema.", "No effusion."]),
        ("- Cardiomegaly\nNo effusion.", ["Cardiomegaly.", "No effusion."]),
        ("\u2022 Cardiomegaly \u2022 Effusion", ["Cardiomegaly.", "Effusion."]),
        ("* Item one\n* Item two.", ["Item one.", "Item two."]),
        ("No pneumothorax", ["No pneumothorax."]),
        ("Lungs clear, heart normal,", ["Lungs clear, heart normal."]),
        ("The lungs   are\nclear.\n\n\nNo effusion", ["The lungs are clear.", "No effusion."]),
        ("Cardiomegaly\nwith mild edema.", ["Cardiomegaly with mild edema."]),
        ("Is this pneumonia? Unlikely! Follow up.",
         ["Is this pneumonia?", "Unlikely!", "Follow up."]),
        ('The report states "no change." Stable.', ['The report states "no change."', "Stable."]),
        ("Mass (arrow). Cyst (arrowhead)", ["Mass (arrow).", "Cyst (arrowhead)."]),
        ("NO ACUTE DISEASE. STABLE CARDIOMEGALY", ["NO ACUTE DISEASE.", "STABLE CARDIOMEGALY."]),
        ("the heart is normal . the lungs are clear .",
         ["the heart is normal.", "the lungs are clear."]),
        ("Compared with 01.02.2020 study. Stable.", ["Compared with 01.02.2020 study.", "Stable."]),
        ("Line<br>two&nbsp;words", ["Line two words."]),
        ("", []),
        ("  \n\n ", []),
        ("... - 1.", []),
    ],
)
def test_split_sentences(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected


# --- training text ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("INDICATION: Cough.\nFINDINGS: The lungs are clear.\nIMPRESSION: Normal chest.",
         "The lungs are clear. Normal chest."),
        ("INDICATION: Cough.\nFINDINGS: The lungs are clear,\nno effusion",
         "The lungs are clear, no effusion."),
        ("The lungs are clear.\nNo effusion", "The lungs are clear. No effusion."),
        ("IMPRESSION:\n1. No acute process.\n2. Stable nodule.",
         "No acute process. Stable nodule."),
        ("FINDINGS:\nLUNGS: Clear.\nHEART: Normal size.\nIMPRESSION: Normal.",
         "Clear. Normal size. Normal."),
        ("HISTORY: Fever.\nTECHNIQUE: PA and lateral.\nDIAGNOSIS: Pneumonia", "Pneumonia."),
        ("History: 45 y/o man.\n" + MEDPIX + "\nDiagnosis: Hepatic cyst", MEDPIX[10:]),
        ("INDICATION: Cough.\nCOMPARISON: None.", ""),
        ("", ""),
    ],
)
def test_report_text_for_training(text: str, expected: str) -> None:
    assert report_text_for_training(text) == expected


# --- metrics normalisation --------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The 2.3 cm lesion (arrow)!", "the 2.3 cm lesion arrow"),
        ("2-3 cm", "2 3 cm"),
        ("Size: 10.5 x 3 mm.", "size 10.5 x 3 mm"),
        ("No  pleural\neffusion.", "no pleural effusion"),
        ("Patient's CT&nbsp;scan", "patients ct scan"),
        ("T2-weighted, FLAIR/DWI", "t2 weighted flair dwi"),
        ("___-year-old", "year old"),
        ("1. Stable.", "1 stable"),
        ("e.g. CT", "e g ct"),
        ("\u00c7a va", "\u00e7a va"),
        ("", ""),
    ],
)
def test_normalize_for_metrics(text: str, expected: str) -> None:
    assert normalize_for_metrics(text) == expected


def test_sentence_key() -> None:
    assert sentence_key("No pleural effusion.") == sentence_key("no  pleural effusion")
    assert sentence_key("No effusion.") != sentence_key("Small effusion.")
    assert sentence_key("Normal chest!") == normalize_for_metrics("Normal chest!")


# --- negation ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("sentence", "expected"),
    [
        ("No pleural effusion.", True),
        ("There is no pneumothorax.", True),
        ("Without evidence of fracture.", True),
        ("Negative for malignancy.", True),
        ("Negative.", True),
        ("Absence of free air.", True),
        ("Lungs are free of consolidation.", True),
        ("Pneumothorax is not seen.", True),
        ("Lymph nodes are not identified.", True),
        ("No evidence of pulmonary embolism.", True),
        ("Pulmonary embolism was ruled out.", True),
        ("There isn't any effusion.", True),
        ("No new consolidation.", True),
        ("Small effusion, no pneumothorax.", True),
        ("Small left effusion.", False),
        ("No change in the 4 mm nodule.", False),
        ("No interval change in cardiomegaly.", False),
        ("No significant interval change in the effusion.", False),
        ("Unchanged 4 mm nodule.", False),
        ("Nodule, not significantly changed.", False),
        ("Pneumonia cannot be excluded.", False),
        ("Malignancy is not ruled out.", False),
        ("CT of the abdomen with and without contrast.", False),
        ("CT head without contrast shows a bleed.", False),
        ("Free fluid in the pelvis.", False),
        ("Notable cardiomegaly.", False),
        ("", False),
    ],
)
def test_is_negated(sentence: str, expected: bool) -> None:
    assert is_negated(sentence) is expected


# --- type errors ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "func",
    [clean_text, split_sections, split_sentences, report_text_for_training,
     normalize_for_metrics, sentence_key, is_negated],
)
@pytest.mark.parametrize(
    ("value", "type_name"), [(None, "NoneType"), (3, "int"), (b"x", "bytes"), (["x"], "list")]
)
def test_type_errors(func, value: object, type_name: str) -> None:
    with pytest.raises(TypeError, match=rf"must be str, got {type_name}"):
        func(value)


def test_report_get_type_error() -> None:
    with pytest.raises(TypeError, match="name must be str, got int"):
        Report(()).get(3)  # type: ignore[arg-type]


def test_ngram_precision_by_hand():
    from medcm.report.text import ngram_counts, ngram_precision

    cand = ngram_counts("the cat sat on the mat".split())
    ref = ngram_counts("the cat is on the mat".split())
    # Clipped matches 5/6, 3/5, 1/4, 0/3 (+1e-9): the geometric mean of the four precisions.
    expected = math.exp((math.log(5 / 6) + math.log(3 / 5) + math.log(1 / 4) + math.log(1e-9 / 3)) / 4)
    assert ngram_precision(cand, ref) == pytest.approx(expected, rel=1e-12)
    assert ngram_precision(ref, ref) == pytest.approx(1.0)
    assert ngram_precision(ngram_counts([]), ref) == 0.0


def test_findings_text_keeps_subsections_after_findings():
    from medcm.report.text import findings_text

    text = "HISTORY: pain.\nFINDINGS: Mass in the liver.\n\nCT: Enhancing rim.\nIMPRESSION: Abscess."
    assert findings_text(text) == "Mass in the liver.\n\nCT: Enhancing rim."
    assert findings_text("IMPRESSION: Normal.") == ""
