"""The ingest pipeline: plan → read → de-identify → previews → embeddings → store, a chunk at a time.

`ingest_paths` plans every DICOM file under the given paths (files, folders, zips) from its header
(`medcm.engine.ingest_plan`), then per chunk of whole series (a study's series together, bounded in
images and decoded samples) decodes the files, optionally writes de-identified copies and scrubs the
reports (`medcm.dicom.deid_copies`), skips what the store already holds byte for byte, and stores
the rest in one transaction: instances with PNG previews (`medcm.engine.previews`), report versions,
and, given an embedder, one "image" vector per image or volume and one "report" vector per new
report text. An upload holds one chunk's pixels at a time, not all of them.

Each file is decoded once: its display pixels give both the preview and the model input; previews
are rendered on a worker thread (`PreviewRenderer`) while the chunk's model forward passes run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from medcm.dicom.deid import DeidConfig
from medcm.dicom.deid_copies import deidentify_images
from medcm.dicom.read import DicomImage, DicomReadError, split_member_name
from medcm.dicom.walk import iter_dicom
from medcm.engine.embed_archive import EmbedderLike
from medcm.engine.ingest_plan import plan_files, planned_chunks, read_planned
from medcm.engine.previews import PreviewRenderer
from medcm.engine.records import IDENTIFIER_KEYS, EmbeddingRecord, InstanceRecord, ReportRecord, instance_record
from medcm.report.text import report_text_for_training, split_sections

__all__ = ["IMAGE", "REPORT", "IngestResult", "IngestStoreLike", "ingest_paths", "read_images"]

IMAGE, REPORT = "image", "report"


class IngestStoreLike(Protocol):
    """The part of `db.store.CaseStore` ingest uses."""

    def ingest(self, instances: list, reports: list = ..., embeddings: list = ..., user: str = ...) -> Any: ...
    def instance_hashes(self, sop_instance_uids: list[str]) -> dict[str, str]: ...
    def report_texts(self, study_uids: list[str]) -> dict[str, set[str]]: ...


@dataclass(frozen=True)
class IngestResult:
    """What an ingest stored and which files failed (each error names its file)."""

    studies: tuple[str, ...]
    added_instances: int
    skipped_instances: int
    added_reports: int
    added_embeddings: int
    errors: tuple[DicomReadError, ...] = field(default_factory=tuple)
    study_uids: dict[str, str] = field(default_factory=dict)  # UID in the files → UID stored (de-identified)
    burned_in: tuple[str, ...] = ()  # stored SOPInstanceUIDs whose pixels may show identifiers: review them
    warnings: tuple[str, ...] = ()  # one line each, e.g. a series stored slice by slice, not as one volume


def read_images(paths: Iterable[str | Path]) -> tuple[list[DicomImage], list[DicomReadError]]:
    """Every readable image under `paths` (files, folders, zips) and an error per unreadable file."""
    images, errors = [], []
    for path in paths:
        for item in iter_dicom(path):
            (errors if isinstance(item, DicomReadError) else images).append(item)
    return images, errors


def ingest_paths(
    store: IngestStoreLike,
    paths: Iterable[str | Path],
    embedder: EmbedderLike | None,
    chunk_images: int,
    reports: Mapping[str, str] | None = None,
    default_report: str | None = None,
    user: str = "system",
    deid: DeidConfig | None = None,
    files_dir: Path | None = None,
    on_stored: Callable[[], None] | None = None,
) -> IngestResult:
    """Read DICOM under `paths` and store it, with previews, reports and (given an embedder) embeddings.

    Args:
        store: the case store.
        paths: files, folders or zips.
        embedder: embeds images and texts (the `Engine`); None stores no vectors.
        chunk_images: about this many images per store transaction, and at most `ingest_plan.CHUNK_SAMPLES`
            decoded samples: whole series, a study's series together; a larger series is one. Each chunk
            is decoded, de-identified and stored before the next is read.
        reports: study UID (as in the files) → report text, e.g. from a manifest.
        default_report: report for studies not in `reports` (e.g. `--report FILE` for one study).
            Without either, a `report.txt` in the folder of a study's first file is used.
        user: recorded in the audit trail.
        deid: de-identify with these settings: only copies under `files_dir` and scrubbed reports are stored.
        files_dir: where de-identified copies are written (required with `deid`).
        on_stored: called after each transaction that stored something (e.g. to drop cached indexes).

    Raises:
        ValueError: `deid` without a `files_dir`.
    """
    if deid is not None and files_dir is None:
        raise ValueError("de-identified copies need a folder: pass files_dir (--files DIR) for a database "
                         "that is not a SQLite file")
    planned, errors = plan_files(paths)  # headers only: nothing is decoded before its chunk
    counts = dict.fromkeys(("added_instances", "skipped_instances", "added_reports", "added_embeddings"), 0)
    warnings: list[str] = []
    studies: list[str] = []
    uid_map: dict[str, str] = {}
    flagged: list[str] = []
    with PreviewRenderer() as previews:
        known = _StoredHashes(store)
        for files in planned_chunks(planned, chunk_images):
            images, failed = read_planned(files)
            images, missing_uid = _with_instance_uids(images)
            errors += failed + missing_uid
            texts = _study_reports(images, reports or {}, default_report)
            marks = _Marks(set(), {})
            if deid is not None:
                batch = deidentify_images(images, texts, deid, files_dir)
                images, texts = batch.images, batch.reports
                uid_map.update(batch.study_uids)
                flagged += batch.burned_in
                errors += batch.errors
                marks = _Marks(set(batch.burned_in), batch.identifier_keys)
            else:
                uid_map.update((image.meta.study_uid, image.meta.study_uid) for image in images)
            _start_previews(known, previews, images)
            studies += [image.meta.study_uid for image in images]
            stored = _ingest_chunk(store, embedder, images, texts, marks, user, warnings, known, previews)
            for key, value in stored.items():
                counts[key] += value
            added = stored["added_instances"] + stored["added_reports"] + stored["added_embeddings"]
            if on_stored is not None and added:
                on_stored()
    return IngestResult(studies=tuple(dict.fromkeys(studies)), errors=tuple(errors), study_uids=uid_map,
                        burned_in=tuple(flagged), warnings=tuple(warnings), **counts)


class _StoredHashes:
    """SOPInstanceUID → content hash the store holds, asked in batches and updated as chunks are stored.

    Re-sending a stored file costs no preview and no embedding. A changed file under a stored
    SOPInstanceUID counts as new, so the store refuses it with a clear error.
    """

    def __init__(self, store: IngestStoreLike) -> None:
        self._store = store
        self._hashes: dict[str, str] = {}
        self._asked: set[str] = set()

    def look_up(self, images: list[DicomImage]) -> None:
        uids = list(dict.fromkeys(image.meta.sop_instance_uid for image in images))
        uids = [uid for uid in uids if uid not in self._asked]
        if uids:
            self._hashes.update(self._store.instance_hashes(uids))
            self._asked.update(uids)

    def is_new(self, image: DicomImage) -> bool:
        return self._hashes.get(image.meta.sop_instance_uid) != image.meta.content_sha256

    def mark_stored(self, images: list[DicomImage]) -> None:
        self._hashes.update((image.meta.sop_instance_uid, image.meta.content_sha256) for image in images)


def _start_previews(known: _StoredHashes, previews: PreviewRenderer, images: list[DicomImage]) -> None:
    known.look_up(images)
    for image in images:
        if known.is_new(image):
            previews.start(image, image.pixels)


def _ingest_chunk(store: IngestStoreLike, embedder: EmbedderLike | None, images: list[DicomImage],
                  texts: Mapping[str, str], marks: _Marks, user: str, warnings: list[str],
                  known: _StoredHashes, previews: PreviewRenderer) -> dict[str, int]:
    """Store whole studies in one transaction; their counts by `IngestResult` field (warnings appended)."""
    known.look_up(images)
    fresh = [image for image in images if known.is_new(image)]
    own = dict.fromkeys(image.meta.study_uid for image in images)
    new_texts = _new_reports(store, {uid: texts[uid] for uid in own if uid in texts})
    counts = {"added_instances": 0, "skipped_instances": len(images) - len(fresh), "added_reports": 0,
              "added_embeddings": 0}
    if not (fresh or new_texts):
        return counts
    records = [ReportRecord(uid, text, list(split_sections(text).sections)) for uid, text in new_texts.items()]
    embeddings = _embeddings(embedder, fresh, new_texts, warnings) if embedder is not None else []
    instances = [marks.on(instance_record(image, previews.take(image, image.pixels))) for image in fresh]
    summary = store.ingest(instances, records, embeddings, user=user)
    known.mark_stored(fresh)
    warnings += [f"study {uid}: its report was not stored over the version a clinician signed; the audit trail "
                 "keeps it (ingest event)" for uid in getattr(summary, "kept_out", ())]
    counts["skipped_instances"] += summary.skipped_instances
    for key in ("added_instances", "added_reports", "added_embeddings"):
        counts[key] = getattr(summary, key)
    return counts


def _new_reports(store: IngestStoreLike, texts: dict[str, str]) -> dict[str, str]:
    """The reports the store will add: a text equal to a stored version of its study is skipped there,
    and its embedding must not be attached to that study's newer (possibly signed) version."""
    stored = store.report_texts(list(texts)) if texts else {}
    return {uid: text for uid, text in texts.items() if text not in stored.get(uid, ())}


