"""De-identify DICOM datasets (PS3.15 Annex E Basic Profile) and scrub free-text reports.

`deidentify` applies the Basic Application Level Confidentiality Profile, attribute by attribute
from the standard's Table E.1-1 (`medcm.dicom.basic_profile`, DICOM 2026c), with the Retain
Longitudinal Temporal Information Modified Dates option (dates shifted by a per-patient offset) and the
Retain Patient Characteristics option (sex, age, size and weight kept: models need them and the profile
deems them non-identifying); Clean Descriptors is an option (`DeidConfig.clean_descriptors`).
Pseudonyms, date shifts and UIDs are all keyed with HMAC-SHA256 over a site secret, so they are stable
per patient/UID across runs and cannot be reversed without the key.

On top of the table, recursively through every sequence: every private tag is removed, overlays
(groups 60xx) and curves (50xx) are removed whole, every non-standard UID is remapped and every DA/DT
value shifted. Attributes outside the table are kept (a strict profile would also drop non-IOD ones).
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from medcm.dicom.basic_profile import D, DESCRIPTORS, PROFILE_EDITION, RETAINED_CHARACTERISTICS, U, X, Z, action_for
from medcm.dicom.deid_text import identifiers_of, scrub_report

__all__ = ["BurnedInAnnotationError", "DeidConfig", "DeidResult", "deidentify", "identifiers_of",
           "pseudonymous_uid", "scrub_report"]

# UI attributes naming classes/syntaxes/schemes rather than instances: remapping would break decoding.
_KEEP_UIDS = frozenset({
    "SOPClassUID", "ReferencedSOPClassUID", "MediaStorageSOPClassUID", "TransferSyntaxUID",
    "ImplementationClassUID", "ReferencedSOPClassUIDInFile", "ReferencedTransferSyntaxUIDInFile",
    "CodingSchemeUID", "ContextGroupExtensionCreatorUID", "MappingResourceUID", "PrivateInformationCreatorUID",
})
_DICOM_UID_ROOT = "1.2.840.10008."  # standard (well-known) UIDs identify nothing
_METHOD = f"medcm {PROFILE_EDITION} Basic Profile; dates shifted; UIDs remapped"  # LO: <= 64
_CODES = (("113100", "Basic Application Confidentiality Profile"),
          ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
          ("113108", "Retain Patient Characteristics Option"))
_CLEAN_DESCRIPTORS_CODE = ("113105", "Clean Descriptors Option")
# Dates the Modified Dates option does not shift: the table's action (empty, removed) stands.
_NOT_SHIFTED = frozenset({"PatientBirthDate", "PatientBirthTime", "LastMenstrualDate"})
_OVERLAYS_AND_CURVES = ((0x5000, 0x50FF), (0x6000, 0x60FF))  # removed whole: the table names only some elements
_TEXT_VRS = frozenset({"AE", "CS", "SH", "LO", "LT", "ST", "UT", "UC", "PN"})
_NUMBER_VRS = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"})
_BYTES_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})


class BurnedInAnnotationError(ValueError):
    """The image declares burned-in annotation, which header de-identification cannot remove."""


@dataclass(frozen=True)
class DeidConfig:
    """Settings for `deidentify`.

    Attributes:
        key: Site secret keying every HMAC; at least 16 bytes. Keep it out of the case store.
        uid_root: Prefix of generated UIDs ("2.25." = UUID-derived, no registered root needed).
        max_date_shift_days: Dates move back by 1..this many days, per patient.
        refuse_burned_in: Raise on BurnedInAnnotation == "YES" instead of returning a flagged result.
        clean_descriptors: The Clean Descriptors option: keep `basic_profile.DESCRIPTORS` (study and
            series descriptions, protocol name, ...) with identifiers scrubbed, instead of removing them.
            Scrubbing free text by pattern can miss a name the header does not hold: off by default.
    """

    key: bytes
    uid_root: str = "2.25."
    max_date_shift_days: int = 365
    refuse_burned_in: bool = True
    clean_descriptors: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.key, bytes) or len(self.key) < 16:
            got = f"{len(self.key)} bytes" if isinstance(self.key, bytes) else type(self.key).__name__
            raise ValueError(f"DeidConfig.key must be at least 16 bytes, got {got}")
        if not re.fullmatch(r"(?:0|[1-9]\d*)(?:\.(?:0|[1-9]\d*))*\.", self.uid_root) or len(self.uid_root) > 40:
            raise ValueError(f"DeidConfig.uid_root must be a UID prefix ending in '.', <= 40 chars, got {self.uid_root!r}")
        if self.max_date_shift_days < 1:
            raise ValueError(f"DeidConfig.max_date_shift_days must be >= 1, got {self.max_date_shift_days}")


@dataclass
class DeidResult:
    """Outcome of `deidentify`.

    Attributes:
        dataset: The new de-identified dataset (the input is not modified).
        pseudonym: "ANON-" + 12 hex digits; the new PatientID and PatientName.
        date_shift_days: Days added to every date (negative).
        burned_in: BurnedInAnnotation was "YES": pixels may still show identifiers.
        removed: Keywords (or private tags) removed or emptied.
        replaced: Keywords whose values were replaced (pseudonym, shifted dates, remapped UIDs).
    """

    dataset: Dataset
    pseudonym: str
    date_shift_days: int
    burned_in: bool
    removed: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)


def _mac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()


def pseudonymous_uid(uid: str, config: DeidConfig) -> str:
    """The UID `deidentify` gives `uid` under `config` (the same every time; standard UIDs are kept).

    Lets a caller find a de-identified study from the UID it had before, e.g. to attach its report.
    """
    uid = str(uid)
    return uid if uid.startswith(_DICOM_UID_ROOT) else _new_uid(config, uid)


def _new_uid(config: DeidConfig, uid: str) -> str:
    # 128 bits, as 2.25 requires; other roots are cut to fit the 64-char UID limit.
    n = int.from_bytes(_mac(config.key, "uid:" + uid)[:16], "big") % 10 ** min(39, 64 - len(config.uid_root))
    return f"{config.uid_root}{n}"


def _shift_date(value: str, days: int) -> str:
    """Shift a DA (or the date part of a DT); values we cannot parse are emptied, never kept."""
    text = str(value).strip()
    if len(text) < 8 or not text[:8].isdigit():
        return ""
    try:
        day = dt.date(int(text[:4]), int(text[4:6]), int(text[6:8])) + dt.timedelta(days=days)
    except ValueError:
        return ""
    return day.strftime("%Y%m%d") + text[8:]


class _Walker:
    def __init__(self, config: DeidConfig, pseudonym: str, shift: int, known: list[str]) -> None:
        self.config, self.pseudonym, self.shift, self.known = config, pseudonym, shift, known
        self.removed: set[str] = set()
        self.replaced: set[str] = set()

    @staticmethod
    def _map(fn: Callable[[str], str], value: object) -> object:  # per value of a multi-valued element
        if isinstance(value, (MultiValue, list)):
            return [fn(v) for v in value]
        return fn(value)

    def clean(self, ds: Dataset) -> None:
        for tag in list(ds.keys()):
            elem = ds[tag]
            name = elem.keyword or str(elem.tag)
            if elem.tag.is_private or any(low <= elem.tag.group <= high for low, high in _OVERLAYS_AND_CURVES):
                del ds[tag]  # private data and overlays hide free text and burned-in-like pixels
                self.removed.add(name)
            elif elem.keyword in RETAINED_CHARACTERISTICS:
                continue
            elif elem.keyword in ("PatientName", "PatientID"):
                elem.value = self.pseudonym
                self.replaced.add(name)
            elif self.config.clean_descriptors and elem.keyword in DESCRIPTORS and elem.VR in _TEXT_VRS:
                elem.value = self._map(lambda v: scrub_report(str(v), self.known), elem.value)
                self.replaced.add(name)
            else:
                self._apply(ds, elem, action_for(elem.tag, elem.VR), name)

    def _apply(self, ds: Dataset, elem: DataElement, action: str | None, name: str) -> None:
        """One element by its table action (None: not in the table)."""
        if elem.VR in ("DA", "DT", "TM") and action is not None and elem.keyword not in _NOT_SHIFTED:
            action = None  # the Modified Dates option: shifted below (a time of day is kept), not removed
        if action == X:
            del ds[elem.tag]
            self.removed.add(name)
        elif action == Z or (action == U and elem.VR not in ("SQ", "UI")):
            elem.value = [] if elem.VR == "SQ" else b"" if elem.VR in _BYTES_VRS else ""
            self.removed.add(name)
        elif action == D and elem.VR != "UI":
            elem.value = _dummy(elem.VR)
            self.replaced.add(name)
        elif elem.VR == "SQ":
            for item in elem.value:
                self.clean(item)
        elif elem.VR == "UI" and elem.keyword not in _KEEP_UIDS and elem.value:
            elem.value = self._map(self.uid, elem.value)
            self.replaced.add(name)
        elif elem.VR in ("DA", "DT") and elem.value:
            elem.value = self._map(lambda v: _shift_date(v, self.shift), elem.value)
            self.replaced.add(name)

    def uid(self, value: str) -> str:
        return pseudonymous_uid(value, self.config)


def _dummy(vr: str) -> object:
    """The profile's D: a value of the right VR that says nothing (a sequence becomes empty)."""
    if vr == "SQ":
        return []
    if vr in _TEXT_VRS:
        return "ANONYMOUS"
    if vr in ("IS", "DS"):
        return "0"
    if vr in _NUMBER_VRS:
        return 0
    return b"" if vr in _BYTES_VRS else ""


