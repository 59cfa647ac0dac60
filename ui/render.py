"""Pure presentation: images for the viewer, rows for the tables, Markdown for the side panels."""

from __future__ import annotations

import html
import io
import json
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
from PIL import Image

from db.store import CaseStore, ReportView, StoreError, StudyView, UserView
from medcm.dicom.read import DicomImage
from medcm.report.draft import DraftSentence
from medcm.report.draft_types import Abstention
from medcm.engine.facade import ImageMatch, Prior, SendStatus, SimilarCase
from medcm.engine.grounding import SentenceHeatmap, overlay

VIEW_MAX_PX = 1024
VIEW_MIN_PX = 512  # small images are magnified (nearest neighbour: every pixel stays a visible square)
SIMILAR_HEADERS = ["case", "score", "percentile", "match", "modality", "body part", "report", "study uid"]
SIMILAR_WIDTHS = ["11%", "6%", "8%", "6%", "7%", "8%", "40%", "14%"]
PROVENANCE_HEADERS = ["#", "section", "sentence", "score", "source cases (score)"]
# The case label first (what a reader scans), the full StudyInstanceUID last (selection reads it there).
WORKLIST_HEADERS = ["case", "patient", "age", "sex", "date", "modality", "body part", "description", "status",
                    "report", "study uid"]
PRIOR_HEADERS = ["date", "study", "status", "signed report", "study uid"]
PRIOR_WIDTHS = ["15%", "21%", "10%", "42%", "12%"]
REPORT_LINE_CHARS = 90
UID_TAIL = 6
MATCH_HEADERS = ["case", "score", "modality", "body part", "report", "study uid"]
MATCH_WIDTHS = ["12%", "7%", "8%", "9%", "50%", "14%"]
AUDIT_HEADERS = ["time (UTC)", "kind", "user", "study uid", "detail"]
USER_HEADERS = ["name", "role", "created (UTC)", "disabled"]
ROLE_NOTES = {
    "viewer": "you can read studies and reports; uploading, drafting and signing need a clinician account",
    "clinician": "your name is recorded with every draft you save and every report you sign",
    "admin": "you can read studies and the audit trail; signing needs a clinician account",
}


def frame_image(image: DicomImage, frame: int = 0) -> Image.Image:
    """One frame of a displayed DICOM image as an 8-bit greyscale picture, longer side 512–1024 px."""
    pixels = image.pixels
    index = min(max(int(frame), 0), pixels.shape[0] - 1)
    grey = (np.clip(pixels[index], 0.0, 1.0) * 255).round().astype(np.uint8)
    return _viewable(Image.fromarray(grey))  # uint8 [H, W] → mode "L"


def viewer_source_html(url: str) -> str:
    """The hidden element that tells the page's viewer (`ui/static/viewer.js`) which series to open."""
    return f'<span data-src="{html.escape(url, quote=True)}"></span>'


def compare_source_html(current: str, prior: str, current_label: str, prior_label: str) -> str:
    """The hidden element that tells the page's linked viewers which two series to set side by side."""
    def attr(value: str) -> str:
        return html.escape(value, quote=True)

    return (f'<span data-current="{attr(current)}" data-prior="{attr(prior)}" '
            f'data-current-label="{attr(current_label)}" data-prior-label="{attr(prior_label)}"></span>')


def heatmap_image(heat: SentenceHeatmap) -> Image.Image:
    """A sentence's heatmap over its image (red to yellow where the sentence is seen), longer side 512–1024 px."""
    return _viewable(Image.fromarray(overlay(heat.pixels, heat.heatmap)))  # uint8 [H, W, 3] → mode "RGB"


def _viewable(picture: Image.Image) -> Image.Image:
    """A picture with its longer side brought into 512–1024 px: small ones enlarged by whole pixels (no blur)."""
    longer = max(picture.size)
    if longer < VIEW_MIN_PX:
        factor = VIEW_MIN_PX // longer + (VIEW_MIN_PX % longer > 0)
        return picture.resize((picture.width * factor, picture.height * factor), Image.Resampling.NEAREST)
    picture.thumbnail((VIEW_MAX_PX, VIEW_MAX_PX))
    return picture


def png_image(png: bytes | None) -> Image.Image | None:
    """A stored PNG preview as a picture, None when there is none."""
    if not png:
        return None
    with Image.open(io.BytesIO(png)) as picture:
        picture.load()
        return picture.copy()


