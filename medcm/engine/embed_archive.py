"""Batch embedding of a stored archive with a checkpoint (`medcm embed`): resumable, shardable over ranks.

The case store lists the studies that still lack embeddings of the checkpoint's model (its
`model_id`; see `db.embedding_queries` for when a study counts as done), a batch at a time in
StudyInstanceUID order. Each batch's stored files are read again, its images embedded exactly as at
ingest (`Engine.embed_visual`: a CT/MR/PT series is one vector under its middle slice given a volume
encoder) and its latest reports' texts embedded, and the batch's vectors are written in ONE
transaction. A killed run loses at most the batch in flight; a rerun asks the store again and goes
on with the studies still lacking vectors. A new checkpoint has a new model_id, so it embeds the
whole archive again beside the old vectors.

Under `torchrun` each rank embeds the studies whose shard (CRC-32 of the UID modulo the world size)
is its rank: deterministic, no overlap, and no communication between ranks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from medcm.dicom.read import DicomImage, DicomReadError
from medcm.engine.records import EmbeddingRecord
from medcm.engine.stored import read_stored
from medcm.report.text import report_text_for_training

log = logging.getLogger(__name__)

IMAGE, REPORT = "image", "report"


class PendingStudyLike(Protocol):
    """`db.records.PendingStudy`: a study lacking embeddings, with its instances and latest report text."""

    study_uid: str
    instances: tuple[Any, ...]  # each with `sop_instance_uid`, `path`, `content_sha256`
    report_text: str | None
    needs_images: bool
    needs_report: bool


class EmbedStoreLike(Protocol):
    """The part of `db.store.CaseStore` batch embedding uses."""

    def studies_to_embed(self, model_id: str, after: str | None = ..., limit: int = ...,
                         shard: tuple[int, int] | None = ...) -> list: ...
    def add_embeddings(self, embeddings: list) -> int: ...


class EmbedderLike(Protocol):
    """The part of `medcm.engine.facade.Engine` batch embedding uses."""

    model_id: str

    def embed_visual(self, images: list[DicomImage], warnings: list[str] | None = None) -> list: ...
    def embed_texts(self, texts: list[str]) -> Any: ...


@dataclass(frozen=True)
class EmbedSummary:
    """What one rank's `embed_archive` run wrote.

    Attributes:
        model_id: the checkpoint's model id the vectors are stored under.
        studies: studies that got vectors.
        image_embeddings: "image" rows written (one per 2D image or per volume).
        report_embeddings: "report" rows written.
        failed: one line per study skipped (its files could not be read, or changed since ingest).
        warnings: one line each, e.g. a series embedded slice by slice instead of as one volume.
        seconds: wall time of the run.
        rank: this process's rank; `world_size` ranks split the archive.
    """

    model_id: str
    studies: int
    image_embeddings: int
    report_embeddings: int
    failed: tuple[str, ...] = ()
    warnings: tuple[str, ...] = field(default_factory=tuple)
    seconds: float = 0.0
    rank: int = 0
    world_size: int = 1


def embed_archive(embedder: EmbedderLike, store: EmbedStoreLike, batch_studies: int = 32, rank: int = 0,
                  world_size: int = 1, progress: bool = True,
                  on_batch: Callable[[int], None] | None = None) -> EmbedSummary:
    """Embed every stored study of this rank's shard that lacks vectors of `embedder.model_id`.

    Args:
        embedder: an `Engine` with a checkpoint.
        store: the case store.
        batch_studies: studies per batch (one store transaction each).
        rank: this process's rank (`DistributedContext.rank`).
        world_size: the number of ranks splitting the archive.
        progress: show a tqdm bar of studies.
        on_batch: called with the number of rows written after each batch's transaction.

    Raises:
        ValueError: `batch_studies` below 1 or a rank outside the world.
    """
    if batch_studies < 1:
        raise ValueError(f"batch_studies: got {batch_studies}, expected an integer >= 1")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"got rank {rank} of world size {world_size}; expected 0 <= rank < world_size")
    model_id, start = embedder.model_id, time.perf_counter()
    counts = {IMAGE: 0, REPORT: 0, "studies": 0}
    failed: list[str] = []
    warnings: list[str] = []
    bar = _progress_bar(progress, rank)
    after: str | None = None
    try:
        while page := store.studies_to_embed(model_id, after=after, limit=batch_studies, shard=(rank, world_size)):
            after = page[-1].study_uid  # a failed study is not asked for again within this run
            records, embedded = _embed_batch(embedder, page, failed, warnings)
            if records:
                store.add_embeddings(records)
                if on_batch is not None:
                    on_batch(len(records))
            for record in records:
                counts[record.kind] += 1
            counts["studies"] += embedded
            if bar is not None:
                bar.update(len(page))
                bar.set_postfix(failed=len(failed))
    finally:
        if bar is not None:
            bar.close()
    return EmbedSummary(model_id, counts["studies"], counts[IMAGE], counts[REPORT], tuple(failed), tuple(warnings),
                        time.perf_counter() - start, rank, world_size)


def _progress_bar(progress: bool, rank: int) -> Any:
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(desc=f"embedding (rank {rank})" if rank else "embedding", unit="study", position=rank)


def _embed_batch(embedder: EmbedderLike, page: list[PendingStudyLike], failed: list[str],
                 warnings: list[str]) -> tuple[list[EmbeddingRecord], int]:
    """The vectors of one batch (images of all its studies embedded together) and how many studies got some."""
    model_id = embedder.model_id
    images: list[DicomImage] = []
    owner: dict[str, str] = {}  # SOPInstanceUID → study UID, for every instance of an image study read
    ok: list[PendingStudyLike] = []
    for study in page:
        if study.needs_images:
            read = _read_study(study, failed)
            if read is None:
                continue
            images += read
            owner.update({instance.sop_instance_uid: study.study_uid for instance in study.instances})
        ok.append(study)
    records = [EmbeddingRecord(IMAGE, item.key, model_id, item.vector)
               for item in (embedder.embed_visual(images, warnings) if images else [])]
    stray = [record.key for record in records if record.key not in owner]
    if stray:  # read_instance returns the file's own UID, checked against the store in `read_stored`
        raise ValueError(f"embedded instance {stray[0]!r} is not one of the batch's stored instances")
    reports = [study for study in ok if study.needs_report and study.report_text]
    texts = [report_text_for_training(study.report_text) or study.report_text for study in reports]
    vectors = embedder.embed_texts(texts) if texts else []
    records += [EmbeddingRecord(REPORT, study.study_uid, model_id, vector) for study, vector in zip(reports, vectors)]
    return records, len({owner[r.key] if r.kind == IMAGE else r.key for r in records})


def _read_study(study: PendingStudyLike, failed: list[str]) -> list[DicomImage] | None:
    """The study's stored images read again; None (and a line in `failed`) if any is unreadable or changed."""
    images = []
    for instance in study.instances:
        try:
            images.append(read_stored(instance))
        except DicomReadError as err:
            return _fail(study, failed, " ".join(str(err).split()))
    return images


def _fail(study: PendingStudyLike, failed: list[str], reason: str) -> None:
    line = f"study {study.study_uid}: skipped, {reason}"
    log.warning("%s", line)
    failed.append(line)
    return None
