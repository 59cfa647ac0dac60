"""Export of a study's report as a DICOM Structured Report, plain text or JSON.

The SR is a **Basic Text SR** (SOP Class 1.2.840.10008.5.1.4.1.1.88.11) following TID 2000 "Basic
Diagnostic Imaging Report": a report here is free text split into named sections, with no
measurements or spatial coordinates, which is exactly what Basic Text SR carries. Comprehensive SR
would add nothing we use, and Basic Text SR is the class that PACS, viewers and report
repositories accept most widely.

Content tree (in the report's section order)::

    CONTAINER (18748-4, LN, "Diagnostic Imaging Report")  SEPARATE, template DCMR 2000
      HAS CONCEPT MOD  CODE (121049, DCM, "Language of Content Item and Descendants") = en
      CONTAINS CONTAINER <heading, CID 7001>  e.g. (121070, DCM, "Findings")
        CONTAINS TEXT <element, CID 7002>      e.g. (121071, DCM, "Finding") = section text
      CONTAINS IMAGE  one per source instance (at most 50; `medcm.dicom.sr_content`)

Unknown section names go under Findings/Finding with the name prefixed to the text. A draft is
UNVERIFIED, PARTIAL and PRELIMINARY; a signed report is VERIFIED (signer and time in the Verifying
Observer Sequence, the name as a PN and the account as a code), COMPLETE and FINAL. Times are
written in UTC (TimezoneOffsetFromUTC +0000). Study date, time and ID and the patient name are
taken or derived from the source study as `medcm.dicom.sr_content` describes, so that
`dciodvfy` reports neither errors nor missing DICOMDIR keys.

UIDs are derived from the report, so exporting the same version again gives the same file: the
series from the study UID (one SR series per study), the SOP instance from (study UID, report id,
version, status) and, for a draft (edited in place without a new version), also from its content,
so that one SOPInstanceUID never names two different documents.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

from medcm import __version__
from medcm.fileio import write_bytes_atomic
from medcm.dicom.sr_content import check_uid as _check_uid
from medcm.dicom.sr_content import code as _code
from medcm.dicom.sr_content import evidence, image_items, patient_study, verification
from medcm.dicom.sr_content import utc as _utc
from medcm.report.text import SECTION_ALIASES

__all__ = ["BASIC_TEXT_SR", "EXPORT_FORMATS", "export_filename", "export_report", "pick_report", "report_sr",
           "save_export"]

EXPORT_FORMATS = ("sr", "txt", "json")
"""Formats `export_report` writes: DICOM SR, plain text, JSON."""

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
_EXTENSIONS = {"sr": "dcm", "txt": "txt", "json": "json"}
_UID_NAMESPACE = uuid.UUID("5b0f7a52-4a9e-4c2b-9d0e-6d65646d0001")  # fixed forever: UIDs must not change
_SR_SERIES_NUMBER = 999
_DOCUMENT_TITLE = ("18748-4", "LN", "Diagnostic Imaging Report")
_FINDINGS = (("121070", "Findings"), ("121071", "Finding"))
# Canonical section name (medcm.report.text) -> (heading, CID 7001), (element, CID 7002); all DCM codes.
_SECTION_CODES: dict[str, tuple[tuple[str, str], tuple[str, str]]] = {
    "INDICATION": (("121060", "History"), ("121110", "Patient Presentation")),
    "TECHNIQUE": (("121064", "Current Procedure Descriptions"), ("121065", "Procedure Description")),
    "COMPARISON": (("121068", "Previous Findings"), ("121069", "Previous Finding")),
    "FINDINGS": _FINDINGS,
    "BODY": _FINDINGS,  # text before any header: the findings, without a prefix
    "IMPRESSION": (("121072", "Impressions"), ("121073", "Impression")),
    "RECOMMENDATION": (("121074", "Recommendations"), ("121075", "Recommendation")),
    "DIAGNOSIS": (("121076", "Conclusions"), ("121077", "Conclusion")),
}


class InstanceLike(Protocol):
    """A stored source instance (e.g. `db.store.InstanceView`)."""

    sop_instance_uid: str
    series_uid: str
    metadata: dict[str, Any]


class StudyLike(Protocol):
    """A stored study (e.g. `db.store.StudyView`)."""

    study_uid: str
    patient_id: str
    study_date: str
    description: str
    instances: Sequence[InstanceLike]


class ReportLike(Protocol):
    """One report version (e.g. `db.store.ReportView`)."""

    id: int
    study_uid: str
    version: int
    text: str
    sections: Sequence[tuple[str, str]]
    status: str
    author: str
    created_at: datetime
    signed_at: datetime | None
    signed_by: str | None


def export_report(study: StudyLike, report: ReportLike, fmt: str) -> bytes:
    """The report exported as a file's bytes.

    Args:
        study: the report's study, with its instances.
        report: the version to export.
        fmt: "sr" (DICOM Basic Text SR, Part 10, Explicit VR Little Endian), "txt" or "json" (UTF-8).

    Returns:
        The file content.

    Raises:
        ValueError: an unknown format, a report of another study, or (for "sr") a study or
            instance without valid DICOM UIDs.
    """
    _check_format(fmt)
    _check_pair(study, report)
    if fmt == "txt":
        return _text(study, report).encode("utf-8")
    if fmt == "json":
        return (json.dumps(_json(study, report), ensure_ascii=False, indent=2) + "\n").encode("utf-8")
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, report_sr(study, report), enforce_file_format=True)
    return buffer.getvalue()


def export_filename(report: ReportLike, fmt: str) -> str:
    """A file name for an export: ``report-<study_uid>-v<version>[-draft].<dcm|txt|json>``.

    Characters other than letters, digits, ".", "_" and "-" in the study UID become "_".

    Raises:
        ValueError: an unknown format.
    """
    _check_format(fmt)
    uid = re.sub(r"[^A-Za-z0-9._-]", "_", report.study_uid)
    draft = "" if report.status == "signed" else "-draft"
    return f"report-{uid}-v{report.version}{draft}.{_EXTENSIONS[fmt]}"


def pick_report(study_uid: str, versions: Sequence[ReportLike], version: int | None = None,
                signed_only: bool = False) -> ReportLike:
    """The version to export from a study's versions (oldest first, as `report_versions` gives).

    Args:
        study_uid: the study, for error messages.
        versions: all its report versions.
        version: this version number; None for the newest (signed) one.
        signed_only: consider signed versions only.

    Raises:
        ValueError: no such version, or no (signed) report at all.
    """
    candidates = [r for r in versions if r.status == "signed"] if signed_only else list(versions)
    kind = "signed report" if signed_only else "report"
    if version is None:
        if not candidates:
            raise ValueError(f"study {study_uid!r}: has no {kind}; expected one to export")
        return max(candidates, key=lambda r: r.version)
    for report in candidates:
        if report.version == version:
            return report
    have = sorted(r.version for r in candidates)
    raise ValueError(f"study {study_uid!r}: has no {kind} version {version}; expected one of {have}")


def save_export(data: bytes, path: str | os.PathLike) -> Path:
    """Write `data` to `path` atomically: a temporary file in the same folder, then a rename.

    Raises:
        FileNotFoundError: the destination folder does not exist.
    """
    return write_bytes_atomic(path, data)


def report_sr(study: StudyLike, report: ReportLike) -> Dataset:
    """The report as a Basic Text SR dataset (with file meta) in the source study, referencing its instances.

    Raises:
        ValueError: a report of another study, or a study, series or instance UID that is not a
            valid DICOM UID (e.g. the store's "unknown-study:..." for files that carried none).
    """
    _check_pair(study, report)
    _check_uid("study_uid", study.study_uid)
    signed = report.status == "signed"
    when = _utc(report.signed_at if signed and report.signed_at else report.created_at)
    ds = Dataset()
    ds.SOPClassUID = BASIC_TEXT_SR
    ds.SOPInstanceUID = _uid("instance", study.study_uid, str(report.id), str(report.version), report.status,
                             *(_content_key(report) if not signed else ()))
    ds.InstanceCreationDate, ds.InstanceCreationTime = f"{when:%Y%m%d}", f"{when:%H%M%S.%f}"
    ds.TimezoneOffsetFromUTC = "+0000"
    patient_study(ds, study, report)
    ds.Modality = "SR"
    ds.SeriesInstanceUID = _uid("series", study.study_uid)
    ds.SeriesNumber = _SR_SERIES_NUMBER
    ds.SeriesDescription = "medcm reports"
    ds.ReferencedPerformedProcedureStepSequence = DicomSequence()
    ds.Manufacturer = "medcm"
    ds.SoftwareVersions = __version__
    ds.InstanceNumber = report.version
    ds.ContentDate, ds.ContentTime = ds.InstanceCreationDate, ds.InstanceCreationTime
    verification(ds, report, signed)
    ds.PerformedProcedureCodeSequence = DicomSequence()
    if study.instances:
        ds.CurrentRequestedProcedureEvidenceSequence = DicomSequence([evidence(study)])
    _content(ds, study, report)
    if not _is_ascii(ds):
        ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8; plain ASCII text keeps the default repertoire
    ds.file_meta = _file_meta(ds)
    return ds


# ---------------------------------------------------------------------------- SR parts
def _content(ds: Dataset, study: StudyLike, report: ReportLike) -> None:
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = DicomSequence([_code(*_DOCUMENT_TITLE)])
    ds.ContinuityOfContent = "SEPARATE"
    template = Dataset()
    template.MappingResource = "DCMR"
    template.TemplateIdentifier = "2000"
    ds.ContentTemplateSequence = DicomSequence([template])
    language = _item("HAS CONCEPT MOD", "CODE", ("121049", "DCM", "Language of Content Item and Descendants"))
    language.ConceptCodeSequence = DicomSequence([_code("en", "RFC5646", "English")])
    items = [language]
    for name, text in _sections(report):
        (heading_value, heading), (element_value, element), body = _section_codes(name, text)
        container = _item("CONTAINS", "CONTAINER", (heading_value, "DCM", heading))
        container.ContinuityOfContent = "SEPARATE"
        leaf = _item("CONTAINS", "TEXT", (element_value, "DCM", element))
        leaf.TextValue = body
        container.ContentSequence = DicomSequence([leaf])
        items.append(container)
    items += image_items(study)
    ds.ContentSequence = DicomSequence(items)


def _sections(report: ReportLike) -> list[tuple[str, str]]:
    """Non-empty (name, text) sections; the whole text as findings when there are none."""
    sections = [(str(name), str(text).strip()) for name, text in report.sections if str(text).strip()]
    if not sections and report.text.strip():
        return [("BODY", report.text.strip())]
    return sections


def _section_codes(name: str, text: str) -> tuple[tuple[str, str], tuple[str, str], str]:
    key = " ".join(name.upper().split())
    key = SECTION_ALIASES.get(key, key)
    if key in _SECTION_CODES:
        heading, element = _SECTION_CODES[key]
        return heading, element, text
    return _FINDINGS[0], _FINDINGS[1], f"{name}: {text}"


def _item(relationship: str, value_type: str, concept: tuple[str, str, str]) -> Dataset:
    item = Dataset()
    item.RelationshipType = relationship
    item.ValueType = value_type
    item.ConceptNameCodeSequence = DicomSequence([_code(*concept)])
    return item


def _file_meta(ds: Dataset) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"MEDCM_{__version__}"[:16]
    return meta


# ------------------------------------------------------------------------- txt / json
def _text(study: StudyLike, report: ReportLike) -> str:
    if report.status == "signed":
        status = f"SIGNED by {report.signed_by} at {_iso(report.signed_at)}"
    else:
        status = "UNVERIFIED DRAFT (not signed; to be reviewed by a clinician)"
    header = [
        f"Study: {study.study_uid}",
        f"Patient (pseudonym): {study.patient_id or '(none)'}",
        f"Report version: {report.version}",
        f"Status: {status}",
        f"Author: {report.author}",
        f"Created: {_iso(report.created_at)}",
    ]
    return "\n".join(header) + "\n\n" + report.text.rstrip("\n") + "\n"


def _json(study: StudyLike, report: ReportLike) -> dict[str, Any]:
    signed = report.status == "signed"
    return {
        "study_uid": study.study_uid,
        "patient_id": study.patient_id,
        "version": report.version,
        "status": report.status,
        "verified": signed,
        "author": report.author,
        "signed_by": report.signed_by if signed else None,
        "signed_at": _iso(report.signed_at) if signed else None,
        "created_at": _iso(report.created_at),
        "sections": [{"name": name, "text": text} for name, text in report.sections],
        "text": report.text,
        "source_instances": [i.sop_instance_uid for i in study.instances],
    }


# ---------------------------------------------------------------------------- helpers
def _check_format(fmt: str) -> None:
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"export format {fmt!r}: unknown; expected one of {', '.join(EXPORT_FORMATS)}")


def _check_pair(study: StudyLike, report: ReportLike) -> None:
    if report.study_uid != study.study_uid:
        raise ValueError(f"report {report.id}: belongs to study {report.study_uid!r}, not to the study given "
                         f"({study.study_uid!r}); expected the report's own study")


def _is_ascii(ds: Dataset) -> bool:
    """Whether every text value (nested ones included) is plain ASCII."""
    for element in ds.iterall():
        values = element.value if element.VM > 1 else [element.value]
        for value in values:
            if isinstance(value, (str, pydicom.valuerep.PersonName)) and not str(value).isascii():
                return False
    return True


def _uid(*parts: str) -> str:
    return "2.25." + str(uuid.uuid5(_UID_NAMESPACE, "\x1f".join(parts)).int)


def _content_key(report: ReportLike) -> tuple[str]:
    payload = json.dumps([report.text, [list(s) for s in report.sections], report.author], ensure_ascii=False)
    return (hashlib.sha256(payload.encode("utf-8")).hexdigest(),)


def _iso(when: datetime | None) -> str | None:
    return None if when is None else _utc(when).isoformat()