def blank(size: int = 64) -> Image.Image:
    """A mid-grey square standing in for a missing preview (keeps gallery positions aligned)."""
    return Image.new("L", (size, size), 128)


def study_preview(store: CaseStore, study_uid: str) -> Image.Image | None:
    """The preview of a study's first stored instance; None if it has none or the study is unknown."""
    try:
        instances = store.get_study(study_uid).instances
        return png_image(store.preview(instances[0].sop_instance_uid)) if instances else None
    except StoreError:
        return None


def table(rows: Sequence[Sequence[object]], headers: list[str]) -> pd.DataFrame:
    """A frame for a `gr.Dataframe` (headers kept even when there are no rows)."""
    return pd.DataFrame([list(row) for row in rows], columns=headers)


def percentile_text(percentile: float | None) -> str:
    """A calibrated score as shown: "p45" (45th percentile of the archive's own matches), "" when unknown."""
    return "" if percentile is None else f"p{percentile:.0f}"


def similar_rows(cases: Sequence[SimilarCase]) -> pd.DataFrame:
    """case label / score / percentile / match ("weak" or "") / modality / body part / report / study uid,
    best first."""
    return table([(_short_case(c.study_uid, c.modality), round(c.score, 3), percentile_text(c.percentile),
                   "weak" if c.weak else "", c.modality, c.body_part, c.report, c.study_uid) for c in cases],
                 SIMILAR_HEADERS)


def _short_case(study_uid: str, modality: str) -> str:
    return case_label(study_uid, [modality] if modality else (), "")


def case_caption(score: float, modality: str, body_part: str, percentile: float | None = None,
                 weak: bool = False) -> str:
    """The caption under a gallery thumbnail: raw score, calibrated score, "weak match", modality, body part."""
    parts = (f"{score:.3f}", percentile_text(percentile), "weak match" if weak else "", modality, body_part)
    return " · ".join(part for part in parts if part)


def abstention_markdown(abstention: Abstention) -> str:
    """What the app shows where the draft would be when the engine abstained: its reason, in plain words."""
    reason = abstention.reason[:1].upper() + abstention.reason[1:]
    return (f"### No draft: this archive holds nothing like this study\n{escape_md(reason)}.\n\n"
            "The similar cases are listed as weak matches only. Write the findings yourself.")


def provenance_rows(sentences: Sequence[DraftSentence], kept_in: str | None = None) -> pd.DataFrame:
    """One row per draft sentence: its number, section, text, score and source cases with scores.

    With `kept_in` (the text as saved or signed) only the sentences that text still holds are listed, under
    their draft numbers: a sentence the clinician deleted has no provenance in the report.
    """
    words = " ".join(kept_in.split()) if kept_in is not None else None
    rows = [
        (i, s.section, s.text, round(s.score, 3),
         ", ".join(f"…{p.case_id[-UID_TAIL:]} ({p.case_score:.3f})" for p in s.sources))
        for i, s in enumerate(sentences, start=1)
        if words is None or " ".join(s.text.split()) in words
    ]
    return table(rows, PROVENANCE_HEADERS)


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>|~#])")
_LIST_MARKER = re.compile(r"^(\s*)(\d+)([.)])|^(\s*)([-+])(?=\s)", re.MULTILINE)


def escape_md(text: str) -> str:
    """Text with its Markdown characters escaped: shown as written, never parsed as markup."""
    text = _MARKDOWN_SPECIAL.sub(r"\\\1", text)
    return _LIST_MARKER.sub(lambda m: f"{m[1]}{m[2]}\\{m[3]}" if m[2] else f"{m[4]}\\{m[5]}", text)


def quoted(text: str) -> str:
    """Report text as a Markdown block quote, escaped."""
    lines = [escape_md(line) for line in (text or "").strip().splitlines()] or [""]
    return "\n".join(f"> {line}" if line.strip() else ">" for line in lines)


def sources_markdown(sentence: DraftSentence, reports: dict[str, str]) -> str:
    """The source cases of one draft sentence: what each wrote, and its whole report."""
    parts = [f"**Sources of:** {escape_md(sentence.text)}"]
    for p in sentence.sources:
        parts.append(
            f"---\nCase {uid_label(p.case_id, (), '')} (case score {p.case_score:.3f}, sentence score {p.sentence_score:.3f})\n\n"
            f"It wrote: “{escape_md(p.original)}”\n\n{quoted(reports.get(p.case_id, '(no report)'))}"
        )
    return "\n\n".join(parts)


