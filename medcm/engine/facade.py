"""The facade the UI and the command line share: one checkpoint, one case store, its vector indexes.

The engine reads DICOM, embeds images and reports with the checkpoint's model (a CT/MR/PT series as
one volume when the checkpoint has a volume encoder, see `medcm.engine.embed`), writes cases to the
store and answers the three questions the assistant asks of its memory: which past cases are similar
(image → reports), which past images look alike (image → images), and which images match a phrase
(text → images). It also drafts findings from the similar cases and signs reports.

The library does not import the case store: the engine takes any object with the store's methods
(`CaseStoreLike`); the command line and the UI pass `db.store.CaseStore`.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from medcm.engine import embed as visual
from medcm.checkpoint import Checkpoint, load_checkpoint
from medcm.dicom.deid import DeidConfig, pseudonymous_uid
from medcm.dicom.deid_copies import deidentify_images
from medcm.dicom.read import DicomImage, DicomReadError, iter_dicom
from medcm.engine.embed_archive import EmbedSummary, embed_archive
from medcm.report.draft import Draft, DraftConfig, SourceCase, draft_findings
from medcm.index.exact import Hit, VectorIndex
from medcm.index.faiss import FaissIndex, check_backend, with_backend
from medcm.index.pgvector import PgVectorIndex
from medcm.model.preprocess import resize_and_pad, select_frame
from medcm.engine.records import EmbeddingRecord, InstanceRecord, ReportRecord, instance_record
from medcm.runtime import select_device
from medcm.report.text import report_text_for_training, split_sections
from medcm.engine.embed import VisualVector, embed_images_2d, study_vector

log = logging.getLogger(__name__)

IMAGE, REPORT = "image", "report"
PREVIEW_SIZE = 256
_STAMP_FILE = "store_stamp.txt"
INDEX_BACKENDS = ("exact", "faiss", "pgvector")  # in memory, in memory on FAISS, inside PostgreSQL
_BATCH = 32
INGEST_CHUNK_IMAGES = 64  # images per store transaction during ingest (whole studies)


class CaseStoreLike(Protocol):
    """The part of `db.store.CaseStore` the engine uses."""

    url: str

    def ingest(self, instances: list, reports: list = ..., embeddings: list = ..., user: str = ...) -> Any: ...
    def sign_report(self, study_uid: str, text: str, sections: list, signer: str) -> Any: ...
    def save_draft(self, study_uid: str, text: str, sections: list, author: str, source: str = ...) -> Any: ...
    def latest_report(self, study_uid: str, signed_only: bool = ...) -> Any: ...
    def embedding_matrix(self, kind: str, model_id: str) -> Any: ...
    def embedding_stamp(self, kind: str, model_id: str) -> str: ...
    def instance_hashes(self, sop_instance_uids: list[str]) -> dict[str, str]: ...
    def report_versions(self, study_uid: str) -> list: ...
    def add_embeddings(self, embeddings: list) -> int: ...
    def count_embeddings(self, kind: str, model_id: str) -> int: ...
    def enable_pgvector(self) -> int: ...
    def search_vectors(self, kind: str, model_id: str, queries: np.ndarray, k: int = ..., filters: dict | None = ...,
                       exclude: Any = ..., group_by: str | None = ...) -> list: ...
    def studies_to_embed(self, model_id: str, after: str | None = ..., limit: int = ...,
                         shard: tuple[int, int] | None = ...) -> list: ...
    def log_event(self, kind: str, user: str, study_uid: str | None = ..., detail: dict | None = ...) -> None: ...


@dataclass(frozen=True)
class SimilarCase:
    """A past case similar to the query, with the report the similarity was measured against."""

    study_uid: str
    score: float
    report: str
    modality: str
    body_part: str


@dataclass(frozen=True)
class ImageMatch:
    """A stored image matching a query (the best-scoring image of its study)."""

    sop_instance_uid: str
    study_uid: str
    score: float
    modality: str
    body_part: str


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


def render_preview(pixels: np.ndarray, size: int = PREVIEW_SIZE) -> bytes:
    """A PNG thumbnail of the middle frame (longer side `size` px, aspect kept, no padding)."""
    from PIL import Image

    frame = select_frame(pixels, "middle")
    square = resize_and_pad(frame, size)[0].numpy()
    height, width = frame.shape
    scale = size / max(height, width)
    h, w = max(1, round(height * scale)), max(1, round(width * scale))
    top, left = (size - h) // 2, (size - w) // 2
    crop = (square[top : top + h, left : left + w] * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(crop).save(buffer, format="PNG")
    return buffer.getvalue()


def read_images(paths: Iterable[str | Path]) -> tuple[list[DicomImage], list[DicomReadError]]:
    """Every readable image under `paths` (files, folders, zips) and an error per unreadable file."""
    images, errors = [], []
    for path in paths:
        for item in iter_dicom(path):
            (errors if isinstance(item, DicomReadError) else images).append(item)
    return images, errors


class Engine:
    """Loads a checkpoint and a store once; embeds, stores, searches, drafts and signs.

    Args:
        store: the case store (`db.store.CaseStore` or anything with its methods).
        checkpoint: a checkpoint or run folder; None allows ingest without embeddings only.
        index_dir: where vector indexes persist; default: beside a SQLite database file
            (`cases.db` → `cases.db.index/`), otherwise in memory (rebuilt from the store at start).
        deid: de-identify on ingest with these settings (the command line and the app always pass
            one unless told `--no-deid`); None stores files as they are.
        files_dir: where de-identified copies are written; default: beside a SQLite database file
            (`cases.db` → `cases.db.files/`); required with `deid` for other databases.
        device: "cpu", "cuda"...; default CUDA when present.
        draft_config: drafting settings.
        index_backend: "exact" (`medcm.index.exact.VectorIndex`), "faiss" (`medcm.index.faiss.FaissIndex`,
            built in memory from the saved exact index; needs `pip install 'medcm[faiss]'`) or
            "pgvector" (`medcm.index.pgvector.PgVectorIndex`: the PostgreSQL store searches its own
            vectors; enabled on the store here, which converts the stored vectors once).
    """

    def __init__(
        self,
        store: CaseStoreLike,
        checkpoint: str | Path | None = None,
        index_dir: str | Path | None = None,
        device: str | None = None,
        draft_config: DraftConfig = DraftConfig(),
        deid: DeidConfig | None = None,
        files_dir: str | Path | None = None,
        index_backend: str = "exact",
    ) -> None:
        # An unknown name, a missing FAISS or a store without pgvector fails here, not at the first search.
        if index_backend not in INDEX_BACKENDS:
            raise ValueError(f"index backend is {index_backend!r}, expected one of {INDEX_BACKENDS}")
        if index_backend == "pgvector":
            store.enable_pgvector()
        else:
            check_backend(index_backend)
        self.index_backend = index_backend
        self.store = store
        self.deid = deid
        self.files_dir = Path(files_dir) if files_dir else default_files_dir(store.url)
        self.device = select_device(device)
        self.checkpoint: Checkpoint | None = load_checkpoint(checkpoint, self.device) if checkpoint else None
        self.index_dir = Path(index_dir) if index_dir else _default_index_dir(store.url)
        self.draft_config = draft_config
        self._indexes: dict[str, VectorIndex | FaissIndex] = {}  # not used by pgvector

    @property
    def model_id(self) -> str:
        return self._require_checkpoint().model_id

    def _require_checkpoint(self) -> Checkpoint:
        if self.checkpoint is None:
            raise ValueError("this needs a model: pass --checkpoint CKPT_DIR (a folder written by medcm train)")
        return self.checkpoint

    # ----------------------------------------------------------------- embedding
    def embed_images(self, images: list[DicomImage]) -> np.ndarray:
        """L2-normalised 2D embeddings `[N, D]`, one per image (each slice of a series too)."""
        return embed_images_2d(self._require_checkpoint(), images, self.device, _BATCH)

    def embed_visual(self, images: list[DicomImage], warnings: list[str] | None = None) -> list[VisualVector]:
        """What `images` show, embedded (`medcm.engine.embed.embed_visual`): with a volume encoder, a CT/MR/PT
        series is one vector. Each warning (e.g. a series embedded slice by slice instead) is logged
        and, given a list, appended to it."""
        vectors, found = visual.embed_visual(self._require_checkpoint(), images, self.device, _BATCH)
        for warning in found:
            log.warning("%s", warning)
        if warnings is not None:
            warnings.extend(found)
        return vectors

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """L2-normalised text embeddings `[N, D]`."""
        ckpt = self._require_checkpoint()
        out = [ckpt.model.encode_text(texts[s : s + 64]).float().cpu() for s in range(0, len(texts), 64)]
        return torch.cat(out).numpy() if out else np.zeros((0, ckpt.config.model.embed_dim), np.float32)

    def study_embedding(self, images: list[DicomImage]) -> np.ndarray:
        """One query vector `[D]` for a study: its series first, then the study.

        Each series is its volume's vector (given a volume encoder) or the normalised mean of its
        images' embeddings, and the study the normalised mean of its series, so a 300-slice CT
        series and a single radiograph of the same study weigh the same instead of 300 to 1.
        """
        if not images:
            raise ValueError("no readable DICOM image to search with")
        return study_vector(self.embed_visual(images))

    # -------------------------------------------------------------------- ingest
    def ingest(
        self,
        paths: Iterable[str | Path],
        reports: Mapping[str, str] | None = None,
        default_report: str | None = None,
        user: str = "system",
    ) -> IngestResult:
        """Read DICOM under `paths` and store it, with previews, reports and (given a model) embeddings.

        With de-identification on (`deid`), what is stored are de-identified copies written under
        `files_dir` and scrubbed reports; the originals are never referenced. Studies go to the store
        a few at a time (`INGEST_CHUNK_IMAGES` images), one transaction each: an ingest that is killed
        keeps the studies it finished, loses none half-written, and a retry adds only the rest.
        Unreadable or refused files are returned as errors and written nowhere.

        Args:
            paths: files, folders or zips.
            reports: study UID (as in the files) → report text, e.g. from a manifest.
            default_report: report for studies not in `reports` (e.g. `--report FILE` for one study).
                Without either, a `report.txt` in the folder of a study's first file is used.
            user: recorded in the audit trail.
        """
        images, errors = read_images(paths)
        images, missing_uid = _with_instance_uids(images)
        errors += missing_uid
        texts = _study_reports(images, reports or {}, default_report)
        uid_map = {image.meta.study_uid: image.meta.study_uid for image in images}
        flagged: tuple[str, ...] = ()
        if self.deid is not None:
            batch = deidentify_images(images, texts, self.deid, self._require_files_dir())
            images, texts, uid_map, flagged = batch.images, batch.reports, batch.study_uids, tuple(batch.burned_in)
            errors += batch.errors
        counts = dict.fromkeys(("added_instances", "skipped_instances", "added_reports", "added_embeddings"), 0)
        warnings: list[str] = []
        for chunk in _study_chunks(images, INGEST_CHUNK_IMAGES):
            for key, value in self._ingest_chunk(chunk, texts, set(flagged), user, warnings).items():
                counts[key] += value
        return IngestResult(studies=tuple(dict.fromkeys(image.meta.study_uid for image in images)),
                            errors=tuple(errors), study_uids=uid_map, burned_in=flagged, warnings=tuple(warnings),
                            **counts)

    def _ingest_chunk(self, images: list[DicomImage], texts: Mapping[str, str], flagged: set[str],
                      user: str, warnings: list[str]) -> dict[str, int]:
        """Store whole studies in one transaction; their counts by `IngestResult` field (warnings appended)."""
        fresh, already_stored = self._split_stored(images)
        own = dict.fromkeys(image.meta.study_uid for image in images)
        new_texts = self._new_reports({uid: texts[uid] for uid in own if uid in texts})
        counts = {"added_instances": 0, "skipped_instances": already_stored, "added_reports": 0, "added_embeddings": 0}
        if not (fresh or new_texts):
            return counts
        records = [ReportRecord(uid, text, list(split_sections(text).sections)) for uid, text in new_texts.items()]
        embeddings = self._ingest_embeddings(fresh, new_texts, warnings) if self.checkpoint else []
        instances = [_flag_burned_in(instance_record(image, render_preview(image.pixels)), flagged) for image in fresh]
        summary = self.store.ingest(instances, records, embeddings, user=user)
        self._indexes.clear()  # the store changed: reload or rebuild on the next search
        counts["skipped_instances"] += summary.skipped_instances
        for key in ("added_instances", "added_reports", "added_embeddings"):
            counts[key] = getattr(summary, key)
        return counts

    def _require_files_dir(self) -> Path:
        if self.files_dir is None:
            raise ValueError("de-identified copies need a folder: pass files_dir (--files DIR) for a database "
                             "that is not a SQLite file")
        return self.files_dir

    def _split_stored(self, images: list[DicomImage]) -> tuple[list[DicomImage], int]:
        """Images the store does not hold yet, and how many it already holds byte for byte.

        Re-sending a stored file costs no preview and no embedding. A changed file under a stored
        SOPInstanceUID stays in the list, so the store refuses it with a clear error.
        """
        stored = self.store.instance_hashes([image.meta.sop_instance_uid for image in images])
        fresh = [im for im in images if stored.get(im.meta.sop_instance_uid) != im.meta.content_sha256]
        return fresh, len(images) - len(fresh)

    def _new_reports(self, texts: dict[str, str]) -> dict[str, str]:
        """The reports the store will add: a text equal to a stored version of its study is skipped there,
        and its embedding must not be attached to that study's newer (possibly signed) version."""
        new = {}
        for uid, text in texts.items():
            try:
                versions = self.store.report_versions(uid)
            except ValueError:  # the study is not stored yet
                versions = []
            if all(version.text != text for version in versions):
                new[uid] = text
        return new

    def _ingest_embeddings(self, images: list[DicomImage], texts: Mapping[str, str],
                           warnings: list[str]) -> list[EmbeddingRecord]:
        """One "image" row per image or per volume (under its middle slice's UID), one "report" row per text."""
        model_id = self.model_id
        vectors = self.embed_visual(images, warnings)
        records = [EmbeddingRecord(IMAGE, item.key, model_id, item.vector) for item in vectors]
        uids = list(texts)
        vectors = self.embed_texts([report_text_for_training(texts[uid]) or texts[uid] for uid in uids])
        records += [EmbeddingRecord(REPORT, uid, model_id, vector) for uid, vector in zip(uids, vectors)]
        return records

    def embed_archive(self, batch_studies: int = 32, rank: int = 0, world_size: int = 1,
                      progress: bool = True) -> EmbedSummary:
        """Embed the stored studies of shard `rank` lacking this checkpoint's vectors (`medcm.engine.embed_archive`).

        Resumable: each batch is one transaction. Cached indexes are dropped; the next search rebuilds them.
        """
        self._require_checkpoint()
        try:
            return embed_archive(self, self.store, batch_studies, rank, world_size, progress)
        finally:
            self._indexes.clear()

    # ------------------------------------------------------------------- indexes
    def index(self, kind: str) -> VectorIndex | FaissIndex | PgVectorIndex:
        """The vector index of `kind` ("image" or "report") for this model, loaded or rebuilt from the store."""
        if self.index_backend == "pgvector":  # the store itself: nothing to load, never stale
            return PgVectorIndex(self.store, kind, self.model_id, self._require_checkpoint().config.model.embed_dim)
        if kind not in self._indexes:
            self._indexes[kind] = self._load_or_rebuild(kind)
        return self._indexes[kind]

    def _index_folder(self, kind: str) -> Path | None:
        if self.index_dir is None:
            return None
        return self.index_dir / f"{kind}-{re.sub(r'[^A-Za-z0-9_.-]', '_', self.model_id)}"

    def _load_or_rebuild(self, kind: str) -> VectorIndex | FaissIndex:
        folder = self._index_folder(kind)
        if folder is not None and (folder / _STAMP_FILE).is_file():
            stamp = self.store.embedding_stamp(kind, self.model_id)
            try:
                if (folder / _STAMP_FILE).read_text(encoding="utf-8") == stamp:
                    index = VectorIndex.load(folder)
                    if index.model_id == self.model_id:
                        return with_backend(index, self.index_backend)
            except (ValueError, FileNotFoundError) as err:
                log.warning("rebuilding index %s: %s", folder, err)
        return self.rebuild_index(kind)

    def rebuild_index(self, kind: str) -> VectorIndex | FaissIndex:
        """Rebuild one index from the store's embeddings and persist it (the store is the truth)."""
        stamp = self.store.embedding_stamp(kind, self.model_id)
        matrix = self.store.embedding_matrix(kind, self.model_id)
        dim = self._require_checkpoint().config.model.embed_dim
        if matrix.keys:
            index = VectorIndex.build(list(matrix.keys), matrix.vectors, list(matrix.meta), self.model_id)
        else:
            index = VectorIndex(dim, self.model_id)
        folder = self._index_folder(kind)
        if folder is not None:
            index.save(folder)
            # Written last: an index whose stamp is missing or stale is rebuilt, never trusted.
            (folder / _STAMP_FILE).write_text(stamp, encoding="utf-8")
        self._indexes[kind] = with_backend(index, self.index_backend)
        return self._indexes[kind]

    # ------------------------------------------------------------------- queries
    def similar_cases(
        self, images: list[DicomImage], k: int = 5, filters: Mapping[str, str] | None = None
    ) -> list[SimilarCase]:
        """Past studies whose reports best match the query study (image → reports), best first.

        The query's own study is left out, so a stored study never retrieves itself.
        """
        return self._similar_cases(self.study_embedding(images), images, k, filters)

    def _similar_cases(
        self, query: np.ndarray, images: list[DicomImage], k: int, filters: Mapping[str, str] | None
    ) -> list[SimilarCase]:
        own = self._own_studies(images)
        hits = self.index(REPORT).search(query, k=k, filters=_clean_filters(filters), exclude=own)
        return [self._similar_case(hit) for hit in hits]

    def _own_studies(self, images: list[DicomImage]) -> set[str]:
        """The query's studies as the store may know them: their UIDs, and their de-identified UIDs."""
        own = {image.meta.study_uid for image in images}
        if self.deid is not None:  # a query read from the original files of a stored (de-identified) study
            own |= {pseudonymous_uid(uid, self.deid) for uid in own}
        return own

    def _similar_case(self, hit: Hit) -> SimilarCase:
        report = self.store.latest_report(hit.key)
        return SimilarCase(
            study_uid=hit.key,
            score=hit.score,
            report=report.text if report else "",
            modality=hit.meta.get("modality", ""),
            body_part=hit.meta.get("body_part", ""),
        )

    def similar_images(
        self, images: list[DicomImage], k: int = 5, filters: Mapping[str, str] | None = None
    ) -> list[ImageMatch]:
        """Stored images most like the query study (image → images), one per study, best first."""
        query = self.study_embedding(images)
        own = self._own_studies(images)
        hits = self.index(IMAGE).search(query, k=k + len(own), filters=_clean_filters(filters), group_by="study_uid")
        return [_image_match(hit) for hit in hits if hit.meta.get("study_uid") not in own][:k]

    def search_text(self, query: str, k: int = 5, filters: Mapping[str, str] | None = None) -> list[ImageMatch]:
        """Stored images matching a phrase such as "pleural effusion" (text → images), one per study."""
        if not query.strip():
            raise ValueError("text search: the query is empty")
        vector = self.embed_texts([query])[0]
        hits = self.index(IMAGE).search(vector, k=k, filters=_clean_filters(filters), group_by="study_uid")
        return [_image_match(hit) for hit in hits]

    # ---------------------------------------------------------- draft and sign
    def draft(self, images: list[DicomImage], filters: Mapping[str, str] | None = None) -> Draft:
        """Draft findings for the query study from its most similar cases' reports (always unverified)."""
        query = self.study_embedding(images)  # one image forward pass serves retrieval and sentence scoring
        cases = self._similar_cases(query, images, self.draft_config.top_k_cases, filters)
        sources = [SourceCase(case.study_uid, case.score, case.report) for case in cases if case.report]
        return draft_findings(query, sources, self.embed_texts, self.draft_config)

    def sign(self, study_uid: str, text: str, signer: str) -> Any:
        """Sign the final report of a stored study; the signed case joins the retrieval pool at once."""
        report = self.store.sign_report(study_uid, text, list(split_sections(text).sections), signer)
        if self.checkpoint is not None:
            vector = self.embed_texts([report_text_for_training(text) or text])[0]
            self.store.add_embeddings([EmbeddingRecord(REPORT, study_uid, self.model_id, vector)])
            self._indexes.pop(REPORT, None)
        return report


