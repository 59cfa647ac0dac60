"""Put paired archives (JSONL/CSV manifests) and MedPix 2.0 into the case store: the library half of `medcm import`.

DICOM images are stored as they are, under their own UIDs; the case's report goes to each of their
studies. PNG/JPEG images are loaded as training loads them (a data set's burned-in text masked, see
`medcm.data.manifest.load_image`) and written as Secondary Capture DICOM to `FILES/<case>/<n>.dcm`, with UIDs
derived from the case id and the image's position in the case. Importing the same data again writes
the same bytes under the same UIDs, so the store skips them and adds nothing.

Cases go to the store `BATCH_CASES` at a time, one transaction per batch: an interrupted import
loses at most the batch in flight, and no case is ever half-stored. The command line half (options,
summary) is `medcm.cli.import_command`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import unicodedata
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the real imports are inside functions: `medcm --help` must not load torch
    from medcm.data.manifest import ManifestRecord
    from medcm.engine.facade import Engine

log = logging.getLogger(__name__)

BATCH_CASES = 32
# Names every derived UID: changing it would give every imported image new UIDs (duplicates on re-import).
_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "medcm:import")
# DICOM PS3.3 C.7.3.1.1.1 defined terms that a manifest may plausibly name; anything else is "OT".
_MODALITIES = frozenset({"CR", "CT", "DX", "ES", "GM", "IO", "MG", "MR", "NM", "OP", "OT", "PT", "PX", "RF",
                         "SM", "US", "XA", "XC"})
_MODALITY_ALIASES = {"MRI": "MR", "PET": "PT"}
_DANGLING_WORDS = frozenset({"AND", "OR", "OF", "THE", "WITH"})


@dataclass(frozen=True)
class ImportResult:
    """What an import stored.

    Attributes:
        cases: cases with at least one image in the store (added now or already there).
        studies: distinct studies of those cases.
        added_instances: images stored now.
        skipped_instances: images the store already held, byte for byte.
        added_reports: report versions stored now.
        added_embeddings: vectors stored now (0 without a checkpoint).
        errors: one line per problem, each naming its file (or its cases).
        case_studies: case id → StudyInstanceUIDs of its stored images (several only when a case
            lists DICOM files of several studies).
    """

    cases: int
    studies: int
    added_instances: int
    skipped_instances: int
    added_reports: int
    added_embeddings: int
    errors: tuple[str, ...] = ()
    case_studies: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass
class _Case:
    """One record made ready for `Engine.ingest`: its DICOM files with their studies, and its errors."""

    case_id: str
    report: str
    files: dict[str, str] = field(default_factory=dict)  # DICOM file to ingest → its StudyInstanceUID
    errors: list[str] = field(default_factory=list)


@dataclass
class _Totals:
    """What the batches so far stored, and which case owns each study's report."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("added_instances", "skipped_instances", "added_reports", "added_embeddings"), 0))
    errors: list[str] = field(default_factory=list)
    case_studies: dict[str, tuple[str, ...]] = field(default_factory=dict)
    study_owner: dict[str, str] = field(default_factory=dict)  # StudyInstanceUID → the case whose report it gets


def import_records(engine: Engine, records: Sequence[ManifestRecord], files_dir: str | Path, user: str = "import",
                   progress: bool = False) -> ImportResult:
    """Store `records` (images, reports and, when the engine has a checkpoint, embeddings).

    Args:
        engine: the engine over the target store.
        records: cases, e.g. from `medcm.data.manifest.read_dataset`.
        files_dir: where converted PNG/JPEG images are written (`<case>/<n>.dcm`); the store keeps
            their paths, so this folder must stay where it is. With the engine de-identifying, the
            converted images are only staged here and the store keeps the engine's copies.
        user: recorded in the audit trail.
        progress: show a progress bar over the cases.

    Returns:
        Counts, one error line per unreadable image or refused batch, and each case's studies.

    Raises:
        OSError: `files_dir` cannot be written.
    """
    files_dir = Path(files_dir).expanduser().resolve()
    totals = _Totals()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(records), desc="importing", unit="case")
    for start in range(0, len(records), BATCH_CASES):
        # With de-identification on, the converted images still carry the manifest's patient ids:
        # they live in a hidden staging folder only until the engine has written its copies.
        staging = files_dir if engine.deid is None else _staging_folder(files_dir)
        try:
            cases = [_prepare_case(record, staging) for record in records[start : start + BATCH_CASES]]
            _ingest_batch(engine, cases, user, totals)
        finally:
            if staging != files_dir:
                shutil.rmtree(staging, ignore_errors=True)
        if bar is not None:
            bar.update(len(cases))
    if bar is not None:
        bar.close()
    studies = {uid for uids in totals.case_studies.values() for uid in uids}
    return ImportResult(cases=len(totals.case_studies), studies=len(studies), **totals.counts,
                        errors=tuple(totals.errors), case_studies=totals.case_studies)


def _staging_folder(files_dir: Path) -> Path:
    files_dir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=files_dir, prefix=".import-"))


def _prepare_case(record: ManifestRecord, files_dir: Path) -> _Case:
    """Convert the case's raster images and find the studies of its DICOM images; errors are collected."""
    from medcm.data.manifest import RASTER_SUFFIXES, ImageReadError
    from medcm.dicom.read import DicomReadError, read_instance

    case = _Case(record.case_id, record.report)
    for index, source in enumerate(record.images):
        try:
            if Path(source).suffix.lower() in RASTER_SUFFIXES:
                case.files[str(_convert_image(record, index, files_dir))] = case_uid(record.case_id)
            else:
                # Read once here for its study (the report's key); the engine reads it again to store it.
                case.files[source] = read_instance(source).meta.study_uid
        except (ImageReadError, DicomReadError, _ConflictError) as err:
            case.errors.append(str(err))
    return case