def report_markdown(study_uid: str, report: ReportView | None, score: float | None = None,
                    percentile: float | None = None) -> str:
    """A stored case's latest report with its status line (and its raw and calibrated score, when given)."""
    head = f"Case {uid_label(study_uid, (), '')}" + (f" — similarity {score:.3f}" if score is not None else "")
    head += f" (percentile {percentile:.0f} among this archive's own best matches)" if percentile is not None else ""
    if report is None:
        return f"{head}\n\n(no report stored)"
    status = f"{report.status} version {report.version}"
    if report.signed_by:
        status += f" by {escape_md(report.signed_by)}"
    return f"{head}\n\n_{status}_\n\n{quoted(report.text)}"


def case_label(study_uid: str, modalities: Sequence[str], study_date: str) -> str:
    """A study as a reader names it at a glance: "CT · 2003-11-13 · …7f3a2c" (modalities, date, the end
    of the UID to tell two studies of one day apart); the full UID goes beside it (last column, hover)."""
    parts = (", ".join(modalities), readable_date(study_date), f"…{study_uid[-UID_TAIL:]}" if study_uid else "")
    return " · ".join(part for part in parts if part)


def uid_label(study_uid: str, modalities: Sequence[str], study_date: str) -> str:
    """`case_label` as Markdown: modalities and date in bold, the UID's end in a `<code>` whose hover shows
    the full StudyInstanceUID."""
    head = html.escape(" · ".join(p for p in (", ".join(modalities), readable_date(study_date)) if p))
    uid = html.escape(study_uid, quote=True)
    tail = html.escape(study_uid[-UID_TAIL:])
    return (f"**{head}** · " if head else "") + f'<code title="StudyInstanceUID {uid}">…{tail}</code>'


def sex_text(sex: str) -> str:
    """Stored PatientSex as shown: "F", "M", "other" ("O"), "" unknown."""
    return {"O": "other"}.get(sex, sex)


def report_line(text: str | None, limit: int = REPORT_LINE_CHARS) -> str:
    """The first non-empty line of a report, at most `limit` characters (cut at a word, with "…")."""
    line = next((line.strip() for line in (text or "").splitlines() if line.strip()), "")
    if len(line) <= limit:
        return line
    cut = line[: limit - 1].rsplit(" ", 1)[0] or line[: limit - 1]
    return cut.rstrip(" ,;:") + "…"


def worklist_rows(studies: Sequence[StudyView], reports: dict[str, str] | None = None) -> pd.DataFrame:
    """case label / patient (the pseudonym) / age band / sex / date / modality / body part / description /
    status / the latest report's first line (`reports`: study uid → text) / study uid, in the given order.

    The report column shows what a person wrote: a signed report as it is, a saved draft marked "draft:", and
    nothing for a "new" study (its only text, if any, is the model's unreviewed draft)."""
    reports = reports or {}
    rows = [
        (case_label(s.study_uid, s.modalities, s.study_date), s.patient_id, s.patient_age, sex_text(s.patient_sex),
         readable_date(s.study_date), ", ".join(s.modalities), ", ".join(s.body_parts), s.description, s.status,
         _worklist_report(s.status, reports.get(s.study_uid)), s.study_uid)
        for s in studies
    ]
    return table(rows, WORKLIST_HEADERS)


def _worklist_report(status: str, text: str | None) -> str:
    if status == "new" or not text:
        return ""
    line = report_line(text, REPORT_LINE_CHARS - 7)
    return f"draft: {line}" if status == "drafted" else line


def readable_date(value: str) -> str:
    """A DICOM DA ("20031113") as "2003-11-13"; anything else as it is."""
    text = (value or "").strip()
    return f"{text[:4]}-{text[4:6]}-{text[6:8]}" if len(text) == 8 and text.isdigit() else text


def match_rows(matches: Sequence[ImageMatch], reports: dict[str, str]) -> pd.DataFrame:
    """case label / score / modality / body part / report / study uid of text-search matches."""
    rows = [(_short_case(m.study_uid, m.modality), round(m.score, 3), m.modality, m.body_part,
             reports.get(m.study_uid, ""), m.study_uid) for m in matches]
    return table(rows, MATCH_HEADERS)


def saved_message(report: ReportView) -> str:
    """"Draft saved as version N by <author> at <time>"."""
    when = report.created_at.strftime("%Y-%m-%d %H:%M:%S %Z").strip() if report.created_at else "an unknown time"
    return f"Draft saved as version {report.version} by {report.author} at {when}"


