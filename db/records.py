"""What goes into the case store and what comes out: plain frozen records keyed by DICOM UIDs.

`db.store` re-exports all of these; import them from there. The store only reads the attributes of
its inputs, so any object with the same fields (e.g. `medcm.engine.records`) will do.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np


class StoreError(ValueError):
    """A request the case store refuses: unknown id, invalid value, or a conflict with stored data."""


@dataclass(frozen=True)
class InstanceInput:
    """One DICOM instance to store.

    `metadata` is kept whole (JSON); its `modality`, `body_part`, `study_date`,
    `study_description` and `series_description` also fill the study, series and instance columns.
    """

    sop_instance_uid: str
    study_uid: str
    series_uid: str
    patient_id: str  # pseudonymous id; "" for none
    path: str
    content_sha256: str
    metadata: dict[str, Any]
    preview_png: bytes | None = None


@dataclass(frozen=True)
class ReportInput:
    """A report for a study, already split into sections by the caller."""

    study_uid: str
    text: str
    sections: list[tuple[str, str]]
    status: str = "signed"  # archive reports arrive signed
    author: str = "archive"


@dataclass(frozen=True)
class EmbeddingInput:
    """A vector for an instance (kind "image", key SOPInstanceUID) or for a study's latest report
    version at write time (kind "report", key StudyInstanceUID)."""

    kind: str
    key: str
    model_id: str
    vector: np.ndarray  # [D], stored as float32


@dataclass(frozen=True)
class IngestSummary:
    """What one `CaseStore.ingest` call wrote."""

    added_instances: int
    skipped_instances: int  # same SOPInstanceUID and same content hash already stored
    added_reports: int
    added_embeddings: int  # inserted or replaced
    kept_out: tuple[str, ...] = ()  # studies whose report was not stored over a clinician's signature


@dataclass(frozen=True)
class ReportView:
    """One version of a study's report."""

    id: int
    study_uid: str
    version: int
    text: str
    sections: list[tuple[str, str]]
    status: str  # "draft" or "signed"
    author: str
    created_at: datetime
    signed_at: datetime | None
    signed_by: str | None
    source: str  # "ingest", "draft", "edit" or "sign"


@dataclass(frozen=True)
class InstanceView:
    """One stored instance (without its preview: see `CaseStore.preview`)."""

    sop_instance_uid: str
    series_uid: str
    study_uid: str
    path: str
    content_sha256: str
    metadata: dict[str, Any]
    modality: str
    body_part: str


@dataclass(frozen=True)
class StudyView:
    """A stored study; `patient_id` is the pseudonym ("" when the files carried none)."""

    study_uid: str
    patient_id: str
    study_date: str
    description: str
    status: str  # "new", "drafted" or "signed": follows the latest report version
    modalities: tuple[str, ...]
    body_parts: tuple[str, ...]
    instances: tuple[InstanceView, ...]
    created_at: datetime
    clinical_question: str | None = None  # the indication / history a clinician gave; None: none
    patient_sex: str = ""  # "F", "M", "O" or "": as its first instance's metadata records it
    patient_age: str = ""  # the age band at the study ("60–69 y"), "" when unknown: from the same metadata


@dataclass(frozen=True)
class EmbeddingMatrix:
    """All vectors of one kind and model, row-aligned with their keys and filter metadata."""

    keys: list[str]  # sop_instance_uid for images, study_uid for reports
    vectors: np.ndarray  # [N, D] float32; [0, 0] when there are none
    meta: list[dict[str, str]]  # study_uid, modality, body_part (+ sop_instance_uid / report_version)


@dataclass(frozen=True)
class PendingStudy:
    """A study that lacks embeddings of a model (see `CaseStore.studies_to_embed` for the rule).

    `instances` are all the study's instances (by series, then storage order) when `needs_images`,
    else empty; `report_text` is the latest report version's text when `needs_report`, else None.
    """

    study_uid: str
    instances: tuple[InstanceView, ...]
    report_text: str | None
    needs_images: bool
    needs_report: bool
