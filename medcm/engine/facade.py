"""The facade the UI and the command line share: one checkpoint, one case store, its vector indexes.

The engine embeds images and reports with the checkpoint's model (a CT/MR/PT series as one volume
when the checkpoint has a volume encoder, see `medcm.engine.embed`), stores cases (the pipeline in
`medcm.engine.ingest`) and answers the three questions the assistant asks of its memory: which past
cases are similar (image → reports), which past images look alike (image → images), and which images
match a phrase (text → images), searching the indexes of `medcm.engine.indexes`. It also drafts
findings from the similar cases and signs reports; a signed report's DICOM SR is queued in the outbox and
sent in the background (`medcm.engine.sender`), never while the clinician waits.

A stored study is queried by its UID (`similar_cases_for_study`, `draft_for_study`) from the image
vectors ingest stored for it (`medcm.engine.stored`), so an upload is decoded and embedded once.
Image queries rank their candidates with the checkpoint's anatomy prior (`medcm.engine.anatomy`).

The library does not import the case store: the engine takes any object with the store's methods
(`CaseStoreLike`); the command line and the UI pass `db.store.CaseStore`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medcm.checkpoint import Checkpoint, load_checkpoint
from medcm.config import AbstentionConfig, AnatomyPriorConfig, QuestionConfig
from medcm.dicom.deid import DeidConfig, pseudonymous_uid
from medcm.dicom.read import DicomImage
import medcm.engine.embed as visual
from medcm.engine.abstention import Abstainer, abstained_draft
from medcm.engine.anatomy import AnatomyRanking, QuerySource
from medcm.engine.embed_archive import EmbedSummary, embed_archive
from medcm.engine.grounding import SentenceHeatmap, study_heatmap
from medcm.engine.indexes import IndexCache, check_index_backend
from medcm.engine.ingest import IMAGE, REPORT, IngestResult, ingest_paths
from medcm.engine.outbox import Outbox
from medcm.engine.priors import Prior, study_priors
from medcm.engine.question import QuestionBlender, set_question
from medcm.engine.records import EmbeddingRecord
from medcm.engine.store_protocol import CaseStoreLike
from medcm.engine.reports import save_machine_draft, scrubbed_report
from medcm.engine.results import ImageMatch, SimilarCase, clean_filters, image_match, study_uids_of
from medcm.engine.sender import OutboxSender, SendStatus, queue_signed, send_status
from medcm.engine.stored import read_stored_study, stored_study_vector
from medcm.index.exact import Hit, VectorIndex
from medcm.index.faiss import FaissIndex
from medcm.index.pgvector import PgVectorIndex
from medcm.paths import default_files_dir, default_index_dir
from medcm.report.draft import Draft, DraftConfig, SourceCase, draft_findings
from medcm.report.draft_types import Abstention
from medcm.report.text import report_text_for_training, split_sections
from medcm.runtime import select_device

__all__ = ["INGEST_CHUNK_IMAGES", "MAX_QUERY_CHARS", "CaseStoreLike", "Engine", "ImageMatch", "IngestResult", "Prior",
           "SendStatus", "SimilarCase"]

log = logging.getLogger(__name__)

_BATCH = 32
INGEST_CHUNK_IMAGES = 64  # images per store transaction during ingest (whole studies)
MAX_QUERY_CHARS = 1000  # longest text search query


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
        anatomy_prior: how image queries rank candidates (`medcm.engine.anatomy`); None: the checkpoint's
            `config.anatomy_prior`; `AnatomyPriorConfig()` turns it off (cosine order).
        abstention: when drafts abstain, and how similar cases are scored (`medcm.engine.abstention`).
        outbox: where signed reports are queued as DICOM SR (`medcm.engine.outbox`); None: not sent. They are
            sent by the thread `start_sending` starts (`medcm.engine.sender`).
        question: how much a stored study's clinical question moves its report retrieval and draft
            (`medcm.engine.question`).
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
        anatomy_prior: AnatomyPriorConfig | None = None,
        abstention: AbstentionConfig = AbstentionConfig(),
        outbox: Outbox | None = None,
        question: QuestionConfig = QuestionConfig(),
    ) -> None:
        check_index_backend(index_backend, store)  # an unknown name or a missing FAISS fails here
        self.index_backend = index_backend
        self.store = store
        self.deid = deid
        self.files_dir = Path(files_dir) if files_dir else default_files_dir(store.url)
        self.device = select_device(device)
        self.checkpoint: Checkpoint | None = load_checkpoint(checkpoint, self.device) if checkpoint else None
        self.index_dir = Path(index_dir) if index_dir else default_index_dir(store.url)
        self.draft_config = draft_config
        self._indexes = IndexCache(store, self.index_dir, index_backend)  # not used by pgvector
        self._anatomy = AnatomyRanking(store, anatomy_prior)
        self._abstainer = Abstainer(store, abstention)
        self.outbox = outbox  # signed reports are queued in it (`medcm.engine.outbox`); None: not sent
        self.sender: OutboxSender | None = None  # the thread sending the outbox (`start_sending`)
        self._question = QuestionBlender(store, question, self.embed_texts)

    @property
    def anatomy_prior(self) -> AnatomyPriorConfig:
        """The anatomy prior image queries rank with (inactive: cosine order)."""
        return self._anatomy.prior(self.checkpoint)

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
        return visual.embed_images_2d(self._require_checkpoint(), images, self.device, _BATCH)

    def embed_visual(self, images: list[DicomImage], warnings: list[str] | None = None) -> list[visual.VisualVector]:
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
        return visual.study_vector(self.embed_visual(images))

    def study_query(self, study_uid: str) -> np.ndarray:
        """The query vector `[D]` of a stored study, equal to `study_embedding` of its images.

        Built from the image vectors ingest stored for this model, so nothing is decoded or embedded
        again; when they do not cover the study (stored without this checkpoint), its stored files
        are read and embedded instead (unreadable ones skipped with a warning).

        Raises:
            StoreError: unknown study.
            ValueError: no checkpoint, or none of the study's images can be read.
        """
        checkpoint = self._require_checkpoint()
        instances = self.store.get_study(study_uid).instances
        query = stored_study_vector(self.store, instances, self.model_id, visual.has_volume_encoder(checkpoint))
        if query is not None:
            return query
        return self.study_embedding(read_stored_study(study_uid, instances))

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
        Unreadable or refused files are returned as errors and written nowhere. See
        `medcm.engine.ingest.ingest_paths`.

        Args:
            paths: files, folders or zips.
            reports: study UID (as in the files) → report text, e.g. from a manifest.
            default_report: report for studies not in `reports` (e.g. `--report FILE` for one study).
                Without either, a `report.txt` in the folder of a study's first file is used.
            user: recorded in the audit trail.
        """
        return ingest_paths(self.store, paths, self if self.checkpoint is not None else None, INGEST_CHUNK_IMAGES,
                            reports, default_report, user, self.deid, self.files_dir, on_stored=self._indexes.clear)

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
        index = self._indexes.get(kind, self.model_id)
        return index if index is not None else self.rebuild_index(kind)

    def _index_folder(self, kind: str) -> Path | None:
        return self._indexes.folder_of(kind, self.model_id)

    def rebuild_index(self, kind: str) -> VectorIndex | FaissIndex:
        """Rebuild one index from the store's embeddings and persist it (the store is the truth)."""
        return self._indexes.rebuild(kind, self.model_id, self._require_checkpoint().config.model.embed_dim)

    # ------------------------------------------------------------------- queries
    def similar_cases(
        self, images: list[DicomImage], k: int = 5, filters: Mapping[str, str] | None = None
    ) -> list[SimilarCase]:
        """Past studies whose reports best match the query study (image → reports), best first.

        The query's own study is left out, so a stored study never retrieves itself.
        """
        return self._similar_cases(self.study_embedding(images), study_uids_of(images), k, filters, images)

    def similar_cases_for_study(self, study_uid: str, k: int = 5,
                                filters: Mapping[str, str] | None = None) -> list[SimilarCase]:
        """`similar_cases` of a stored study, queried with the vectors ingest stored (`study_query`) blended with
        its clinical question (`set_clinical_question`)."""
        query = self.study_query(study_uid)
        search = self._question.retrieval_query(study_uid, query)
        return self._similar_cases(query, {study_uid}, k, filters, study_uid, search)

    def _similar_cases(self, query: np.ndarray, study_uids: set[str], k: int, filters: Mapping[str, str] | None,
                       source: QuerySource, search: np.ndarray | None = None) -> list[SimilarCase]:
        return self._assessed_cases(query, study_uids, k, filters, source, search)[0]

    def _assessed_cases(self, query: np.ndarray, study_uids: set[str], k: int, filters: Mapping[str, str] | None,
                        source: QuerySource, search: np.ndarray | None = None) -> tuple[list[SimilarCase], Abstention]:
        """The similar cases with their calibrated scores, and whether a draft abstains (`medcm.engine.abstention`).

        `search` (default: `query`) finds the reports, e.g. the image query blended with the study's question;
        the anatomy prior and abstention read the image query alone.
        """
        checkpoint, pool = self._require_checkpoint(), self._anatomy.pool_size(k, self.checkpoint)
        search = query if search is None else search
        hits = self.index(REPORT).search(search, k=pool, filters=clean_filters(filters), exclude=self._own(study_uids))
        hits = self._anatomy.rank(hits, checkpoint, query, source, per_image=False)[:k]
        return self._abstainer.check(self.index(REPORT), query, self._own(study_uids), source, self.model_id,
                                     [self._similar_case(hit) for hit in hits], checkpoint.model.region_head())

    def _own(self, study_uids: set[str]) -> set[str]:
        """The query's studies as the store may know them: their UIDs, and their de-identified UIDs."""
        if self.deid is None:
            return set(study_uids)
        # a query read from the original files of a stored (de-identified) study
        return study_uids | {pseudonymous_uid(uid, self.deid) for uid in study_uids}

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
        own, checkpoint = self._own(study_uids_of(images)), self._require_checkpoint()
        hits = self.index(IMAGE).search(query, k=self._anatomy.pool_size(k, checkpoint) + len(own),
                                        filters=clean_filters(filters), group_by="study_uid")
        hits = [hit for hit in hits if hit.meta.get("study_uid") not in own]
        return [image_match(hit) for hit in self._anatomy.rank(hits, checkpoint, query, images, per_image=True)[:k]]

    def search_text(self, query: str, k: int = 5, filters: Mapping[str, str] | None = None) -> list[ImageMatch]:
        """Stored images matching a phrase such as "pleural effusion" (text → images), one per study."""
        if not query.strip():
            raise ValueError("text search: the query is empty")
        if len(query) > MAX_QUERY_CHARS:  # a 10 MB query cost 15 s and 836 MB (issue 18)
            raise ValueError(f"text search: the query is {len(query)} characters; expected at most {MAX_QUERY_CHARS}")
        vector = self.embed_texts([query])[0]
        hits = self.index(IMAGE).search(vector, k=k, filters=clean_filters(filters), group_by="study_uid")
        return [image_match(hit) for hit in hits]

    def sentence_heatmap(self, study_uid: str, sentence: str) -> SentenceHeatmap:
        """Where in a stored study's image `sentence` is seen (`medcm.engine.grounding.study_heatmap`)."""
        return study_heatmap(self._require_checkpoint(), self.store, study_uid, sentence, self.device)

    # ---------------------------------------------------------- draft and sign
    def draft(self, images: list[DicomImage], filters: Mapping[str, str] | None = None) -> Draft:
        """Draft findings for the query study from its most similar cases' reports (always unverified)."""
        query = self.study_embedding(images)  # one image forward pass serves retrieval and sentence scoring
        return self._draft(query, study_uids_of(images), filters, images)

    def draft_for_study(self, study_uid: str, filters: Mapping[str, str] | None = None, save: bool = False,
                        user: str = "system") -> Draft:
        """`draft` of a stored study from the vectors ingest stored (`study_query`); optionally kept.

        Args:
            study_uid: a stored study.
            filters: restrict the similar cases (e.g. {"modality": "DX"}).
            save: keep the draft in the store (`medcm.engine.reports.save_machine_draft`: only over
                nothing or an earlier machine draft, never over a person's edit or a signed report).
            user: who asked for the draft, recorded in the audit trail when it is saved.

        Raises:
            StoreError: unknown study.
        """
        query = self.study_query(study_uid)
        draft = self._draft(query, {study_uid}, filters, study_uid, self._question.retrieval_query(study_uid, query))
        if save:
            save_machine_draft(self.store, study_uid, draft.text(), user)
        return draft

    def _draft(self, query: np.ndarray, study_uids: set[str], filters: Mapping[str, str] | None,
               source: QuerySource, search: np.ndarray | None = None) -> Draft:
        """The draft: cases found and sentences scored by `search` (default: `query`); the finding head and the
        image scores that decide sides by the image query."""
        search = query if search is None else search
        cases, abstention = self._assessed_cases(query, study_uids, self.draft_config.top_k_cases, filters, source,
                                                 search)
        if abstention.abstained:  # the archive holds nothing like the study: no sentence to copy
            return abstained_draft([case.study_uid for case in cases], abstention)
        sources = self._image_scored([SourceCase(case.study_uid, case.score, case.report)
                                      for case in cases if case.report], query)
        seen = self._require_checkpoint().model.image_findings(query)
        return replace(draft_findings(search, sources, self.embed_texts, self.draft_config, seen), abstention=abstention)

    def _image_scored(self, sources: list[SourceCase], query: np.ndarray) -> list[SourceCase]:
        """Each source with its nearest stored image's cosine to the query: image-to-image neighbours
        decide a finding's side in the draft (`medcm.report.draft`)."""
        if not sources:
            return sources
        hits = self.index(IMAGE).search(query, k=len(sources), filters={"study_uid": [s.case_id for s in sources]},
                                        group_by="study_uid")
        nearest = {hit.meta.get("study_uid"): hit.score for hit in hits}
        return [replace(source, image_score=nearest.get(source.case_id)) for source in sources]

    def set_clinical_question(self, study_uid: str, text: str | None, user: str) -> Any:
        """Store a study's clinical question (indication / history), scrubbed as a person's report is; "" or
        None clears it. Its retrieval and draft blend it in from then on (`medcm.engine.question`).

        Returns:
            The study as stored (`db.store.StudyView`; `clinical_question` holds the scrubbed text).

        Raises:
            StoreError: unknown study, or over 2,000 characters or with control characters (nothing written).
        """
        return set_question(self.store, study_uid, text, user, self.deid)

    def save_edit(self, study_uid: str, text: str, author: str) -> Any:
        """Save a person's edited report of a stored study as a draft (scrubbed: `scrubbed_report`)."""
        text = scrubbed_report(self.store, study_uid, text, self.deid)
        return self.store.save_draft(study_uid, text, list(split_sections(text).sections), author=author, source="edit")

    def sign(self, study_uid: str, text: str, signer: str) -> Any:
        """Sign the final report of a stored study (scrubbed: `scrubbed_report`); the signed case joins the
        retrieval pool at once. With an outbox, its SR is queued on disk and sent in the background
        (`start_sending`): signing never waits for the network."""
        text = scrubbed_report(self.store, study_uid, text, self.deid)
        embedding = None  # embedded first: the store writes the signature and its vector in one transaction
        if self.checkpoint is not None:
            vector = self.embed_texts([report_text_for_training(text) or text])[0]
            embedding = EmbeddingRecord(REPORT, study_uid, self.model_id, vector)
        report = self.store.sign_report(study_uid, text, list(split_sections(text).sections), signer, embedding)
        if embedding is not None:
            self._indexes.drop(REPORT)
        if self.outbox is not None and queue_signed(self.store, self.outbox, study_uid, report, signer):
            if self.sender is not None:  # queued on disk: sent in the background, never while the signer waits
                self.sender.wake()
        return report

    # ------------------------------------------------------- sending, priors
    def start_sending(self) -> OutboxSender | None:
        """Start the background thread that sends the outbox (`medcm.engine.sender.OutboxSender`); None
        without an outbox. Stop it with `stop_sending`."""
        if self.outbox is not None and self.sender is None:
            self.sender = OutboxSender(self.outbox, self.store).start()
        return self.sender

    def stop_sending(self, timeout: float | None = None) -> None:
        """Stop the sending thread (an attempt in progress finishes); what is pending stays queued."""
        if self.sender is not None:
            self.sender.stop(timeout)
            self.sender = None

    def send_status(self, study_uid: str) -> list[SendStatus]:
        """Where the study's signed reports stand with each destination ("pending", "failed" with the last
        error and next try, "sent"), newest version first; empty without an outbox or before signing."""
        return send_status(self.outbox, study_uid)

    def priors(self, study_uid: str) -> list[Prior]:
        """The same patient's other stored studies, newest first (`medcm.engine.priors.study_priors`).

        Raises:
            StoreError: unknown study.
        """
        return study_priors(self.store, study_uid)