def sqlite_file(url: str) -> Path | None:
    """The database file of a `sqlite:///path` URL; None for in-memory SQLite or another database."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and url[len(prefix):] not in ("", ":memory:"):
        return Path(url[len(prefix):])
    return None


def default_files_dir(url: str) -> Path | None:
    """`sqlite:///x/cases.db` → `x/cases.db.files`; None for other databases."""
    file = sqlite_file(url)
    return file.with_name(file.name + ".files") if file else None


def _default_index_dir(url: str) -> Path | None:
    """`sqlite:///x/cases.db` → `x/cases.db.index`; other databases keep indexes in memory."""
    file = sqlite_file(url)
    return file.with_name(file.name + ".index") if file else None


def _clean_filters(filters: Mapping[str, str] | None) -> dict[str, str] | None:
    cleaned = {key: value for key, value in (filters or {}).items() if value}
    return cleaned or None


def _image_match(hit: Hit) -> ImageMatch:
    return ImageMatch(
        sop_instance_uid=hit.key,
        study_uid=hit.meta.get("study_uid", ""),
        score=hit.score,
        modality=hit.meta.get("modality", ""),
        body_part=hit.meta.get("body_part", ""),
    )


def _study_chunks(images: list[DicomImage], max_images: int) -> Iterator[list[DicomImage]]:
    """Images in groups of whole studies, each of about `max_images` (a larger study is one group)."""
    studies: dict[str, list[DicomImage]] = {}
    for image in images:
        studies.setdefault(image.meta.study_uid, []).append(image)
    chunk: list[DicomImage] = []
    for study in studies.values():
        if chunk and len(chunk) + len(study) > max_images:
            yield chunk
            chunk = []
        chunk.extend(study)
    if chunk:
        yield chunk


def _flag_burned_in(record: InstanceRecord, flagged: set[str]) -> InstanceRecord:
    if record.sop_instance_uid not in flagged:
        return record
    return dataclasses.replace(record, metadata={**record.metadata, "burned_in_annotation": True})


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
    if ".zip:" in path:
        return None
    candidate = Path(path).parent / "report.txt"
    return candidate.read_text(encoding="utf-8") if candidate.is_file() else None
