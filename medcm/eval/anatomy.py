"""What `medcm eval` knows of each image's and case's anatomy, for the anatomy prior (`medcm.index.anatomy`).

An image's modality and header region come from its metadata (as the engine reads them from the DICOM
header: Modality, BodyPartExamined, SeriesDescription); its region falls back on the checkpoint's
region head applied to its embedding. A case's anatomy pools its images': every modality, the mean
region distribution.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medcm.index.anatomy import header_region, modality_set, region_probabilities


@dataclass(frozen=True)
class Anatomy:
    """Per row: a modality set, and (with a region head) a region distribution `[N, K]`."""

    modalities: list[frozenset[str]]
    regions: np.ndarray | None


def image_anatomy(vectors: np.ndarray, metas: Sequence[dict[str, Any]],
                  head: tuple[tuple[str, ...], np.ndarray, np.ndarray] | None) -> Anatomy:
    """Anatomy of image rows: metadata modality; header region where it maps, else the head's prediction."""
    modalities = [modality_set(str(meta.get("modality") or "")) for meta in metas]
    if head is None or not len(vectors):
        return Anatomy(modalities, None)
    classes, weight, bias = head
    regions = region_probabilities(vectors, weight, bias)
    for row, meta in enumerate(metas):
        stated = header_region(str(meta.get("body_part") or ""), str(meta.get("series_description") or ""), classes)
        if stated is not None:
            regions[row] = stated
    return Anatomy(modalities, regions)


def case_anatomy(images: Anatomy, image_case: Sequence[str], case_ids: Sequence[str]) -> Anatomy:
    """Anatomy of cases from their image rows (a case without images: unknown modality, uniform region)."""
    rows: dict[str, list[int]] = {}
    for row, case in enumerate(image_case):
        rows.setdefault(case, []).append(row)
    modalities = [frozenset().union(*(images.modalities[r] for r in rows.get(case, []))) for case in case_ids]
    if images.regions is None:
        return Anatomy(modalities, None)
    k = images.regions.shape[1]
    regions = np.stack([images.regions[rows[case]].mean(axis=0) if case in rows else np.full(k, 1.0 / k, np.float32)
                        for case in case_ids]) if case_ids else np.zeros((0, k), np.float32)
    return Anatomy(modalities, regions.astype(np.float32))
