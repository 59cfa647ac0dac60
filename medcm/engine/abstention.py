"""Abstention: before drafting, decide whether the archive holds anything like the study, and say why not.

Any of three rules abstains:
- the header: the study's DICOM Modality is one no stored image has (CR, DX and DR count as one kind), or,
  for a modality the archive holds, the body region the header names (BodyPartExamined, else the
  series description, else the study description, mapped by `medcm.index.anatomy.coarse_regions`) is
  one that none of the archive's images of that modality state. The region rule only speaks when every
  stored image of those modalities states a region: an archive that does not say what it holds cannot
  be said to lack something. De-identified copies keep BodyPartExamined but lose the descriptions.
- the region head (a model trained with region labels, as on MedPix): the expected number of archive
  studies of the query's region (`medcm.index.anatomy.region_support`) is below the
  `region_percentile`-th percentile of the archive's own studies' (leave-one-study-out). It speaks where
  no header does (images imported without one) and catches what the similarity misses: on MedPix dev
  it raises leave-one-region-out abstention from 42 to 49 of 67 (see `AbstentionConfig`).
- the similarity: the query's mean cosine to its k most similar stored reports (the cases a draft
  reads) is below the `below_percentile`-th percentile of the same similarity of the archive's own
  studies, leave-one-study-out (`medcm.index.calibration`). By construction about that share of
  studies like the archive's abstain. Image→report similarity (k = 5) separates out-of-distribution
  queries better than image→image: on MedPix dev at the 5th percentile, 41 of 67 leave-one-region-out
  queries abstain against 18 of 67 for the nearest image (4 and 7 of 67 in-distribution); and it is
  the scale of the similar cases' scores.

An abstained draft has no sentences; its similar cases are still listed, marked weak. Every similar
case carries its calibrated score: the percentile of its cosine among the archive studies' own
nearest-case cosines. The archive's calibration and header summary are computed once per state of the
store's embeddings (their stamps) and cached, as `medcm.engine.anatomy` caches regions.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np

from medcm.config import AbstentionConfig
from medcm.dicom.read import DicomImage
from medcm.index.anatomy import coarse_regions, modality_set, own_region_support, region_probabilities, region_support
from medcm.index.calibration import Calibration, calibrate, study_means, unit_rows
from medcm.report.draft_types import Abstention, Draft

__all__ = ["Abstainer", "ArchiveHeaders", "ArchiveProfile", "ArchiveRegions", "QueryHeader", "abstained_draft",
           "archive_headers", "archive_regions", "header_reason", "modality_kind", "query_headers", "region_reason",
           "similarity_abstention", "stated_regions", "usable_calibration"]

QuerySource = Sequence[DicomImage] | str  # an upload's images, or a stored study's UID
RegionHead = tuple[Sequence[str], np.ndarray, np.ndarray]  # (classes, weight [K, D], bias [K]): `region_head()`
Case = TypeVar("Case")  # a dataclass with `score`, `percentile` and `weak` (`medcm.engine.facade.SimilarCase`)

_RADIOGRAPHY = {"CR": "DX", "DR": "DX"}  # computed / digital radiography: one kind of image


class AbstentionStoreLike(Protocol):
    """The part of `db.store.CaseStore` abstention reads."""

    def get_study(self, study_uid: str) -> Any: ...
    def embedding_matrix(self, kind: str, model_id: str) -> Any: ...
    def embedding_stamp(self, kind: str, model_id: str) -> str: ...


class SearchLike(Protocol):
    """A vector index (`VectorIndex`, `FaissIndex`, `PgVectorIndex`): its `search`."""

    def search(self, query: np.ndarray, k: int = ..., filters: Any = ..., exclude: Collection[str] = ...,
               group_by: str | None = ...) -> list: ...


StudyHeader = Mapping[str, frozenset[str] | None]  # modality kind → regions its images name (None: some name none)


@dataclass(frozen=True)
class ArchiveHeaders:
    """What the archive's stored images' headers say it holds, per study and counted.

    Attributes:
        studies: per study, per modality kind of its images, the coarse regions their BodyPartExamined
            name; None when some of its images of that kind name none.
        kind_studies: studies per modality kind.
        unknown_studies: per modality kind, studies some of whose images of that kind name no region.
        region_studies: studies per (modality kind, region).
    """

    studies: Mapping[str, StudyHeader]
    kind_studies: Mapping[str, int]
    unknown_studies: Mapping[str, int]
    region_studies: Mapping[tuple[str, str], int]

    def without(self, own: Collection[str]) -> tuple[Counter[str], Counter[str], Counter[tuple[str, str]]]:
        """The three counts with the studies `own` (the query's own, when stored) taken out."""
        kinds, unknown = Counter(self.kind_studies), Counter(self.unknown_studies)
        regions = Counter(self.region_studies)
        for uid in own:
            for kind, named in self.studies.get(uid, {}).items():
                kinds[kind] -= 1
                if named is None:
                    unknown[kind] -= 1
                else:
                    regions.subtract((kind, region) for region in named)
        return +kinds, +unknown, +regions  # unary plus drops the counts that fell to zero


@dataclass(frozen=True)
class ArchiveRegions:
    """The region head's view of the archive: per study, its region distribution, and the threshold.

    Attributes:
        classes: the head's region classes.
        studies: `[S]` study UIDs.
        probabilities: `[S, K]` each study's region distribution (of its normalised mean image vector).
        threshold: the region support at `AbstentionConfig.region_percentile` of the studies' own
            (leave-one-study-out); a query below it abstains.
    """

    classes: tuple[str, ...]
    studies: list[str]
    probabilities: np.ndarray
    threshold: float


@dataclass(frozen=True)
class ArchiveProfile:
    """An archive's calibration (`medcm.index.calibration`), header summary and (given a region head) regions."""

    calibration: Calibration
    headers: ArchiveHeaders
    regions: ArchiveRegions | None = None


@dataclass(frozen=True)
class QueryHeader:
    """One query image's modality kinds and the coarse regions its header names (empty when unknown)."""

    modalities: frozenset[str]
    regions: frozenset[str]


def modality_kind(modality: str) -> str:
    """A DICOM Modality as a kind: upper case, CR and DR as DX (all projection radiographs)."""
    value = modality.strip().upper()
    return _RADIOGRAPHY.get(value, value)


def _kinds(modality: str) -> frozenset[str]:
    return frozenset(modality_kind(m) for m in modality_set(modality))


def stated_regions(*texts: str) -> frozenset[str]:
    """The coarse regions the first of `texts` that names any names (BodyPartExamined first)."""
    for text in texts:
        named = coarse_regions(text)
        if named:
            return frozenset(named)
    return frozenset()


def archive_headers(meta: Sequence[Mapping[str, Any]], keys: Sequence[str] = ()) -> ArchiveHeaders:
    """`ArchiveHeaders` of stored image rows (`embedding_matrix("image", ...)`: meta with study_uid, modality,
    body_part; a row without study_uid is a study of its own, named by its key).

    A row without a modality says nothing about the archive and is skipped.
    """
    studies: dict[str, dict[str, frozenset[str] | None]] = {}
    seen: dict[tuple[str, str], tuple[frozenset[str], frozenset[str]]] = {}  # few distinct pairs: map each once
    for row, fields in enumerate(meta):
        pair = (str(fields.get("modality") or ""), str(fields.get("body_part") or ""))
        if pair not in seen:
            seen[pair] = (_kinds(pair[0]), stated_regions(pair[1]))
        kinds, named = seen[pair]
        study = studies.setdefault(str(fields.get("study_uid") or (keys[row] if row < len(keys) else f"row {row}")), {})
        for kind in kinds:
            known = study.get(kind, frozenset())
            study[kind] = None if known is None or not named else known | named
    kind_studies, unknown, regions = Counter(), Counter(), Counter()
    for header in studies.values():
        for kind, named in header.items():
            kind_studies[kind] += 1
            if named is None:
                unknown[kind] += 1
            else:
                regions.update((kind, region) for region in named)
    return ArchiveHeaders(studies, dict(kind_studies), dict(unknown), dict(regions))


def query_headers(source: QuerySource, store: AbstentionStoreLike) -> list[QueryHeader]:
    """Per image of an upload, or per stored instance of a study UID: its modality kinds and named regions."""
    if isinstance(source, str):
        study = store.get_study(source)
        return [QueryHeader(_kinds(view.modality or ""), stated_regions(
            view.body_part or "", str((view.metadata or {}).get("series_description") or ""),
            str((view.metadata or {}).get("study_description") or study.description or "")))
            for view in study.instances]
    return [QueryHeader(_kinds(image.meta.modality), stated_regions(
        image.meta.body_part, image.meta.series_description, image.meta.study_description)) for image in source]


def header_reason(query: Sequence[QueryHeader], archive: ArchiveHeaders, own: Collection[str] = ()) -> str:
    """Why the header says the archive holds nothing like the study ("" when it does not say so).

    Args:
        query: the query's images' headers.
        archive: the archive's.
        own: the query's own studies, left out of the archive when stored (an uploaded mammogram is
            not evidence that the archive holds mammograms).

    Examples: "this archive holds no MG studies", "this archive holds no extremity CT studies".
    """
    kinds, unknown, regions = archive.without(own)
    modalities = frozenset().union(*(h.modalities for h in query))
    if not modalities or not kinds:
        return ""
    shared = modalities & frozenset(kinds)
    if not shared:
        return f"this archive holds no {'/'.join(sorted(modalities))} studies"
    named = frozenset().union(*(h.regions for h in query if h.modalities & shared))
    if not named or any(unknown[kind] for kind in shared):
        return ""
    if any(regions[(kind, region)] for kind in shared for region in named):
        return ""
    return f"this archive holds no {'/'.join(sorted(named))} {'/'.join(sorted(shared))} studies"


def usable_calibration(calibration: Calibration, config: AbstentionConfig) -> Calibration | None:
    """The calibration when it holds at least `config.min_studies` studies; None (too coarse to judge) else."""
    return calibration if calibration.studies >= config.min_studies else None


def similarity_abstention(similarity: float | None, calibration: Calibration | None,
                          config: AbstentionConfig) -> Abstention:
    """The similarity rule's verdict on a query whose neighbourhood similarity is `similarity`.

    Args:
        similarity: the query's mean cosine to its `config.neighbours` most similar stored reports
            (None: the archive has no report to compare with).
        calibration: the archive's, or None when it is too small (`config.min_studies`) to judge.
        config: the rule's settings.
    """
    if similarity is None or calibration is None:
        return Abstention(False, "", similarity, None, None, None, config.neighbours)
    percentile = calibration.neighbourhood_percentile(similarity)
    threshold = calibration.threshold(config.below_percentile)
    typical = calibration.typical
    abstained = threshold is not None and similarity < threshold
    reason = ""
    if abstained:
        reason = (f"nothing in this archive resembles this study: nearest similarity {similarity:.2f}, "
                  f"typical {typical:.2f} (mean of the {config.neighbours} most similar cases; percentile "
                  f"{percentile:.1f} of the archive's own studies, drafts need {config.below_percentile:g})")
    return Abstention(abstained, reason, similarity, typical, percentile, threshold, config.neighbours)


class Abstainer:
    """The engine's abstention: the archive profile it decides with (cached per store state) and the decision.

    Args:
        store: the case store.
        config: the rules' settings.
    """

    def __init__(self, store: AbstentionStoreLike, config: AbstentionConfig = AbstentionConfig()) -> None:
        self.store, self.config = store, config
        self._cached: tuple[tuple[str, str, str], ArchiveProfile] | None = None

    def profile(self, model_id: str, region_head: RegionHead | None = None) -> ArchiveProfile:
        """The archive's calibration (image vectors against report vectors), header summary and (given the
        model's region head) regions, recomputed only after the store's embeddings of `model_id` changed."""
        key = (model_id, self.store.embedding_stamp("image", model_id), self.store.embedding_stamp("report", model_id))
        cached = self._cached
        if cached is None or cached[0] != key:
            images = self.store.embedding_matrix("image", model_id)
            reports = self.store.embedding_matrix("report", model_id)
            studies = [str(meta.get("study_uid") or sop) for meta, sop in zip(images.meta, images.keys)]
            calibration = calibrate(images.vectors, studies, unit_rows(reports.vectors), list(reports.keys),
                                    self.config.neighbours, self.config.max_studies, self.config.seed)
            regions = archive_regions(images.vectors, studies, region_head, self.config)
            cached = (key, ArchiveProfile(calibration, archive_headers(images.meta, images.keys), regions))
            self._cached = cached
        return cached[1]

    def check(self, reports: SearchLike, query: np.ndarray, own: Collection[str], source: QuerySource,
              model_id: str, cases: Sequence[Case],
              region_head: RegionHead | None = None) -> tuple[list[Case], Abstention]:
        """Decide whether to abstain, and give each similar case its calibrated score.

        Args:
            reports: the report index (keys: study UIDs).
            query: the study's query vector `[D]`.
            own: the query's own study UIDs as stored (left out, as in the calibration).
            source: the query's images, or its stored study's UID (for the header rule).
            model_id: the checkpoint's model id.
            cases: the similar cases to mark, best first.
            region_head: the model's region head (`AlignedModel.region_head`), for the region rule.

        Returns:
            The cases with `percentile` (None when the archive is too small to calibrate) and `weak`
            (the draft abstains, or the case's percentile is below the abstention percentile), and the verdict.
            With abstention off (`AbstentionConfig.active`) the cases as they are, and a verdict without numbers.
        """
        if not self.config.active:
            return list(cases), Abstention(False, "", neighbours=self.config.neighbours)
        profile = self.profile(model_id, region_head)
        calibration = usable_calibration(profile.calibration, self.config)
        hits = reports.search(query, k=self.config.neighbours, exclude=own)
        similarity = float(np.mean([hit.score for hit in hits])) if hits else None
        verdict = similarity_abstention(similarity, calibration, self.config)
        reason = header_reason(query_headers(source, self.store), profile.headers, own) if self.config.header else ""
        if not reason and region_head is not None and profile.regions is not None:
            reason = region_reason(query, region_head, profile.regions, own)
        if reason:  # the header's or the region head's reason first: it names what the archive lacks
            verdict = dataclasses.replace(verdict, abstained=True, reason=reason)
        return [self._marked(case, calibration, verdict) for case in cases], verdict

    def _marked(self, case: Case, calibration: Calibration | None, verdict: Abstention) -> Case:
        score = case.score  # type: ignore[attr-defined]
        percentile = calibration.percentile(score) if calibration is not None else None
        weak = verdict.abstained or (percentile is not None and percentile < self.config.below_percentile)
        return dataclasses.replace(case, percentile=percentile, weak=weak)  # type: ignore[type-var]


def archive_regions(vectors: np.ndarray, studies: Sequence[str], head: RegionHead | None,
                    config: AbstentionConfig) -> ArchiveRegions | None:
    """The archive's `ArchiveRegions` from its image rows; None without a head, with the rule off
    (`region_percentile` 0) or with fewer than `config.min_studies` studies."""
    if head is None or config.region_percentile <= 0:
        return None
    uids, means = study_means(np.asarray(vectors, np.float32), studies)
    if len(uids) < config.min_studies:
        return None
    classes, weight, bias = head
    probabilities = region_probabilities(means, weight, bias)
    threshold = float(np.percentile(own_region_support(probabilities), config.region_percentile))
    return ArchiveRegions(tuple(classes), uids, probabilities, threshold)


def region_reason(query: np.ndarray, head: RegionHead, regions: ArchiveRegions, own: Collection[str] = ()) -> str:
    """Why the region head says the archive holds nothing like the study ("" when it does not say so).

    The query's region support is the expected number of archive studies of its region (`region_support`),
    its own stored studies left out; below `regions.threshold` (the archive's own studies' low percentile)
    the archive holds too few studies like it to draft from.
    """
    classes, weight, bias = head
    probability = region_probabilities(np.asarray(query, np.float32)[None], weight, bias)
    keep = [i for i, uid in enumerate(regions.studies) if uid not in own]
    support = float(region_support(probability, regions.probabilities[keep])[0])
    if support >= regions.threshold:
        return ""
    top = int(np.argmax(probability[0]))
    return (f"this archive holds few studies like this one: it looks like {classes[top]} "
            f"({probability[0, top]:.0%} by the model), and about {support:.1f} archive studies are of its region "
            f"(drafts need {regions.threshold:.1f}, the archive's own studies' "
            f"{len(regions.studies)}-study low percentile)")


def abstained_draft(case_ids: Sequence[str], abstention: Abstention) -> Draft:
    """The draft of an abstained study: no sentences, its (weak) similar cases still named."""
    return Draft(sentences=(), dropped=(), source_cases=tuple(case_ids), abstention=abstention)
