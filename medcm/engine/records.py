"""What the engine hands to the case store: plain records keyed by DICOM UIDs.

The library does not import the store (`db/`), and the store does not import the library, so these
mirror `db.store`'s input dataclasses field for field; the store only reads their attributes.
`tests/test_records.py` checks that the two stay identical.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from medcm.dicom.read import DicomImage

# Instance metadata key: the keyed hashes of the names and ids its study's original files held
# (`medcm.dicom.deid_text.identifier_keys`), with which reports written later are scrubbed.
IDENTIFIER_KEYS = "identifier_keys"


@dataclass(frozen=True)
class InstanceRecord:
    """One DICOM instance to store (mirrors `db.store.InstanceInput`)."""

    sop_instance_uid: str
    study_uid: str
    series_uid: str
    patient_id: str
    path: str
    content_sha256: str
    metadata: dict[str, Any]
    preview_png: bytes | None = None


@dataclass(frozen=True)
class ReportRecord:
    """A report for a study (mirrors `db.store.ReportInput`)."""

    study_uid: str
    text: str
    sections: list[tuple[str, str]]
    status: str = "signed"
    author: str = "archive"


@dataclass(frozen=True)
class EmbeddingRecord:
    """A vector for an instance (kind "image", key SOPInstanceUID) or a study's latest report
    (kind "report", key StudyInstanceUID) (mirrors `db.store.EmbeddingInput`)."""

    kind: str
    key: str
    model_id: str
    vector: np.ndarray


def instance_record(image: DicomImage, preview_png: bytes | None) -> InstanceRecord:
    """The store record of a read DICOM image; its metadata is the full `InstanceMeta`."""
    meta = image.meta
    metadata = asdict(meta)
    metadata["pixel_spacing"] = list(meta.pixel_spacing) if meta.pixel_spacing else None
    return InstanceRecord(
        sop_instance_uid=meta.sop_instance_uid,
        study_uid=meta.study_uid,
        series_uid=meta.series_uid,
        patient_id=meta.patient_id,
        path=meta.path,
        content_sha256=meta.content_sha256,
        metadata=metadata,
        preview_png=preview_png,
    )