def deidentify(ds: Dataset, config: DeidConfig) -> DeidResult:
    """Return a de-identified copy of ``ds`` (PS3.15 Basic Profile, modified dates, remapped UIDs).

    Args:
        ds: The dataset to de-identify; it is not modified.
        config: Key and options.

    Returns:
        The new dataset, its pseudonym and date shift, the burned-in flag and the changed keywords.

    Raises:
        BurnedInAnnotationError: If BurnedInAnnotation is "YES" and ``config.refuse_burned_in``.
        TypeError: If ``ds`` is not a pydicom Dataset.
    """
    if not isinstance(ds, Dataset):
        raise TypeError(f"deidentify expects a pydicom Dataset, got {type(ds).__name__}")
    burned_in = str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES"
    if burned_in and config.refuse_burned_in:
        raise BurnedInAnnotationError(
            f"SOPInstanceUID {ds.get('SOPInstanceUID', '<missing>')}: BurnedInAnnotation is YES; "
            "pixels may show identifiers (set refuse_burned_in=False to flag for review instead)")
    # Without a PatientID we cannot link studies; the study UID keeps each such study its own patient.
    patient = str(ds.get("PatientID", "") or "").strip() or "study:" + str(ds.get("StudyInstanceUID", ""))
    digest = hmac.new(config.key, patient.encode("utf-8"), hashlib.sha256).hexdigest()
    pseudonym = "ANON-" + digest[:12]
    shift = -(1 + int(digest[12:28], 16) % config.max_date_shift_days)  # disjoint bits from the pseudonym

    out = copy.deepcopy(ds)
    walker = _Walker(config, pseudonym, shift, identifiers_of(ds) if config.clean_descriptors else [])
    walker.clean(out)
    for kw in ("PatientName", "PatientID"):  # always present, even if the input lacked them
        setattr(out, kw, pseudonym)
    meta = getattr(out, "file_meta", None)
    if meta is not None:  # MediaStorageSOPInstanceUID is remapped like the SOPInstanceUID it repeats
        walker.clean(meta)
    out.PatientIdentityRemoved = "YES"
    out.LongitudinalTemporalInformationModified = "MODIFIED"
    out.DeidentificationMethod = _METHOD
    codes = []
    for value, meaning in _CODES + ((_CLEAN_DESCRIPTORS_CODE,) if config.clean_descriptors else ()):
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
        codes.append(item)
    out.DeidentificationMethodCodeSequence = Sequence(codes)
    return DeidResult(out, pseudonym, shift, burned_in, sorted(walker.removed), sorted(walker.replaced))
