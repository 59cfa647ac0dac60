"""Header and reference parts of the Basic Text SR that `medcm.dicom.sr` writes.

What the source study does not carry is derived, so that the SR passes `dciodvfy` without the
warnings a DICOMDIR builder would raise:

* **StudyDate**: the study's date, else the earliest valid StudyDate in its instances' metadata
  (both de-identified, date-shifted), else the date the study entered the store (``created_at``),
  else the report's creation date. **StudyTime**: an instance's ``study_time`` when the metadata
  has one (it does not today), else ``"000000"``: the store keeps no study time, and midnight
  marks it as unknown rather than inventing a time of day.
* **StudyID**: an instance's ``study_id`` when the metadata has one, else 16 decimal digits of the
  SHA-256 of the StudyInstanceUID (SH allows 16 characters): stable, and the same for every report
  of a study.
* **PatientName**: the pseudonym as the family name (``"PSN-0042^"``): a PN without a component
  delimiter is the retired ACR-NEMA form.
* **VerifyingObserverName**: the signer as a PN (see `observer_name`), identified by a code in
  the private scheme ``99MEDCM`` (declared in the Coding Scheme Identification Sequence) whose
  value and meaning are the account name. dciodvfy knows a fixed list of private schemes and
  warns "Unrecognized defined term <99MEDCM>" for it; that warning is expected.
* **Image references**: one ``CONTAINS IMAGE`` item per source instance (the first
  `MAX_IMAGE_ITEMS` in store order; the evidence sequence always lists them all). They carry no
  concept name (optional for IMAGE items): none of CID 7003's purposes of reference ("Best
  illustration of finding", "Source of Measurement", ...) means "the images read".
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

__all__ = ["MAX_IMAGE_ITEMS", "OBSERVER_SCHEME", "check_uid", "code", "evidence", "image_items", "observer_name",
           "patient_study", "utc", "verification"]

MAX_IMAGE_ITEMS = 50
"""At most this many IMAGE content items (a CT series would otherwise add hundreds)."""
OBSERVER_SCHEME = "99MEDCM"
"""Private coding scheme of the verifying observer's identification code (the account name)."""

_UID_PATTERN = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_DATE = re.compile(r"[0-9]{8}")
_TIME = re.compile(r"[0-9]{2}([0-9]{2}([0-9]{2}(\.[0-9]{1,6})?)?)?")
_TITLES = {"dr": "Dr", "prof": "Prof", "mr": "Mr", "mrs": "Mrs", "ms": "Ms"}


def observer_name(signer: str) -> str:
    """The signer's account name as a DICOM person name (``family^given^middle^prefix``).

    A name holding "^" already is a PN (e.g. "Rivera^Ana") and is kept. Otherwise the part before
    any "@" is split on ".", "_" and "-"; leading titles (dr, prof, mr, mrs, ms) become the prefix,
    the last remaining word the family name, the first the given name, those between the middle
    names, each capitalised: "ana.rivera" -> "Rivera^Ana", "dr.a" -> "A^^^Dr",
    "j_p_smith" -> "Smith^J^P", "arivera" -> "Arivera^" (a trailing "^": a PN without one is the
    retired form). The accounts store no display name; this is the best a login name gives.
    """
    if "^" in signer:
        return signer
    words = [w for w in re.split(r"[._-]+", signer.split("@")[0]) if w]
    prefix = []
    while len(words) > 1 and words[0].lower() in _TITLES:
        prefix.append(_TITLES[words.pop(0).lower()])
    words = [w[:1].upper() + w[1:] for w in words] or [signer]
    parts = [words[-1], words[0] if len(words) > 1 else "", " ".join(words[1:-1]), " ".join(prefix)]
    while parts[-1] == "":
        parts.pop()
    return "^".join(parts) if len(parts) > 1 else parts[0] + "^"


def patient_study(ds: Dataset, study: Any, report: Any) -> None:
    """Patient and General Study module attributes (see the module's docstring for derived ones)."""
    ds.PatientName = f"{study.patient_id}^" if study.patient_id else ""
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = study.study_uid
    ds.StudyDate = _study_date(study, report)
    ds.StudyTime = _first(study.instances, "study_time", _TIME) or "000000"
    ds.ReferringPhysicianName = ""
    ds.StudyID = (_first(study.instances, "study_id", re.compile(r"[^\\\x00-\x1f]{1,16}"))
                  or str(int(hashlib.sha256(study.study_uid.encode()).hexdigest(), 16) % 10**16).zfill(16))
    ds.AccessionNumber = ""
    if study.description:
        ds.StudyDescription = study.description[:64]