def login_markdown(name: str, role: str) -> str:
    """The line naming who is logged in, in which role, and what that means."""
    return f"Logged in as **{escape_md(name)}** ({role}): {ROLE_NOTES.get(role, '')}"


def audit_rows(events: Sequence[dict]) -> pd.DataFrame:
    """time / kind / user / study uid / detail (compact JSON), in the given (newest first) order."""
    rows = [(e["time"].strftime("%Y-%m-%d %H:%M:%S"), e["kind"], e["user"], e["study_uid"] or "",
             json.dumps(e["detail"], sort_keys=True, separators=(", ", ": "))) for e in events]
    return table(rows, AUDIT_HEADERS)


def user_rows(users: Sequence[UserView]) -> pd.DataFrame:
    """name / role / created / disabled, by name."""
    rows = [(u.name, u.role, u.created_at.strftime("%Y-%m-%d %H:%M"), "yes" if u.disabled else "") for u in users]
    return table(rows, USER_HEADERS)


def signed_message(report: ReportView) -> str:
    """"Signed version N by <signer> at <time>"."""
    when = report.signed_at.strftime("%Y-%m-%d %H:%M:%S %Z").strip() if report.signed_at else "an unknown time"
    return f"Signed version {report.version} by {report.signed_by} at {when}"


def send_status_text(statuses: Sequence[SendStatus]) -> str:
    """Where a signed report stands with each PACS, e.g. "PACS@pacs:104: sent; ARCHIVE@a:104: failed, retried at
    10:32:05 (no connection)"; "" when nothing is sent anywhere."""
    parts = []
    for status in statuses:
        text = {"pending": "queued, sent in the background", "sent": "sent"}.get(status.state, status.state)
        if status.state == "failed":
            when = status.next_try[11:19] if status.next_try else "soon"
            text = f"not delivered after {status.attempts} attempt(s), retried at {when} UTC ({status.last_error})"
        parts.append(f"v{status.version} to {status.destination}: {text}")
    return "; ".join(parts)


def sign_question(name: str) -> str:
    """The confirmation asked before a signature."""
    return (f"**Sign this report as {escape_md(name)}?** It becomes the study's verified report, sent to the "
            "configured destinations; a later change is an amendment.")


def verified_marker(report: ReportView) -> str:
    """The banner over a signed report: VERIFIED, by whom and when."""
    return (f"### ✔ VERIFIED\n{escape_md(signed_message(report))}. Changing the text and signing again adds an "
            "amended version.")


def study_markdown(study: StudyView, n_series: int, n_images: int, report: ReportView | None,
                   notes: Sequence[str] = ()) -> str:
    """The line above the viewer: the study's label (its full UID on hover), the patient's pseudonym, age band
    and sex where known, body part and description, how many series and images (a CT volume's slices each
    count), its report status, any warnings."""
    head = uid_label(study.study_uid, study.modalities, study.study_date)
    context = [study.patient_id, study.patient_age, sex_text(study.patient_sex), ", ".join(study.body_parts),
               study.description]
    status = "no report yet" if report is None else f"latest report: {report.status} version {report.version}"
    text = " · ".join([head, *(escape_md(part) for part in context if part)]) + f" — {_count(n_series, 'series', 'series')}, {_count(n_images, 'image', 'images')}, {status}"
    return text + "".join(f"\n\n⚠ {escape_md(note)}" for note in notes)


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def prior_rows(priors: Sequence[Prior]) -> pd.DataFrame:
    """date / study (modality · description) / status / the signed report's first line / study uid, newest first."""
    rows = [(p.study_date, " · ".join(part for part in (p.modality, p.description) if part), p.status,
             report_line(p.report, 60), p.study_uid) for p in priors]
    return table(rows, PRIOR_HEADERS)


def prior_markdown(prior: Prior) -> str:
    """A prior study's heading and its latest signed report (or that it has none)."""
    label = uid_label(prior.study_uid, prior.modality.split(", ") if prior.modality else (), prior.study_date)
    head = "Prior: " + label + (f" · {escape_md(prior.description)}" if prior.description else "")
    if prior.report is None:
        return f"{head}\n\n_no signed report (status: {prior.status})_"
    signer = f" by {escape_md(prior.signed_by)}" if prior.signed_by else ""
    return f"{head}\n\n_signed version {prior.report_version}{signer}_\n\n{quoted(prior.report)}"
