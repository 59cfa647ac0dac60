"""De-identification on ingest: write de-identified copies of read DICOM images, scrub their reports.

The engine calls `deidentify_images` between reading an upload and storing it, so the case store,
its vector indexes and its files only ever hold the copies: pseudonymous patient ids, shifted
dates, remapped UIDs, no names or record numbers (see `medcm.dicom.deid`). The originals are never
referenced by the store.

A copy is written to `FILES/<new StudyInstanceUID>/<new SOPInstanceUID>.dcm`. De-identification
is deterministic under one key, so ingesting the same file again writes the same bytes to the same
place and the store skips it; a different file under an already written name is refused, never
written over (the store may point at the first one).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import secrets
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pydicom

from medcm.dicom.deid import (
    BurnedInAnnotationError,
    DeidConfig,
    deidentify,
    identifiers_of,
    pseudonymous_uid,
    scrub_report,
)
from medcm.dicom.deid_text import identifier_keys
from medcm.dicom.meta import instance_meta
from medcm.dicom.read import DicomImage, DicomReadError, read_dataset
from medcm.dicom.read import read_source as read_bytes
from medcm.paths import sqlite_file

log = logging.getLogger(__name__)

KEY_BYTES = 32


@dataclass(frozen=True)
class DeidentifiedBatch:
    """The de-identified copies of a batch of images, and what happened on the way.

    Attributes:
        images: the copies, read back (metadata and paths are the copies').
        reports: new StudyInstanceUID → scrubbed report text.
        study_uids: original StudyInstanceUID → new one, for every study with a copy.
        burned_in: SOPInstanceUIDs (new) of copies whose pixels may show identifiers (flagged for review).
        errors: one per image refused (burned-in annotation, a clashing copy, an unwritable file).
        identifier_keys: new StudyInstanceUID → keyed hashes of the names and ids its files held
            (`medcm.dicom.deid_text.identifier_keys`), to scrub reports written after ingest.
    """

    images: list[DicomImage]
    reports: dict[str, str]
    study_uids: dict[str, str]
    burned_in: list[str]
    errors: list[DicomReadError]
    identifier_keys: dict[str, list[str]]


def read_source(label: str) -> bytes:
    """The bytes of an image read before, to copy it: a file, or a zip member named `archive.zip:member`.

    `medcm.dicom.read.read_source`, with errors saying that the image read before is now unreadable.

    Raises:
        DicomReadError: the file or member cannot be read.
    """
    try:
        return read_bytes(label)
    except DicomReadError as err:
        raise DicomReadError(label, f"cannot read it again: {err.reason}") from (err.__cause__ or err)


def load_or_create_key(path: str | Path) -> bytes:
    """The site's de-identification key from `path` (hex), created there (mode 0600) the first time.

    Keep the key out of the case store and its backups: with it, pseudonyms can be recomputed from
    real patient ids. Losing it means the same patient gets a new pseudonym from then on.

    Raises:
        ValueError: the file exists but does not hold a hex key of at least 16 bytes.
    """
    path = Path(path).expanduser()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never replace an existing key
        except FileExistsError:
            pass  # another process created it first: use theirs
        else:
            with os.fdopen(fd, "w", encoding="ascii") as handle:
                handle.write(secrets.token_hex(KEY_BYTES) + "\n")
    text = path.read_text(encoding="ascii", errors="replace").strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < 16:
        raise ValueError(f"de-identification key {path}: expected at least 32 hex digits, got {len(text)} characters")
    return key


def default_key_file(db_url: str) -> Path | None:
    """`sqlite:///x/cases.db` → `x/cases.db.deid-key`; None for other databases."""
    file = sqlite_file(db_url)
    return file.with_name(file.name + ".deid-key") if file else None


def deidentify_images(images: list[DicomImage], reports: Mapping[str, str], config: DeidConfig,
                      files_dir: str | Path) -> DeidentifiedBatch:
    """Write a de-identified copy of each image under `files_dir` and scrub each study's report.

    Args:
        images: images as read from their original files (each `meta.path` readable again).
        reports: original StudyInstanceUID → report text.
        config: the de-identification key and options.
        files_dir: where the copies go (created when needed).

    Returns:
        The copies read back, the scrubbed reports keyed by new study UIDs, and per-image errors.
    """
    files_dir = Path(files_dir)
    copies, errors, flagged = [], [], []
    study_uids: dict[str, str] = {}
    known: dict[str, list[str]] = {}  # original study → identifiers seen in its files
    for image in images:
        try:
            ds = _dataset(image)
            known.setdefault(image.meta.study_uid, []).extend(identifiers_of(ds))
            copy, burned_in = _write_copy(ds, image, config, files_dir)
        except DicomReadError as err:
            errors.append(err)
            continue
        copies.append(copy)
        study_uids[image.meta.study_uid] = copy.meta.study_uid
        if burned_in:
            flagged.append(copy.meta.sop_instance_uid)
    scrubbed = {study_uids[uid]: scrub_report(text, known.get(uid, ())) for uid, text in reports.items()
                if uid in study_uids}
    keys = {new: identifier_keys(known.get(old, ()), config.key) for old, new in study_uids.items()}
    return DeidentifiedBatch(copies, scrubbed, study_uids, flagged, errors, keys)


def _dataset(image: DicomImage) -> pydicom.Dataset:
    label = image.meta.path
    data = read_source(label)
    try:
        return read_dataset(data, label, force=True)  # it read as an image before: no image checks again
    except DicomReadError as err:
        reason = f"cannot parse it again for de-identification: {err.reason}"
        raise DicomReadError(label, reason) from (err.__cause__ or err)


def _write_copy(ds: pydicom.Dataset, image: DicomImage, config: DeidConfig,
                files_dir: Path) -> tuple[DicomImage, bool]:
    label, meta = image.meta.path, image.meta
    # Files without study/series UIDs are grouped per folder by the reader; give the copies real
    # UIDs derived from that grouping, so they stay grouped and carry no folder name.
    if not str(ds.get("StudyInstanceUID", "")).strip():
        ds.StudyInstanceUID = pseudonymous_uid(meta.study_uid, config)
    if not str(ds.get("SeriesInstanceUID", "")).strip():
        ds.SeriesInstanceUID = pseudonymous_uid(meta.series_uid, config)
    if not ds.file_meta.get("TransferSyntaxUID"):
        ds.file_meta.TransferSyntaxUID = meta.transfer_syntax
    try:
        result = deidentify(ds, config)
    except BurnedInAnnotationError as err:
        raise DicomReadError(label, "refused: it declares burned-in annotation (BurnedInAnnotation YES), so its "
                             "pixels may show the patient's name; expected an image without burned-in text") from err
    copy = result.dataset
    target = files_dir / str(copy.StudyInstanceUID) / f"{copy.SOPInstanceUID}.dcm"
    data = _serialise(copy, label)
    _publish(data, target, label)
    # De-identification leaves pixels and display attributes alone: the pixels read from the
    # original are the copy's, so only the metadata is taken from the copy (no second decode).
    meta = instance_meta(copy, target, image.pixels.shape[0], hashlib.sha256(data).hexdigest())
    return DicomImage(meta, image.pixels), result.burned_in


def _serialise(ds: pydicom.Dataset, label: str) -> bytes:
    buffer = io.BytesIO()
    try:
        ds.save_as(buffer, enforce_file_format=True)
    except Exception as err:
        raise DicomReadError(label, f"cannot write its de-identified copy ({type(err).__name__}: {err})") from err
    return buffer.getvalue()


def _publish(data: bytes, target: Path, label: str) -> None:
    """Write `data` to `target` atomically; an identical file there is kept, a different one refused."""
    if target.exists():
        if target.read_bytes() != data:
            raise DicomReadError(label, "a different file with the same SOPInstanceUID is already stored; "
                                 "expected a re-sent copy of it or an image with a new SOPInstanceUID")
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".deid-", suffix=".dcm")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, target)  # a reader never sees half a file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
