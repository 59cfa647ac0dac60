"""Where in a stored study a sentence is seen: its heatmap over the image the 2D tower reads (`medcm.model.grounding`).

The grounded image is the study's first series' middle instance, and of a multi-frame file the frame the
checkpoint's preprocessing picks (`PreprocessConfig.frame`). 3D volumes are grounded on that one slice:
the volume encoders have no local map yet.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from medcm.checkpoint import Checkpoint
from medcm.engine.stored import read_stored
from medcm.model.grounding import GroundingConfig, heatmap_peak, image_heatmap

__all__ = ["SentenceHeatmap", "grounded_instance", "heatmap_grid", "overlay", "study_heatmap"]


class StudyStoreLike(Protocol):
    """The part of `db.store.CaseStore` grounding reads."""

    def get_study(self, study_uid: str) -> Any: ...


@dataclass(frozen=True, eq=False)  # eq=False: arrays
class SentenceHeatmap:
    """A sentence's heatmap over one image of a study.

    Attributes:
        study_uid: the study.
        sop_instance_uid: the grounded instance.
        sentence: the grounded sentence.
        heatmap: `[H, W]` float32 in [0, 1] on the grounded frame's pixels; 1 where the sentence is most seen.
        pixels: `[H, W]` float32 display pixels of that frame, in [0, 1].
        peak: `(row, column)` of the heatmap's maximum.
        method: how the map was made (`GroundingConfig.method`).
    """

    study_uid: str
    sop_instance_uid: str
    sentence: str
    heatmap: np.ndarray
    pixels: np.ndarray
    peak: tuple[int, int]
    method: str


def grounded_instance(instances: Sequence[Any]) -> Any:
    """The instance a study is grounded on: its first series' middle instance (by InstanceNumber when known).

    Raises:
        ValueError: the study has no stored instance.
    """
    if not instances:
        raise ValueError("grounding: the study has no stored image")
    series = [view for view in instances if view.series_uid == instances[0].series_uid]
    series.sort(key=lambda view: ((view.metadata or {}).get("instance_number") is None,
                                  (view.metadata or {}).get("instance_number") or 0))
    return series[len(series) // 2]


@torch.no_grad()
def study_heatmap(checkpoint: Checkpoint, store: StudyStoreLike, study_uid: str, sentence: str,
                  device: torch.device | str = "cpu", config: GroundingConfig = GroundingConfig()) -> SentenceHeatmap:
    """The heatmap of `sentence` over a stored study's grounded image.

    Raises:
        ValueError: an empty sentence, or a study without a stored image.
        DicomReadError: the grounded image's file is gone or unreadable (the message names it).
        StoreError: unknown study.
    """
    if not (sentence or "").strip():
        raise ValueError("grounding: the sentence is empty; expected a sentence of the draft or the report")
    instance = grounded_instance(store.get_study(study_uid).instances)
    frame, heat = image_heatmap(checkpoint.model.eval(), read_stored(instance).pixels, sentence.strip(),
                                checkpoint.config.preprocess, config, device)
    return SentenceHeatmap(study_uid, instance.sop_instance_uid, sentence.strip(), heat, frame, heatmap_peak(heat),
                           config.method)


def heatmap_grid(heatmap: np.ndarray, size: int = 32) -> list[list[float]]:
    """A heatmap shrunk to at most `size` × `size` cells (block means), rounded to 3 decimals, for JSON."""
    height, width = heatmap.shape
    rows = np.linspace(0, height, min(size, height) + 1).astype(int)
    cols = np.linspace(0, width, min(size, width) + 1).astype(int)
    return [[round(float(heatmap[r0:r1, c0:c1].mean()), 3) for c0, c1 in zip(cols[:-1], cols[1:])]
            for r0, r1 in zip(rows[:-1], rows[1:])]


def overlay(pixels: np.ndarray, heatmap: np.ndarray, strength: float = 0.6) -> np.ndarray:
    """The grey image with the heatmap over it, red turning yellow where it is hottest, `[H, W, 3]` uint8; cold
    places stay grey.

    Args:
        pixels: `[H, W]` display pixels in [0, 1].
        heatmap: `[H, W]` in [0, 1].
        strength: how opaque the colour is where the heatmap is 1.
    """
    grey = np.clip(pixels, 0.0, 1.0)[..., None].repeat(3, axis=-1)
    heat = np.clip(heatmap, 0.0, 1.0)[..., None]
    colour = np.clip(np.concatenate([2 * heat, 2 * heat - 1, 0 * heat], axis=-1), 0.0, 1.0)
    alpha = strength * heat
    return ((grey * (1 - alpha) + colour * alpha) * 255).round().astype(np.uint8)
