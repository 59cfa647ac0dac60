"""The anatomy prior in the engine: image queries' hits re-ranked by modality and body region, as `medcm eval` ranks.

The prior itself (the bonus, which candidates get it) is `medcm.index.anatomy`; `medcm.eval.anatomy` is
what evaluation knows of each image. Here the same is read from what the engine has. The query: its
images' modalities and header regions (Modality, BodyPartExamined, SeriesDescription of an upload's
files, or of a stored study's instances), a region the header does not state being the region head's
prediction on the query vector. A candidate: its hit's modality, and the region of its stored image
vectors: per image the header's (the stored BodyPartExamined) where it maps onto the head's classes,
else the head's prediction; per study the mean of its images'. Those distributions are computed once
per state of the store (its image embedding stamp: an ingest changes it) and cached.

Scores stay the cosine (the draft weighs its sources by it); only the order changes. An inactive
prior (the default of checkpoints written before it existed) changes nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from medcm.checkpoint import Checkpoint
from medcm.config import AnatomyPriorConfig
from medcm.dicom.read import DicomImage
from medcm.index.anatomy import anatomy_bonus, header_region, modality_set, prior_scores, region_probabilities
from medcm.index.query import Hit

__all__ = ["AnatomyRanking", "AnatomyStoreLike", "QueryAnatomy", "QuerySource", "RegionHead", "StoredRegions",
           "hit_regions", "query_anatomy", "rerank", "source_tags", "stored_regions"]

RegionHead = tuple[tuple[str, ...], np.ndarray, np.ndarray]  # (classes, weight [K, D], bias [K])
QuerySource = Sequence[DicomImage] | str  # an upload's images, or a stored study's UID

_CHUNK = 65536  # stored vectors classified per block (the head works in float64)


class AnatomyStoreLike(Protocol):
    """The part of `db.store.CaseStore` the prior reads."""

    def get_study(self, study_uid: str) -> Any: ...
    def embedding_matrix(self, kind: str, model_id: str) -> Any: ...
    def embedding_stamp(self, kind: str, model_id: str) -> str: ...


@dataclass(frozen=True)
class QueryAnatomy:
    """A query study's modalities, and (with a region head) its region distribution `[K]`."""

    modalities: frozenset[str]
    regions: np.ndarray | None


@dataclass(frozen=True)
class StoredRegions:
    """Region distributions of the stored image vectors: per instance and per study, `[N, K]` each."""

    instances: dict[str, int]  # SOPInstanceUID → row of instance_regions
    instance_regions: np.ndarray
    studies: dict[str, int]  # StudyInstanceUID → row of study_regions
    study_regions: np.ndarray


def query_anatomy(tags: Sequence[tuple[str, str, str]], query: np.ndarray, head: RegionHead | None) -> QueryAnatomy:
    """The anatomy of a query study from its images' header tags and its query vector.

    Args:
        tags: per image (modality, body part, series description); empty strings when unknown.
        query: the study's query vector `[D]`; its region head prediction stands in for each image
            whose header states no region (and for a study without tags).
        head: the checkpoint's region head, or None (no region).
    """
    modalities = frozenset().union(*(modality_set(modality) for modality, _, _ in tags))
    if head is None:
        return QueryAnatomy(modalities, None)
    classes, weight, bias = head
    predicted = region_probabilities(np.asarray(query, np.float32)[None], weight, bias)[0]
    rows = [header_region(body_part, description, classes) for _, body_part, description in tags]
    regions = np.mean([predicted if row is None else row for row in rows] or [predicted], axis=0)
    return QueryAnatomy(modalities, regions.astype(np.float32))


def source_tags(source: QuerySource, store: AnatomyStoreLike) -> list[tuple[str, str, str]]:
    """(modality, body part, series description) per image of an upload, or per stored instance of a study UID.

    Stored copies are usually de-identified, so their series description is mostly gone.
    """
    if isinstance(source, str):
        return [(view.modality or "", view.body_part or "", str((view.metadata or {}).get("series_description") or ""))
                for view in store.get_study(source).instances]
    return [(image.meta.modality, image.meta.body_part, image.meta.series_description) for image in source]


def stored_regions(matrix: Any, head: RegionHead) -> StoredRegions:
    """Region distributions of every stored image vector, and per study their mean.

    Args:
        matrix: `CaseStore.embedding_matrix("image", model_id)` (`keys` SOPInstanceUIDs, `vectors` `[N, D]`,
            `meta` with study_uid and body_part).
        head: the region head.
    """
    classes, weight, bias = head
    k = len(classes)
    n = len(matrix.keys)
    regions = np.zeros((n, k), np.float32)
    for start in range(0, n, _CHUNK):
        regions[start : start + _CHUNK] = region_probabilities(matrix.vectors[start : start + _CHUNK], weight, bias)
    stated: dict[str, np.ndarray | None] = {}  # few distinct body parts: map each once
    for row, meta in enumerate(matrix.meta):
        body_part = str(meta.get("body_part") or "")
        if body_part not in stated:
            stated[body_part] = header_region(body_part, "", classes)
        if stated[body_part] is not None:
            regions[row] = stated[body_part]
    study_of = [str(meta.get("study_uid") or "") for meta in matrix.meta]
    studies = {uid: i for i, uid in enumerate(dict.fromkeys(study_of))}
    inverse = np.fromiter((studies[uid] for uid in study_of), np.int64, n)
    sums = np.zeros((len(studies), k), np.float64)
    np.add.at(sums, inverse, regions)
    means = (sums / np.maximum(np.bincount(inverse, minlength=len(studies)), 1)[:, None]).astype(np.float32)
    return StoredRegions({key: i for i, key in enumerate(matrix.keys)}, regions, studies, means)


