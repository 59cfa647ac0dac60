"""Report versions: which one a save, a signature or an archive import writes, and writing them; each keeps its author.

- A draft is updated in place only by the same author writing the same kind of text (the model
  re-drafting its own draft, a clinician re-saving their own edit); anyone else's text becomes a new
  version, so what the model suggested stays beside what the clinician changed.
- A signature signs the signer's own latest draft in place; over a machine draft, another person's
  draft, a signed version (an amendment) or nothing, it adds a new signed version by the signer.
  Signing again the text the signer's latest signed version holds is a retry: the same version is
  returned and nothing new is written (`SIGN_REPEAT`).
- A study's status follows its latest version that is not a machine draft (source `MACHINE_SOURCE`): "new"
  with none, "drafted" with a person's draft (an edit, or an imported draft), "signed" with a signed
  version. The model's draft is kept and shown, but changes no status: no person has worked on the study.
- An archive import (source "ingest") never supersedes a version a person signed in medcm: it is kept
  out of the versions and reported (`kept_by_signature`), and its text is kept in the ingest's audit
  event.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from db.models import REPORT_STATUSES, Report, Study, utcnow
from db.read import CHUNK
from db.records import StoreError
from db.write import by_key, check_text, sections_of

__all__ = ["IMPORT_SOURCE", "MACHINE_SOURCE", "SIGN_IN_PLACE", "SIGN_NEW", "SIGN_REPEAT", "add_reports",
           "draft_in_place", "kept_by_signature", "new_report", "sign_action", "stored_versions"]

IMPORT_SOURCE = "ingest"  # the source of a version an archive import wrote
MACHINE_SOURCE = "draft"  # the source of a draft the model wrote (`save_draft(source="draft")`)
SIGN_REPEAT, SIGN_IN_PLACE, SIGN_NEW = "repeat", "in place", "new version"


def draft_in_place(latest: Report | None, author: str, source: str) -> bool:
    """Whether a draft by `author` of kind `source` updates `latest` rather than adding a version."""
    return latest is not None and latest.status == "draft" and latest.author == author and latest.source == source


def sign_action(latest: Report | None, signer: str, text: str) -> str:
    """How `signer` signing `text` is written over `latest` (the study's newest version, None if none)."""
    if latest is not None and latest.status == "signed" and latest.signed_by == signer and latest.text == text:
        return SIGN_REPEAT
    if latest is not None and latest.status == "draft" and latest.author == signer and latest.source != MACHINE_SOURCE:
        return SIGN_IN_PLACE
    return SIGN_NEW


def kept_by_signature(latest: Report | None) -> bool:
    """Whether an archive import must not become the version after `latest`: a person signed it here."""
    return latest is not None and latest.status == "signed" and latest.source != IMPORT_SOURCE


def new_report(
    s: Session, study: Study, latest: Report | None, text: str, sections: list[list[str]], status: str,
    author: str, source: str,
) -> Report:
    """Add the next report version of `study` (after `latest`)."""
    report = Report(
        study=study, version=latest.version + 1 if latest else 1, text=text, sections_json=sections,
        status=status, author=author, source=source,
    )
    if status == "signed":
        report.signed_by, report.signed_at = author, utcnow()
    s.add(report)
    return report


def add_reports(s: Session, items: Sequence[Any]) -> tuple[int, dict[str, str]]:
    """Add each report as its study's next version, unless a stored version has the same text or a
    person signed the study's latest version in medcm (`db.versions.kept_by_signature`).

    Two queries and one INSERT for the whole call, however many reports: the versions added here
    are counted in memory, so a second report of a study in the same call becomes the version
    after the first, and a repeated text is skipped.

    Returns:
        The number of versions added, and the reports kept out by a signature (study UID → text).
    """
    studies = by_key(s, Study.study_uid, (item.study_uid for item in items if isinstance(item.study_uid, str)))
    numbers, texts = stored_versions(s, [study.id for study in studies.values()])
    signed_here = {study_id for study_id in numbers if kept_by_signature(
        s.scalar(select(Report).where(Report.study_id == study_id, Report.version == numbers[study_id])))}
    rows: list[dict[str, Any]] = []
    kept_out: dict[str, str] = {}
    for item in items:
        uid = check_text("report study_uid", item.study_uid)
        study = studies.get(uid)
        if study is None:
            raise StoreError(f"study {uid!r}: not in the store; expected a stored StudyInstanceUID")
        text = check_text(f"report of study {uid}: text", item.text)
        sections = sections_of(f"report of study {uid}: sections", item.sections)
        author = check_text(f"report of study {uid}: author", item.author)
        if item.status not in REPORT_STATUSES:
            raise StoreError(f"report of study {uid}: status {item.status!r}; expected one of {REPORT_STATUSES}")
        known = texts.setdefault(study.id, set())
        if text in known:
            continue
        if study.id in signed_here:
            kept_out[uid] = text
            continue
        numbers[study.id] = numbers.get(study.id, 0) + 1
        known.add(text)
        signed = item.status == "signed"
        rows.append({"study_id": study.id, "version": numbers[study.id], "text": text, "sections_json": sections,
                     "status": item.status, "author": author, "source": IMPORT_SOURCE,
                     "signed_by": author if signed else None, "signed_at": utcnow() if signed else None})
        study.status = "signed" if signed else "drafted"
    if rows:
        s.execute(insert(Report), rows)
    return len(rows), kept_out


def stored_versions(s: Session, study_ids: Sequence[int]) -> tuple[dict[int, int], dict[int, set[str]]]:
    """Per study id: its highest stored report version, and the texts of all its versions (studies
    without a report are absent)."""
    latest: dict[int, int] = {}
    texts: dict[int, set[str]] = {}
    for start in range(0, len(study_ids), CHUNK):
        rows = s.execute(select(Report.study_id, Report.version, Report.text)
                         .where(Report.study_id.in_(study_ids[start : start + CHUNK])))
        for study_id, version, text in rows:
            latest[study_id] = max(version, latest.get(study_id, 0))
            texts.setdefault(study_id, set()).add(text)
    return latest, texts
