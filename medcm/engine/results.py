"""What the engine's searches return: similar past cases (image → reports) and matching images, from index hits."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from medcm.index.exact import Hit

__all__ = ["ImageMatch", "SimilarCase", "clean_filters", "image_match"]


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


def clean_filters(filters: Mapping[str, str] | None) -> dict[str, str] | None:
    """The filters with a value (an empty modality or body part filters nothing); None when none has one."""
    cleaned = {key: value for key, value in (filters or {}).items() if value}
    return cleaned or None


def image_match(hit: Hit) -> ImageMatch:
    """The `ImageMatch` of an image index hit."""
    return ImageMatch(
        sop_instance_uid=hit.key,
        study_uid=hit.meta.get("study_uid", ""),
        score=hit.score,
        modality=hit.meta.get("modality", ""),
        body_part=hit.meta.get("body_part", ""),
    )
