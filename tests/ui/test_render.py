"""Tests for ui.render: the worklist's columns."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

pytest.importorskip("gradio")

from db.records import StudyView  # noqa: E402
from medcm.engine.sender import SendStatus  # noqa: E402
from medcm.dicom.meta import age_band, patient_sex  # noqa: E402
from medcm.engine.priors import Prior  # noqa: E402
from medcm.engine.results import ImageMatch, SimilarCase  # noqa: E402
from medcm.report.draft_types import DraftSentence, Provenance  # noqa: E402
from ui.render import (  # noqa: E402
    case_label,
    compare_source_html,
    match_rows,
    provenance_rows,
    report_markdown,
    similar_rows,
    sources_markdown,
    prior_markdown,
    prior_rows,
    readable_date,
    report_line,
    send_status_text,
    study_markdown,
    worklist_rows,
)

UID = "2.25.1234567890123456789012345678907f3a2c"
WHEN = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _study(**changes) -> StudyView:
    fields = dict(study_uid=UID, patient_id="ANON-1a2b3c4d5e6f", study_date="20031113", description="CT CHEST",
                  status="signed", modalities=("CT",), body_parts=("CHEST",), instances=(), created_at=WHEN,
                  patient_sex="F", patient_age="60–69 y")
    return StudyView(**{**fields, **changes})


def test_the_worklist_shows_a_readable_label_clinical_context_and_the_uid_last():
    report = "FINDINGS: A small left pleural effusion with adjacent atelectasis, no pneumothorax, heart size normal.\n" \
             "IMPRESSION: Effusion."
    frame = worklist_rows([_study(), _study(study_uid="1.2.3", patient_sex="", patient_age="")], {UID: report})
    row = frame.iloc[0]
    assert row["case"] == "CT · 2003-11-13 · …7f3a2c" and list(frame.columns)[-1] == "study uid"
    assert (row["patient"], row["age"], row["sex"], row["date"], row["modality"], row["body part"]) == (
        "ANON-1a2b3c4d5e6f", "60–69 y", "F", "2003-11-13", "CT", "CHEST")
    assert row["study uid"] == UID and row["status"] == "signed"
    assert row["report"].startswith("FINDINGS: A small left") and row["report"].endswith("…")
    assert len(row["report"]) <= 90 and "IMPRESSION" not in row["report"]
    assert (frame.iloc[1]["age"], frame.iloc[1]["sex"], frame.iloc[1]["report"]) == ("", "", "")
    assert readable_date("") == "" and readable_date("2003") == "2003"
    drafted, new = _study(study_uid="1.4", status="drafted"), _study(study_uid="1.5", status="new")
    frame = worklist_rows([drafted, new], {"1.4": "FINDINGS: Clear.", "1.5": "FINDINGS: The model's own draft."})
    assert list(frame["report"]) == ["draft: FINDINGS: Clear.", ""]  # a model's unreviewed draft is no report
    assert case_label("1.2", (), "") == "…1.2" and report_line("  \n short\n") == "short"


@pytest.mark.parametrize(("age", "birth", "date", "band"), [
    ("065Y", "", "", "60–69 y"), ("060Y", "", "", "60–69 y"), ("009Y", "", "", "0–9 y"), ("018M", "", "", "0–9 y"),
    ("003W", "", "", "0–9 y"), ("010D", "", "", "0–9 y"), ("089Y", "", "", "80–89 y"), ("093Y", "", "", "90+ y"),
    ("", "19500601", "20100531", "50–59 y"), ("", "19500601", "20100601", "60–69 y"),  # from the birth date
    ("65", "", "", ""), ("", "", "20100531", ""), ("", "", "", ""), ("999Y", "", "", ""),
])
def test_the_age_is_kept_as_a_band_of_ten_years(age, birth, date, band):
    assert age_band(age, birth, date) == band


def test_the_sex_is_one_of_the_standard_values():
    assert [patient_sex(v) for v in ("F", " m ", "O", "", "X", "female")] == ["F", "M", "O", "", "", ""]


def test_the_study_line_shows_the_label_with_the_uid_on_hover_and_the_patient_context():
    line = study_markdown(_study(), 2, 3, None, ["a warning"])
    assert line.startswith("**CT · 2003-11-13** · <code title=\"StudyInstanceUID " + UID + "\">…7f3a2c</code>")
    assert "ANON\\-1a2b3c4d5e6f" not in line and "ANON-1a2b3c4d5e6f · 60–69 y · F · CHEST · CT CHEST" in line
    assert "2 series, 3 images, no report yet" in line and line.endswith("⚠ a warning")
    assert UID not in line.replace(f'title="StudyInstanceUID {UID}"', "")  # the bare UID only on hover


def test_the_study_line_counts_one_series_and_one_image_in_the_singular():
    assert "— 1 series, 1 image, no report yet" in study_markdown(_study(), 1, 1, None)


def test_priors_list_date_modality_status_and_show_the_signed_report():
    signed = Prior("1.2.9", "2002-01-05", "CR", "CHEST PA", "signed", "FINDINGS: Clear lungs.", 2, "dr.a")
    unsigned = Prior("1.2.8", "", "CT", "", "new", None)
    frame = prior_rows([signed, unsigned])
    assert list(frame.iloc[0]) == ["2002-01-05", "CR · CHEST PA", "signed", "FINDINGS: Clear lungs.", "1.2.9"]
    assert list(frame.iloc[1]) == ["", "CT", "new", "", "1.2.8"]
    assert "**CR · 2002-01-05**" in prior_markdown(signed) and "> FINDINGS: Clear lungs." in prior_markdown(signed)
    assert "signed version 2 by dr.a" in prior_markdown(signed)
    assert "no signed report (status: new)" in prior_markdown(unsigned)


def test_the_send_status_says_queued_failed_or_sent():
    assert send_status_text([]) == ""
    text = send_status_text([
        SendStatus("PACS@pacs:104", 2, "failed", 3, "association with PACS@pacs:104 not established (no connection)",
                   "2026-12-04T10:32:05.120+00:00"),
        SendStatus("ARCHIVE@a:104", 2, "pending", 0, None, None),
        SendStatus("PACS@pacs:104", 1, "sent", 1, None, None),
    ])
    assert text == ("v2 to PACS@pacs:104: not delivered after 3 attempt(s), retried at 10:32:05 UTC (association "
                    "with PACS@pacs:104 not established (no connection)); v2 to ARCHIVE@a:104: queued, sent in the "
                    "background; v1 to PACS@pacs:104: sent")


def test_the_comparison_source_names_both_series_with_its_labels_escaped():
    source = compare_source_html("/medcm/viewer/1.2/0", "/medcm/viewer/1.3/2", "This study", 'Prior · "2024"<b>')
    assert 'data-current="/medcm/viewer/1.2/0" data-prior="/medcm/viewer/1.3/2"' in source
    assert 'data-prior-label="Prior · &quot;2024&quot;&lt;b&gt;"' in source and "<b>" not in source


def test_cases_are_named_by_short_labels_with_the_full_uid_last_or_on_hover():
    similar = similar_rows([SimilarCase(UID, 0.8123, "FINDINGS: Clear.", "CT", "CHEST", 45.0, False)])
    assert list(similar.iloc[0]) == ["CT · …7f3a2c", 0.812, "p45", "", "CT", "CHEST", "FINDINGS: Clear.", UID]
    match = match_rows([ImageMatch("1.9", UID, 0.5, "", "")], {UID: "FINDINGS: Clear."})
    assert list(match.iloc[0]) == ["…7f3a2c", 0.5, "", "", "FINDINGS: Clear.", UID]
    source = Provenance(UID, 0.861, 0.9, "Clear lungs.")
    sentence = DraftSentence("Clear lungs.", "FINDINGS", 0.9, (source,))
    assert provenance_rows([sentence]).iloc[0]["source cases (score)"] == "…7f3a2c (0.861)"
    hover = f'<code title="StudyInstanceUID {UID}">…7f3a2c</code>'
    assert f"Case {hover} (case score 0.861" in sources_markdown(sentence, {UID: "FINDINGS: Clear lungs."})
    assert report_markdown(UID, None, 0.5).startswith(f"Case {hover} — similarity 0.500")