def _embeddings(embedder: EmbedderLike, images: list[DicomImage], texts: Mapping[str, str],
                warnings: list[str]) -> list[EmbeddingRecord]:
    """One "image" row per image or per volume (under its middle slice's UID), one "report" row per text."""
    model_id = embedder.model_id
    vectors = embedder.embed_visual(images, warnings)
    records = [EmbeddingRecord(IMAGE, item.key, model_id, item.vector) for item in vectors]
    uids = list(texts)
    vectors = embedder.embed_texts([report_text_for_training(texts[uid]) or texts[uid] for uid in uids])
    records += [EmbeddingRecord(REPORT, uid, model_id, vector) for uid, vector in zip(uids, vectors)]
    return records


@dataclasses.dataclass(frozen=True)
class _Marks:
    """What de-identification learnt about each copy, kept in its instance metadata: the burned-in flag
    (new SOPInstanceUIDs) and its study's keyed identifier hashes (new study UID → hashes)."""

    burned_in: set[str]
    identifier_keys: Mapping[str, list[str]]

    def on(self, record: InstanceRecord) -> InstanceRecord:
        extra: dict[str, object] = {}
        if record.sop_instance_uid in self.burned_in:
            extra["burned_in_annotation"] = True
        if self.identifier_keys.get(record.study_uid):
            extra[IDENTIFIER_KEYS] = self.identifier_keys[record.study_uid]
        return dataclasses.replace(record, metadata={**record.metadata, **extra}) if extra else record


def _with_instance_uids(images: list[DicomImage]) -> tuple[list[DicomImage], list[DicomReadError]]:
    """Images that can be stored (they have a SOPInstanceUID) and an error for each one that cannot."""
    kept, errors = [], []
    for image in images:
        if image.meta.sop_instance_uid:
            kept.append(image)
        else:
            errors.append(DicomReadError(image.meta.path, "no SOPInstanceUID: cannot store an instance without one"))
    return kept, errors


def _study_reports(images: list[DicomImage], reports: Mapping[str, str], default: str | None) -> dict[str, str]:
    """Report text per study: given explicitly, else the default, else a report.txt beside its first file."""
    texts: dict[str, str] = {}
    for image in images:
        uid = image.meta.study_uid
        if uid in texts:
            continue
        text = reports.get(uid) or default or _report_beside(image.meta.path)
        if text and text.strip():
            texts[uid] = text
    return texts


def _report_beside(path: str) -> str | None:
    if split_member_name(path) is not None:  # a zip member has no folder to hold a report.txt
        return None
    candidate = Path(path).parent / "report.txt"
    return candidate.read_text(encoding="utf-8") if candidate.is_file() else None