def verification(ds: Dataset, report: Any, signed: bool) -> None:
    """Completion, verification and preliminary flags; for a signed report the verifying observer."""
    if not signed:
        ds.CompletionFlag, ds.VerificationFlag, ds.PreliminaryFlag = "PARTIAL", "UNVERIFIED", "PRELIMINARY"
        return
    if not report.signed_by or report.signed_at is None:
        raise ValueError(f"report {report.id} (study {report.study_uid!r}, version {report.version}): status "
                         f"'signed' but signed_by={report.signed_by!r}, signed_at={report.signed_at!r}; "
                         "expected both")
    ds.CompletionFlag, ds.VerificationFlag, ds.PreliminaryFlag = "COMPLETE", "VERIFIED", "FINAL"
    observer = Dataset()
    observer.VerifyingObserverName = observer_name(report.signed_by)
    identifier = Dataset()
    if len(report.signed_by) <= 16:
        identifier.CodeValue = report.signed_by
    else:
        identifier.LongCodeValue = report.signed_by  # CodeValue (SH) holds at most 16 characters
    identifier.CodingSchemeDesignator = OBSERVER_SCHEME
    identifier.CodeMeaning = report.signed_by[:64]
    observer.VerifyingObserverIdentificationCodeSequence = DicomSequence([identifier])
    observer.VerifyingOrganization = "medcm"
    observer.VerificationDateTime = f"{utc(report.signed_at):%Y%m%d%H%M%S.%f}+0000"
    ds.VerifyingObserverSequence = DicomSequence([observer])
    scheme = Dataset()  # a private scheme is declared in the SOP Common module (PS3.3 C.12.1.1.9)
    scheme.CodingSchemeDesignator = OBSERVER_SCHEME
    scheme.CodingSchemeName = "medcm user accounts"
    scheme.CodingSchemeResponsibleOrganization = "medcm"
    ds.CodingSchemeIdentificationSequence = DicomSequence([scheme])


def evidence(study: Any) -> Dataset:
    """The study's item of the Current Requested Procedure Evidence Sequence: all its instances by series."""
    series: dict[str, list[Dataset]] = {}
    for instance in study.instances:
        check_uid(f"instance {instance.sop_instance_uid!r} series_uid", instance.series_uid)
        series.setdefault(instance.series_uid, []).append(_sop_reference(instance))
    study_item = Dataset()
    study_item.StudyInstanceUID = study.study_uid
    study_item.ReferencedSeriesSequence = DicomSequence()
    for series_uid, items in series.items():
        series_item = Dataset()
        series_item.SeriesInstanceUID = series_uid
        series_item.ReferencedSOPSequence = DicomSequence(items)
        study_item.ReferencedSeriesSequence.append(series_item)
    return study_item


def image_items(study: Any) -> list[Dataset]:
    """``CONTAINS IMAGE`` content items for the first `MAX_IMAGE_ITEMS` source instances."""
    items = []
    for instance in list(study.instances)[:MAX_IMAGE_ITEMS]:
        item = Dataset()
        item.RelationshipType = "CONTAINS"
        item.ValueType = "IMAGE"
        item.ReferencedSOPSequence = DicomSequence([_sop_reference(instance)])
        items.append(item)
    return items


def check_uid(field: str, value: str) -> None:
    """Raise ValueError unless `value` is a valid DICOM UID."""
    if len(value) > 64 or not _UID_PATTERN.fullmatch(value):
        raise ValueError(f"{field} {value!r}: not a valid DICOM UID (digits and dots, at most 64 characters); "
                         "a DICOM SR needs the source's UIDs (txt and json exports do not)")


def code(value: str, scheme: str, meaning: str) -> Dataset:
    """A code sequence item."""
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def utc(when: datetime) -> datetime:
    """An aware UTC datetime; a naive one is taken to be UTC already (as the store keeps them)."""
    return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)


def _sop_reference(instance: Any) -> Dataset:
    sop_class = str((instance.metadata or {}).get("sop_class_uid") or "")
    check_uid(f"instance {instance.sop_instance_uid!r} metadata sop_class_uid", sop_class)
    check_uid("sop_instance_uid", instance.sop_instance_uid)
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = instance.sop_instance_uid
    return item


def _study_date(study: Any, report: Any) -> str:
    if _DATE.fullmatch(study.study_date or ""):
        return study.study_date
    dates = sorted(str((i.metadata or {}).get("study_date") or "") for i in study.instances)
    dated = [d for d in dates if _DATE.fullmatch(d)]
    if dated:
        return dated[0]
    created = getattr(study, "created_at", None)
    return f"{utc(created if isinstance(created, datetime) else report.created_at):%Y%m%d}"


def _first(instances: Sequence[Any], key: str, pattern: re.Pattern) -> str:
    """The first instance metadata value of `key` that matches `pattern`; "" when none does."""
    for instance in instances:
        value = str((instance.metadata or {}).get(key) or "").strip()
        if pattern.fullmatch(value):
            return value
    return ""
