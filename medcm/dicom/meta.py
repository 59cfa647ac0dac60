"""The metadata of one DICOM instance (`InstanceMeta`), taken from its dataset's attributes alone."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.multival import MultiValue

__all__ = ["InstanceMeta", "age_band", "attribute_floats", "instance_meta", "patient_sex", "pixel_spacing"]


@dataclass(frozen=True)
class InstanceMeta:
    """Metadata of one DICOM instance; empty strings stand for absent text attributes.

    ``study_uid`` and ``series_uid`` are never empty: when the file lacks them they
    are ``"unknown-study:<folder>"`` / ``"unknown-series:<folder>"``, so UID-less
    files group together per containing folder (or zip folder) and nowhere else.
    """

    path: str
    sop_instance_uid: str
    sop_class_uid: str
    study_uid: str
    series_uid: str
    patient_id: str
    modality: str
    body_part: str
    view: str
    plane: str
    study_date: str
    study_description: str
    series_description: str
    rows: int
    columns: int
    frames: int
    pixel_spacing: tuple[float, float] | None
    instance_number: int | None
    photometric: str
    bits_stored: int
    transfer_syntax: str
    content_sha256: str = ""  # sha256 of the file's bytes: tells a re-sent copy from a changed file
    patient_sex: str = ""  # "F", "M" or "O" (PatientSex, kept by de-identification); "" when absent or other
    patient_age_band: str = ""  # the patient's age at the study in decades ("60–69 y"; `age_band`), "" unknown


def instance_meta(ds: pydicom.Dataset, path: str | os.PathLike, frames: int, content_sha256: str,
                  folder: str | None = None) -> InstanceMeta:
    """The metadata of `ds` stored at `path`, without decoding its pixels.

    `medcm.dicom.read.read_instance` calls it after decoding; a caller that already holds the
    pixels (e.g. of a de-identified copy of an image it has read) calls it directly.

    Args:
        ds: The dataset (with file meta).
        path: The file, or ``"archive.zip:member"``, recorded as ``meta.path``.
        frames: Frames decoded from it.
        content_sha256: sha256 of the file's bytes.
        folder: Where UID-less files are grouped (see `InstanceMeta`); default the folder of `path`.

    Raises:
        AttributeError, TypeError, ValueError: Rows, Columns or BitsAllocated is missing or malformed.
    """
    label = os.fspath(path)
    folder = os.path.dirname(label) if folder is None else folder
    date, number = _text(ds, "StudyDate"), attribute_floats(ds.get("InstanceNumber"))
    return InstanceMeta(
        path=label,
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
        sop_class_uid=_text(ds, "SOPClassUID"),
        study_uid=_text(ds, "StudyInstanceUID") or f"unknown-study:{folder}",
        series_uid=_text(ds, "SeriesInstanceUID") or f"unknown-series:{folder}",
        patient_id=_text(ds, "PatientID"),
        modality=_text(ds, "Modality"),
        body_part=_text(ds, "BodyPartExamined"),
        view=_text(ds, "ViewPosition"),
        plane=_plane(ds),
        study_date=date if len(date) == 8 and date.isdigit() else "",
        study_description=_text(ds, "StudyDescription"),
        series_description=_text(ds, "SeriesDescription"),
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        frames=frames,
        pixel_spacing=pixel_spacing(ds),
        instance_number=int(number[0]) if len(number) == 1 else None,
        photometric=_text(ds, "PhotometricInterpretation"),
        bits_stored=int(ds.get("BitsStored") or ds.BitsAllocated),
        transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
        content_sha256=content_sha256,
        patient_sex=patient_sex(_text(ds, "PatientSex")),
        patient_age_band=age_band(_text(ds, "PatientAge"), _text(ds, "PatientBirthDate"), date),
    )


def patient_sex(value: str) -> str:
    """PatientSex as stored: "F", "M" or "O"; "" for an absent or non-standard value."""
    value = (value or "").strip().upper()
    return value if value in ("F", "M", "O") else ""


def age_band(age: str, birth_date: str = "", study_date: str = "") -> str:
    """The patient's age at the study as a band of ten years: "60–69 y"; "90+ y" from 90 on; "0–9 y" for
    days, weeks and months; "" when unknown.

    Only the band is recorded, never the exact age: a decade is what a reader needs for context, and it
    identifies nobody, where an exact age (with the shifted study date) narrows a patient down and ages
    of 90 and over are identifying on their own (HIPAA Safe Harbor groups them as "90 or older").

    Args:
        age: PatientAge, an AS value ("065Y", "003M", "010D"); tried first.
        birth_date: PatientBirthDate (DA), used with `study_date` when there is no usable `age`
            (de-identification removes it, so only files stored without de-identification have it).
        study_date: StudyDate (DA).
    """
    years = _age_years(age)
    if years is None:
        years = _years_between(birth_date, study_date)
    if years is None or years < 0 or years > 150:
        return ""
    if years >= 90:
        return "90+ y"
    low = years // 10 * 10
    return f"{low}–{low + 9} y"


def _age_years(age: str) -> int | None:
    """Whole years of an AS value ("065Y" → 65, "018M" → 1, "010D" → 0); None when malformed."""
    text = (age or "").strip().upper()
    if len(text) < 2 or not text[:-1].isdigit() or text[-1] not in "DWMY":
        return None
    per_year = {"D": 365, "W": 52, "M": 12, "Y": 1}[text[-1]]
    return int(text[:-1]) // per_year


def _years_between(birth_date: str, study_date: str) -> int | None:
    """Completed years from a DA birth date to a DA study date; None unless both are YYYYMMDD."""
    if not all(len(d) == 8 and d.isdigit() for d in (birth_date, study_date)):
        return None
    born, seen = (int(birth_date[:4]), birth_date[4:]), (int(study_date[:4]), study_date[4:])
    return seen[0] - born[0] - (seen[1] < born[1])


def attribute_floats(value: object) -> list[float]:
    """Numbers of a (possibly multi-valued) attribute; [] when absent, malformed or not finite."""
    if value is None or value == "":
        return []
    items = value if isinstance(value, (MultiValue, list, tuple)) else [value]
    try:
        out = [float(v) for v in items]
    except (TypeError, ValueError):
        return []
    return out if all(math.isfinite(v) for v in out) else []


def _text(ds: pydicom.Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, (MultiValue, list, tuple)):
        return "\\".join(str(v).strip() for v in value)
    return str(value).strip()


def pixel_spacing(ds: pydicom.Dataset) -> tuple[float, float] | None:
    """(row, column) spacing in mm from PixelSpacing, else ImagerPixelSpacing; None when absent or not positive
    (zero or negative spacings occur in the wild, e.g. "0\\0", and mean "unknown")."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        values = attribute_floats(ds.get(keyword))
        if len(values) == 2 and min(values) > 0:
            return (values[0], values[1])
    return None


def _plane(ds: pydicom.Dataset) -> str:
    """Classify ImageOrientationPatient by the dominant axis of the slice normal."""
    values = attribute_floats(ds.get("ImageOrientationPatient"))
    if len(values) != 6:
        return ""
    normal = np.cross(values[:3], values[3:])
    norm = float(np.linalg.norm(normal))
    if norm < 1e-6:
        return ""
    normal = np.abs(normal) / norm
    axis = int(np.argmax(normal))
    if normal[axis] < 0.8:  # more than ~37 degrees off every patient axis
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]
