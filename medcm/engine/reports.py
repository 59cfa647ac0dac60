"""A study's report versions as the CLI and the app both handle them: scrubbing, saving a machine draft, export.

A report a person writes (an edit, a signature) is scrubbed on its way in like an ingested one
(`scrubbed_report`): the study's stored keyed identifier hashes, dates, phone numbers, e-mail
addresses, record numbers and titled names become placeholders. A machine draft (author `DRAFT_AUTHOR`, source "draft") is saved over nothing or over an earlier
machine draft only: a person's edit and a signed report are never replaced by the model. Export
writes one version (`medcm.dicom.sr`) to a file and records one "export" event.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from medcm.dicom.deid import DeidConfig
from medcm.dicom.deid_text import scrub_report
from medcm.dicom.sr import EXPORT_FORMATS, export_filename, export_report, pick_report, save_export
from medcm.engine.records import IDENTIFIER_KEYS
from medcm.report.text import split_sections

__all__ = ["DRAFT_AUTHOR", "Export", "ReportStoreLike", "export_study_report", "may_replace_with_machine_draft",
           "save_machine_draft", "scrubbed_report"]

DRAFT_AUTHOR = "medcm-draft"  # the author of every version the model wrote


class ReportStoreLike(Protocol):
    """The part of `db.store.CaseStore` that saving drafts and exporting use."""

    def latest_report(self, study_uid: str, signed_only: bool = ...) -> Any: ...
    def save_draft(self, study_uid: str, text: str, sections: list, author: str, source: str = ...,
                   user: str | None = ...) -> Any: ...
    def report_versions(self, study_uid: str) -> list: ...
    def get_study(self, study_uid: str) -> Any: ...
    def log_event(self, kind: str, user: str, study_uid: str | None = ..., detail: dict | None = ...) -> None: ...


@dataclass(frozen=True)
class Export:
    """A written export: the file and the report version it holds (`db.store.ReportView`)."""

    path: Path
    report: Any


def scrubbed_report(store: ReportStoreLike, study_uid: str, text: str, deid: DeidConfig | None) -> str:
    """`text` as a person's report on `study_uid` is stored: scrubbed when the store de-identifies (`deid`).

    The study's originals are gone, so its names and ids are matched through the keyed hashes ingest
    kept in its instances' metadata (`IDENTIFIER_KEYS`); without `deid` (`--no-deid`) the text is kept.

    Raises:
        StoreError: unknown study.
    """
    if deid is None:
        return text
    keys = {key for view in store.get_study(study_uid).instances for key in (view.metadata or {}).get(IDENTIFIER_KEYS, ())}
    return scrub_report(text, keyed=(keys, deid.key))


def may_replace_with_machine_draft(latest: Any | None) -> bool:
    """Whether a machine draft may be saved over `latest` (a study's newest version, None if it has none)."""
    return latest is None or (latest.status == "draft" and latest.source == "draft")


def save_machine_draft(store: ReportStoreLike, study_uid: str, text: str, user: str) -> Any | None:
    """Keep a drafted text in the store, for the app to open for editing; the study stays "new" in the worklist
    until a person saves a draft or signs (`db.versions`).

    Saved only over nothing or over an earlier machine draft (`may_replace_with_machine_draft`);
    signing later adds a new version as usual. The version's author is `DRAFT_AUTHOR` (the model
    wrote the text); its "draft" audit event names `user`, the person who asked for it.

    Returns:
        The saved version, or None when nothing was saved (an empty text, or a person's version).

    Raises:
        StoreError: unknown study.
    """
    if not text or not may_replace_with_machine_draft(store.latest_report(study_uid)):
        return None
    return store.save_draft(study_uid, text, list(split_sections(text).sections), author=DRAFT_AUTHOR,
                            source="draft", user=user)


def export_study_report(store: ReportStoreLike, study_uid: str, fmt: str, user: str,
                        out: str | os.PathLike | None = None, folder: str | os.PathLike | None = None,
                        version: int | None = None, signed_only: bool = False) -> Export:
    """Write a report version of a stored study to a file and record an "export" event by `user`.

    The event's detail names the format, version and report id, and the version's status unless
    the request fixed it (`signed_only`).

    Args:
        store: the case store.
        study_uid: a stored study.
        fmt: "sr" (DICOM Basic Text SR), "txt" or "json" (`medcm.dicom.sr.EXPORT_FORMATS`).
        user: recorded in the audit trail.
        out: the file to write (replaced atomically); or
        folder: an existing folder to write `export_filename(report, fmt)` in.
        version: this version; None for the newest.
        signed_only: consider signed versions only.

    Raises:
        ValueError: an unknown format, both or neither of `out` and `folder`, an unknown study
            (`StoreError`), or no such (signed) version.
        FileNotFoundError: the destination folder does not exist.
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"export format: got {fmt!r}, expected one of {', '.join(EXPORT_FORMATS)}")
    if (out is None) == (folder is None):
        raise ValueError(f"export of study {study_uid!r}: got out={out!r} and folder={folder!r}; expected exactly one")
    study = store.get_study(study_uid)
    report = pick_report(study_uid, store.report_versions(study_uid), version, signed_only)
    target = Path(out) if out is not None else Path(folder) / export_filename(report, fmt)
    path = save_export(export_report(study, report, fmt), target)
    detail = {"format": fmt, "version": report.version, "report_id": report.id}
    if not signed_only:
        detail["status"] = report.status
    store.log_event("export", user, study_uid, detail)
    return Export(path, report)
