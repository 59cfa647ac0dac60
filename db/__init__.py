"""The case store of medcm: studies, report versions, embeddings and an audit trail in SQL.

It imports nothing from `medcm`; the vector index joins on plain string ids (DICOM UIDs).
Use `db.store.CaseStore`; the names below are re-exported from `db.store`.
"""

from db.store import (
    CaseStore,
    EmbeddingInput,
    EmbeddingMatrix,
    IngestSummary,
    InstanceInput,
    InstanceView,
    ReportInput,
    ReportView,
    StoreError,
    StudyView,
)

__all__ = [
    "CaseStore",
    "EmbeddingInput",
    "EmbeddingMatrix",
    "IngestSummary",
    "InstanceInput",
    "InstanceView",
    "ReportInput",
    "ReportView",
    "StoreError",
    "StudyView",
]