def hit_regions(hits: Sequence[Hit], stored: StoredRegions, per_image: bool, classes: Sequence[str]) -> np.ndarray:
    """`[N, K]`: each hit's stored region (its image's, or its study's); for a hit without stored vectors
    the region its meta body part states, else uniform (as `medcm.eval.anatomy.case_anatomy`)."""
    rows, table = (stored.instances, stored.instance_regions) if per_image else (stored.studies, stored.study_regions)
    uniform = np.full(len(classes), 1.0 / len(classes), np.float32)
    out = []
    for hit in hits:
        row = rows.get(hit.key)
        if row is not None:
            out.append(table[row])
            continue
        stated = header_region(str(hit.meta.get("body_part") or ""), "", classes)
        out.append(uniform if stated is None else stated)
    return np.stack(out) if out else np.zeros((0, len(classes)), np.float32)


def rerank(hits: Sequence[Hit], query: QueryAnatomy, candidate_regions: np.ndarray | None,
           prior: AnatomyPriorConfig) -> list[Hit]:
    """`hits` (best cosine first) in the order of cosine + anatomy bonus (`medcm.index.anatomy.prior_scores`);
    ties keep the index's order. The hits themselves, scores included, are unchanged."""
    if not hits:
        return []
    cosine = np.array([[hit.score for hit in hits]], np.float32)
    modalities = [modality_set(str(hit.meta.get("modality") or "")) for hit in hits]
    query_regions = None if query.regions is None else query.regions[None]
    bonus = anatomy_bonus([query.modalities], modalities, query_regions, candidate_regions, prior)
    order = np.argsort(-prior_scores(cosine, bonus, prior.candidates)[0], kind="stable")
    return [hits[i] for i in order]


def _head_key(head: RegionHead) -> str:
    """A digest of the head's classes and weights: cached regions belong to one head."""
    classes, weight, bias = head
    digest = hashlib.sha1("\x1f".join(classes).encode())
    digest.update(np.ascontiguousarray(weight, np.float32).tobytes())
    digest.update(np.ascontiguousarray(bias, np.float32).tobytes())
    return digest.hexdigest()


class AnatomyRanking:
    """The engine's anatomy prior: which settings apply, and the stored regions it ranks with (cached).

    Args:
        store: the case store.
        prior: fixed settings; None uses each checkpoint's `config.anatomy_prior`.
    """

    def __init__(self, store: AnatomyStoreLike, prior: AnatomyPriorConfig | None = None) -> None:
        self.store = store
        self.fixed = prior
        self._cached: tuple[tuple[str, str, str], StoredRegions] | None = None

    def prior(self, checkpoint: Checkpoint | None) -> AnatomyPriorConfig:
        """The settings in force: the fixed ones, else the checkpoint's (off without a checkpoint)."""
        if self.fixed is not None:
            return self.fixed
        return checkpoint.config.anatomy_prior if checkpoint is not None else AnatomyPriorConfig()

    def pool_size(self, k: int, checkpoint: Checkpoint | None) -> int:
        """How many hits to ask the index for so the prior can re-rank them: k, or `candidates` if more."""
        prior = self.prior(checkpoint)
        return max(k, prior.candidates) if prior.active else k

    def regions(self, model_id: str, head: RegionHead) -> StoredRegions:
        """The stored regions of `model_id`'s image vectors, recomputed only after the store's image
        embeddings changed (`embedding_stamp`) or for another head."""
        key = (model_id, self.store.embedding_stamp("image", model_id), _head_key(head))
        cached = self._cached
        if cached is None or cached[0] != key:
            cached = (key, stored_regions(self.store.embedding_matrix("image", model_id), head))
            self._cached = cached
        return cached[1]

    def rank(self, hits: list[Hit], checkpoint: Checkpoint, query: np.ndarray, source: QuerySource,
             per_image: bool) -> list[Hit]:
        """`hits` of an image query re-ranked by the prior; unchanged (same list) when it is inactive.

        Args:
            hits: the index's hits, best cosine first.
            checkpoint: the model (its region head, its model id, its prior unless one is fixed).
            query: the query vector `[D]`.
            source: the query's images, or the UID of the stored study it is.
            per_image: hits are image rows (keyed by SOPInstanceUID), not studies.
        """
        prior = self.prior(checkpoint)
        if not prior.active or not hits:
            return hits
        head = checkpoint.model.region_head() if prior.region_weight else None
        anatomy = query_anatomy(source_tags(source, self.store), query, head)
        regions = None
        if head is not None:
            regions = hit_regions(hits, self.regions(checkpoint.model_id, head), per_image, head[0])
        return rerank(hits, anatomy, regions, prior)