class _ConflictError(Exception):
    """A converted file exists with other content: the source changed since it was imported."""


def _convert_image(record: ManifestRecord, index: int, files_dir: Path) -> Path:
    """Write image `index` of `record` as Secondary Capture DICOM with derived UIDs; return its path.

    Raises:
        ImageReadError: the source cannot be read.
        _ConflictError: the target exists with different bytes.
    """
    from medcm.data.manifest import load_image
    from medcm.dicom.write import write_image

    pixels = load_image(record.images[index], record.mask)
    meta = record.meta_of_image(index)
    target = files_dir / case_folder(record.case_id) / f"{index + 1}.dcm"
    staging = target.with_name(f".{target.name}.{os.getpid()}.tmp")  # hidden: folder readers skip it
    write_image(
        staging, pixels[0] if pixels.shape[0] == 1 else pixels,
        patient_id=_long_string(record.patient_id or record.case_id),
        modality=dicom_modality(str(meta.get("modality") or "")),
        study_description=_long_string(record.meta.get("title")),
        body_part=dicom_code_string(str(meta.get("region") or "")),
        study_uid=case_uid(record.case_id),
        series_uid=case_uid(record.case_id, "series", index),
        sop_instance_uid=case_uid(record.case_id, "image", index),
    )
    _publish(staging, target, record.images[index])
    return target


def _publish(staging: Path, target: Path, source: str) -> None:
    """Move `staging` to `target`, unless `target` already holds the same bytes (then keep it untouched)."""
    if not target.exists():
        os.replace(staging, target)  # atomic: a reader never sees half a file
        return
    same = target.read_bytes() == staging.read_bytes()
    staging.unlink()
    if not same:
        raise _ConflictError(
            f"{source}: its converted file {target} exists with other content (the image changed since it "
            "was imported); expected the same image, or move that file away and import into a new store")


def case_uid(case_id: str, *parts: str | int) -> str:
    """A DICOM UID derived from a case id (and e.g. "image", 0): the same inputs always give the same UID.

    A `2.25.<int>` UID from a name-based UUID (RFC 4122 v5), as DICOM PS3.5 B.2 allows.
    """
    name = json.dumps([case_id, *parts])  # unambiguous: ("a", "bc") and ("ab", "c") differ
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}"


def case_folder(case_id: str) -> str:
    """A safe folder name for a case; names that had to change get a hash, so they cannot collide."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", case_id)[:80]
    if safe == case_id:
        return safe
    return f"{safe}-{uuid.uuid5(_UID_NAMESPACE, case_id).hex[:8]}"


def dicom_modality(value: str) -> str:
    """A DICOM Modality from a label such as "CT", "mr" or "MRI"; "OT" (other) when unknown."""
    code = value.strip().upper()
    code = _MODALITY_ALIASES.get(code, code)
    return code if code in _MODALITIES else "OT"


def dicom_code_string(value: str, max_length: int = 16) -> str:
    """`value` as a DICOM CS value: A–Z, 0–9, space and underscore, at most `max_length` characters.

    Too long a value is cut at a word boundary, without a dangling "AND": "Spine and Muscles" →
    "SPINE", "Reproductive and Urinary System" → "REPRODUCTIVE".
    """
    words = re.sub(r"[^A-Z0-9_ ]", " ", _ascii(value).upper()).split()
    text = " ".join(words)
    if len(text) <= max_length:
        return text
    kept: list[str] = []
    for word in words:
        if len(" ".join([*kept, word])) > max_length:
            break
        kept.append(word)
    while kept and kept[-1] in _DANGLING_WORDS:
        kept.pop()
    return " ".join(kept) or text[:max_length]


def _long_string(value: Any, max_length: int = 64) -> str:
    """`value` as a DICOM LO value: printable ASCII without backslashes, at most `max_length` characters."""
    text = " ".join(_ascii(str(value or "")).replace("\\", " ").split())
    return "".join(ch for ch in text if ch.isprintable())[:max_length].rstrip()


def _ascii(text: str) -> str:
    # The written files declare no character set, so only ASCII is allowed: "é" becomes "e".
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")


def _ingest_batch(engine: Engine, cases: list[_Case], user: str, totals: _Totals) -> None:
    """Ingest a batch of cases in one transaction and add its counts to `totals`."""
    reports: dict[str, str] = {}
    for case in cases:
        totals.errors += case.errors
        for study in dict.fromkeys(case.files.values()):
            owner = totals.study_owner.setdefault(study, case.case_id)
            if owner == case.case_id:
                reports[study] = case.report
            else:  # two reports for one study would stack up as versions, the last one winning
                totals.errors.append(f"case {case.case_id!r}: its DICOM study {study} is case {owner!r}'s too; "
                                     "kept that case's report, expected one case per study")
    paths = list(dict.fromkeys(path for case in cases for path in case.files))
    if not paths:
        return
    try:
        result = engine.ingest(paths, reports, user=user)
    except ValueError as err:  # the store refused the batch (e.g. a changed file under a stored UID)
        ids = [case.case_id for case in cases]
        totals.errors.append(f"cases {ids[0]!r}…{ids[-1]!r} ({len(ids)}): none stored, the store refused "
                             f"their batch: {err}")
        return
    for key in totals.counts:
        totals.counts[key] += getattr(result, key)
    totals.errors += [str(error) for error in result.errors]
    failed = {error.path for error in result.errors}
    for case in cases:
        studies = tuple(dict.fromkeys(result.study_uids.get(s, s) for p, s in case.files.items() if p not in failed))
        if studies:
            totals.case_studies[case.case_id] = studies

