"""Scrub identifiers from free text: report texts on every way in, and descriptions under Clean Descriptors.

`identifiers_of` collects a dataset's names and ids before de-identification; `scrub_report` replaces
them, and dates, phone numbers, e-mail addresses, record numbers and titled names ("Dr Smith"), with
placeholders. The originals are gone once a study is stored, so ingest keeps each study's identifiers
only as keyed hashes (`identifier_keys`, HMAC-SHA256 under the site's de-identification key, 64 bits
each): a report written later in the app is checked against them (`scrub_report(..., keyed=...)`)
without the store ever holding a name. Without the key the hashes cannot be tested against guesses.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Collection, Iterable

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

__all__ = ["identifier_keys", "identifiers_of", "scrub_report"]

_IDENTIFYING = ("PatientID", "OtherPatientIDs", "IssuerOfPatientID", "AccessionNumber", "StudyID", "AdmissionID",
                "RequestedProcedureID", "MedicalRecordLocator", "InstitutionName", "InstitutionAddress",
                "InstitutionalDepartmentName", "PatientAddress", "PatientTelephoneNumbers", "StationName",
                "DeviceSerialNumber")
_HONORIFICS = frozenset({"DR", "MR", "MRS", "MS", "MD", "PHD", "JR", "SR", "PROF", "MISS"})


def identifiers_of(ds: Dataset) -> list[str]:
    """Collect the identifying strings of a dataset, to pass to `scrub_report` as ``known``.

    Args:
        ds: A dataset (before de-identification).

    Returns:
        Person-name parts (of every PN attribute, nested ones included) and the values of
        identifying attributes, deduplicated, each at least 2 characters.
    """
    found: list[str] = []

    def visit(item: Dataset) -> None:
        for elem in item:
            if elem.VR == "SQ":
                for sub in elem.value:
                    visit(sub)
            elif elem.VR == "PN" and elem.value:
                names = elem.value if isinstance(elem.value, MultiValue) else [elem.value]
                for name in names:  # parts alone: reports say "Mr Smith", not "SMITH^JOHN"
                    found.extend(p for p in re.split(r"[\^=,\s]+", str(name)) if p.strip(".").upper() not in _HONORIFICS)
            elif elem.keyword in _IDENTIFYING and elem.value:
                values = elem.value if isinstance(elem.value, MultiValue) else [elem.value]
                found.extend(str(v).strip() for v in values)

    visit(ds)
    return list(dict.fromkeys(s for s in found if len(s) >= 2))


_MONTH = (r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
          r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)\.?")
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_DATES = re.compile(
    r"\b(?:\d{1,2}[/.-]\d{1,2}[/.-](?:\d{4}|\d{2})"              # 12/03/2021, 12-3-21
    r"|\d{4}[/.-]\d{1,2}[/.-]\d{1,2}"                              # 2021-03-12
    r"|(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])"     # 20210312
    rf"|{_MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}"          # March 12, 2021
    rf"|\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTH},?\s+\d{{4}})\b",      # 12 Mar 2021
    re.IGNORECASE)
_PHONE = re.compile(r"(?<![\w.])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{3}\)\s?|\d{3}[\s.-])\d{3}[\s.-]\d{4}\b")
# A label then a value with a digit: "MRN: A12345", "accession # 77-12", "ID 4711".
_LABELLED_ID = re.compile(
    r"\b((?:MRN|ID|acc(?:ession)?|record|patient\s+number)\.?(?:\s*(?:no\.?|number|#))?\s*[:#]?\s*)"
    r"([A-Z0-9][A-Z0-9-]*\d[A-Z0-9-]*)\b", re.IGNORECASE)
_DIGIT_RUN = re.compile(r"\b\d{6,}\b")
# A title and one or two capitalised words: "Dr Smith", "Mrs. Jane Doe". Titles in title case only, so
# the modality "MR" and "MS" (multiple sclerosis) are not titles.
_TITLED_NAME = re.compile(r"\b((?:Dr|Mr|Mrs|Ms|Miss|Prof|Professor|Doctor)\.?\s+)([A-Z][a-z'-]+(?:\s+[A-Z][a-z'-]+)?)\b")
_WORD = re.compile(r"[^\W_][\w'-]*")
_KEY_WORDS = 4  # the longest identifier checked by keyed hash, in words ("General Hospital of X")


def _normalised(text: str) -> str:
    return " ".join(_WORD.findall(text.upper()))


def _key(value: str, key: bytes) -> str:
    return hmac.new(key, b"identifier:" + value.encode("utf-8"), hashlib.sha256).hexdigest()[:16]


def identifier_keys(identifiers: Iterable[str], key: bytes) -> list[str]:
    """Keyed hashes of identifiers (from `identifiers_of`), to find them later in text without storing them.

    Args:
        identifiers: names and ids; each is normalised (upper case, words only) and those of more than
            `_KEY_WORDS` words or under 2 characters are skipped.
        key: the site's de-identification key.

    Returns:
        16 hex digits per identifier, sorted, without repeats.
    """
    values = {_normalised(value) for value in identifiers}
    return sorted({_key(value, key) for value in values if len(value) >= 2 and value.count(" ") < _KEY_WORDS})


def _keyed_spans(text: str, keys: Collection[str], key: bytes) -> list[tuple[int, int]]:
    """Where in `text` a run of up to `_KEY_WORDS` words hashes to one of `keys`, longest runs first."""
    words = list(_WORD.finditer(text))
    spans: list[tuple[int, int]] = []
    taken = [False] * len(words)
    for size in range(_KEY_WORDS, 0, -1):
        for start in range(len(words) - size + 1):
            if any(taken[start:start + size]):
                continue
            run = words[start:start + size]
            if _key(" ".join(m.group().upper() for m in run), key) in keys:
                spans.append((run[0].start(), run[-1].end()))
                taken[start:start + size] = [True] * size
    return sorted(spans)


def scrub_report(text: str, known: Iterable[str] = (), keyed: tuple[Collection[str], bytes] | None = None) -> str:
    """Replace identifiers in free-text report with placeholders.

    Dates become [DATE], e-mail addresses [EMAIL], phone numbers [PHONE], record-like numbers
    (6+ digits, or a value after MRN/ID/accession) [ID], a name after a title ("Dr", "Mrs") [NAME],
    and each ``known`` string (whole
    words, case-insensitive) [NAME] ([ID] if it contains a digit). Measurements ("3.2 cm")
    and anatomical labels ("T2", "C5-C6", "L4") are left alone.

    Args:
        text: The report.
        known: Identifiers of this patient/study, e.g. from `identifiers_of`; strings shorter
            than 2 characters are ignored (an initial would erase every "a").
        keyed: (`identifier_keys` of the study, the key they were made with): words or runs of words
            whose keyed hash is among them become [NAME] ([ID] with a digit), as `known` strings do.

    Returns:
        The scrubbed text.
    """
    if keyed is not None and keyed[0]:  # first, on the text as written: the hashes are of whole words
        for start, end in reversed(_keyed_spans(text, keyed[0], keyed[1])):
            text = text[:start] + ("[ID]" if any(c.isdigit() for c in text[start:end]) else "[NAME]") + text[end:]
    text = _EMAIL.sub("[EMAIL]", text)  # an address contains names and digits
    text = _DATES.sub("[DATE]", text)
    text = _PHONE.sub("[PHONE]", text)
    words = sorted({k.strip() for k in known if len(k.strip()) >= 2}, key=len, reverse=True)
    if words:  # one pass, longest first, never inside a placeholder: a known "NAME" must not hit "[NAME]"
        pattern = re.compile(rf"(?<![\w\[])(?:{'|'.join(map(re.escape, words))})(?![\w\]])", re.IGNORECASE)
        text = pattern.sub(lambda m: "[ID]" if any(c.isdigit() for c in m.group()) else "[NAME]", text)
    text = _LABELLED_ID.sub(lambda m: m.group(1) + "[ID]", text)
    text = _TITLED_NAME.sub(lambda m: m.group(1) + "[NAME]", text)
    return _DIGIT_RUN.sub("[ID]", text)
