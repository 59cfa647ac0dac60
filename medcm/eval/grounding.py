"""Grounding accuracy where the truth is known: the pointing game of sentence heatmaps against drawn findings.

For each study whose manifest `meta` says where its finding is (`finding_mask`, else `finding_boxes`, in
the image's pixels, as `medcm.data.demo_archive` writes them), the reference report's sentence that states
the finding is grounded on the study's image (`medcm.model.grounding`). A hit is a heatmap maximum within
`tolerance_px` pixels of the finding (Zhang et al.'s pointing game allows 15 px on ~500 px photographs;
the default here, 6 px on the demo's 192 px images, is a similar share of the side). The chance rate is
the share of the image within that tolerance of the finding: what a uniformly random point would score.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from medcm.checkpoint import Checkpoint
from medcm.data.demo_archive import rle_to_mask
from medcm.data.manifest import ImageReadError, ManifestRecord, load_image
from medcm.model.grounding import GroundingConfig, heatmap_peak, image_heatmap
from medcm.report.text import is_negated, split_sections, split_sentences

__all__ = ["FINDING_WORDS", "GroundedCase", "LocatedPeak", "finding_mask", "finding_sentence", "grounding_block",
           "locate_peaks", "pointing_game", "score_peaks", "summarize"]

DEFAULT_TOLERANCE_PX = 6
# Words by which a report sentence states each localised finding (the demo's findings).
FINDING_WORDS: dict[str, tuple[str, ...]] = {
    "pleural effusion": ("effusion",),
    "pulmonary nodule": ("nodule", "nodular"),
    "cardiomegaly": ("cardiomegaly", "heart", "cardiac"),
    "pneumothorax": ("pneumothorax",),
    "consolidation": ("consolidation", "airspace", "pneumonia"),
    "liver lesion": ("liver", "hepatic"),
}


@dataclass(frozen=True)
class GroundedCase:
    """One study's pointing-game outcome.

    Attributes:
        case_id: the study.
        modality: the manifest's `meta.modality` ("" when absent).
        finding: what was drawn (the manifest's `meta.finding`).
        sentence: the grounded sentence.
        peak: `(row, column)` of the heatmap's maximum in the image's pixels.
        distance_px: from the peak to the nearest pixel of the finding (0 inside it).
        hit: the peak lies within the tolerance of the finding.
        chance: the share of the image within the tolerance of the finding (a random point's hit rate).
    """

    case_id: str
    modality: str
    finding: str
    sentence: str
    peak: tuple[int, int]
    distance_px: float
    hit: bool
    chance: float


def finding_sentence(report: str, finding: str) -> str | None:
    """The first affirmed sentence of the report's FINDINGS (else the whole report) that states `finding`."""
    sections = split_sections(report)
    words = FINDING_WORDS.get(finding, tuple(finding.lower().split()))
    for sentence in split_sentences(sections.findings or report):
        if any(word in sentence.lower() for word in words) and not is_negated(sentence):
            return sentence
    return None


def finding_mask(meta: dict[str, Any], shape: tuple[int, int]) -> np.ndarray | None:
    """Where the finding is, `[H, W]` bool, from `meta["finding_mask"]` or else `meta["finding_boxes"]`; None without.

    Raises:
        ValueError: the stored mask's size differs from the image's `shape`.
    """
    if "finding_mask" in meta:
        mask = rle_to_mask(meta["finding_mask"])
        if mask.shape != tuple(shape):
            raise ValueError(f"finding_mask: got size {mask.shape}, expected the image's {tuple(shape)}")
        return mask
    if not meta.get("finding_boxes"):
        return None
    mask = np.zeros(shape, dtype=bool)
    for x0, y0, x1, y1 in meta["finding_boxes"]:
        mask[int(y0) : int(y1), int(x0) : int(x1)] = True
    return mask


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """`mask` grown by a disc of `radius` pixels (the points within `radius` of it)."""
    if radius <= 0:
        return mask.copy()
    height, width = mask.shape
    padded = np.pad(mask, radius)
    out = np.zeros_like(mask)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dy * dy + dx * dx <= radius * radius:
                out |= padded[radius + dy : radius + dy + height, radius + dx : radius + dx + width]
    return out


@dataclass(frozen=True, eq=False)  # eq=False: an array
class LocatedPeak:
    """A heatmap's peak on one study, beside where its finding is (`locate_peaks`)."""

    case_id: str
    modality: str
    finding: str
    sentence: str
    peak: tuple[int, int]
    mask: np.ndarray


@torch.no_grad()
def locate_peaks(checkpoint: Checkpoint, records: list[ManifestRecord], config: GroundingConfig = GroundingConfig(),
                 device: torch.device | str = "cpu") -> list[LocatedPeak]:
    """Ground each localised record's finding sentence on its first image; where the heatmap peaks.

    Records without a finding location, without a sentence stating the finding, or with an unreadable
    image are skipped.
    """
    model, preprocess = checkpoint.model.to(device).eval(), checkpoint.config.preprocess
    located = []
    for record in records:
        finding = str(record.meta.get("finding", ""))
        sentence = finding_sentence(record.report, finding) if finding else None
        where = record.meta.get("finding_mask") or record.meta.get("finding_boxes")
        if sentence is None or not record.images or not where:
            continue
        try:
            pixels = load_image(record.images[0])
        except ImageReadError:
            continue
        frame, heat = image_heatmap(model, pixels, sentence, preprocess, config, device)
        peak = heatmap_peak(heat)
        located.append(LocatedPeak(record.case_id, str(record.meta.get("modality", "")), finding, sentence, peak,
                                   finding_mask(record.meta, frame.shape)))
    return located


def score_peaks(located: list[LocatedPeak], tolerance_px: int = DEFAULT_TOLERANCE_PX) -> list[GroundedCase]:
    """The pointing game's outcome of each located peak, at one tolerance."""
    outcomes = []
    for case in located:
        reach = _dilate(case.mask, tolerance_px)
        distance = float(np.hypot(*(np.argwhere(case.mask) - np.array(case.peak)).T).min())
        outcomes.append(GroundedCase(case.case_id, case.modality, case.finding, case.sentence, case.peak, distance,
                                     bool(reach[case.peak]), float(reach.mean())))
    return outcomes


def pointing_game(checkpoint: Checkpoint, records: list[ManifestRecord], config: GroundingConfig = GroundingConfig(),
                  tolerance_px: int = DEFAULT_TOLERANCE_PX, device: torch.device | str = "cpu") -> list[GroundedCase]:
    """`score_peaks` of `locate_peaks`: each localised record's hit or miss, and its chance rate."""
    return score_peaks(locate_peaks(checkpoint, records, config, device), tolerance_px)


def summarize(outcomes: list[GroundedCase]) -> dict[str, Any]:
    """Accuracy, chance rate and median miss overall, per finding and per modality:
    `{"overall": {...}, "per_finding": {name: {...}}, "per_modality": {name: {...}}}`."""
    def block(cases: list[GroundedCase]) -> dict[str, float | int]:
        return {"n": len(cases), "pointing_game": float(np.mean([c.hit for c in cases])),
                "random": float(np.mean([c.chance for c in cases])),
                "median_distance_px": float(np.median([c.distance_px for c in cases]))}

    by_finding: dict[str, list[GroundedCase]] = defaultdict(list)
    by_modality: dict[str, list[GroundedCase]] = defaultdict(list)
    for case in outcomes:
        by_finding[case.finding].append(case)
        by_modality[case.modality].append(case)
    return {"overall": block(outcomes) if outcomes else {"n": 0},
            "per_finding": {name: block(cases) for name, cases in sorted(by_finding.items())},
            "per_modality": {name: block(cases) for name, cases in sorted(by_modality.items())}}


def grounding_block(checkpoint: Checkpoint, records: list[ManifestRecord], config: GroundingConfig = GroundingConfig(),
                    tolerance_px: int = DEFAULT_TOLERANCE_PX,
                    device: torch.device | str = "cpu") -> dict[str, Any] | None:
    """The pointing game as a JSON-ready block for `medcm eval`, or None when no record says where its finding is."""
    outcomes = pointing_game(checkpoint, records, config, tolerance_px, device)
    if not outcomes:
        return None
    return {**summarize(outcomes), "tolerance_px": tolerance_px, "method": config.method, "shifts": config.shifts,
            "cases": [{**asdict(c), "peak": list(c.peak)} for c in outcomes]}
