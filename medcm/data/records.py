"""One paired case as every reader of the data room returns it (manifests, MedPix), and the error for an
image that cannot be read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["ImageReadError", "ManifestRecord"]


class ImageReadError(Exception):
    """An image file (DICOM, PNG or JPEG) could not be read; `str()` is "<path>: <reason>"."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class ManifestRecord:
    """One case: its images, its report and optional ids and metadata.

    Attributes:
        images: absolute image paths (DICOM, PNG or JPEG).
        report: the case's report text.
        case_id: the case (study) identifier.
        split: e.g. "train" or "dev"; None when the data has no splits.
        meta: case-level metadata, e.g. "region", "modality", "diagnosis".
        patient_id: the patient, when known.
        image_meta: per-image metadata parallel to `images` (e.g. "modality", "region", "caption"),
            or empty when only case-level metadata exists.
        mask: the name of a burned-in-text mask in `MASK_NAMES` applied when an image is loaded.
    """

    images: tuple[str, ...]
    report: str
    case_id: str
    split: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    patient_id: str | None = None
    image_meta: tuple[dict[str, Any], ...] = ()
    mask: str | None = None

    def meta_of_image(self, index: int) -> dict[str, Any]:
        """Case metadata overlaid with image `index`'s own."""
        own = self.image_meta[index] if index < len(self.image_meta) else {}
        return {**self.meta, **own}
