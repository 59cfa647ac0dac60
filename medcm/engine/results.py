"""What the engine's similarity queries return: similar past cases (image → reports) and matching stored images."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from medcm.index.exact import Hit

__all__ = ["ImageMatch", "SimilarCase", "clean_filters", "image_match", "study_uids_of"]


@dataclass(frozen=True)
class SimilarCase:
    """A past case similar to the query, with the report the similarity was measured against; `percentile`
    is its calibrated score and `weak` marks a poor match (`medcm.engine.abstention`)."""

    study_uid: str
    score: float
    report: str
    modality: str
    body_part: str
    percentile: float | None = None
    weak: bool = False


@dataclass(frozen=True)
class ImageMatch:
    """A stored image matching a query (the best-scoring image of its study)."""

    sop_instance_uid: str
    study_uid: str
    score: float
    modality: str
    body_part: str


def image_match(hit: Hit) -> ImageMatch:
    """The match of a hit of the image index (its study and tags from the hit's metadata)."""
    return ImageMatch(
        sop_instance_uid=hit.key,
        study_uid=hit.meta.get("study_uid", ""),
        score=hit.score,
        modality=hit.meta.get("modality", ""),
        body_part=hit.meta.get("body_part", ""),
    )


def study_uids_of(images: list[Any]) -> set[str]:
    """The StudyInstanceUIDs of query images (`medcm.dicom.read.DicomImage`)."""
    return {image.meta.study_uid for image in images}


def clean_filters(filters: Mapping[str, str] | None) -> dict[str, str] | None:
    """Search filters without empty values; None when none is left."""
    cleaned = {key: value for key, value in (filters or {}).items() if value}
    return cleaned or None
