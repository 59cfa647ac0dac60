"""Read-side helpers of `db.store`: public views of rows and embedding matrices, inside the caller's Session.

Nothing here opens a Session; `CaseStore` owns the transactions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from db._rows import CHUNK
from db.models import Embedding, Instance, Report, Series, Study
from db.records import EmbeddingMatrix, InstanceView, ReportView, StoreError, StudyView


def study_tags(s: Session, study_ids: list[int]) -> dict[int, tuple[tuple[str, ...], tuple[str, ...]]]:
    """Per study id: its instances' distinct non-empty modalities and body parts, sorted."""
    found: dict[int, tuple[set[str], set[str]]] = {}
    for start in range(0, len(study_ids), CHUNK):
        rows = s.execute(
            select(Series.study_id, Instance.modality, Instance.body_part)
            .distinct()
            .join(Series, Instance.series_id == Series.id)
            .where(Series.study_id.in_(study_ids[start : start + CHUNK]))
        )
        for study_id, modality, body_part in rows:
            modalities, body_parts = found.setdefault(study_id, (set(), set()))
            modalities.add(modality)
            body_parts.add(body_part)
    return {k: (tuple(sorted(m - {""})), tuple(sorted(b - {""}))) for k, (m, b) in found.items()}


def report_view(r: Report, study_uid: str) -> ReportView:
    """The public view of a report row."""
    return ReportView(
        id=r.id, study_uid=study_uid, version=r.version, text=r.text,
        sections=[(name, text) for name, text in r.sections_json], status=r.status, author=r.author,
        created_at=r.created_at, signed_at=r.signed_at, signed_by=r.signed_by, source=r.source,
    )


def instance_view(i: Instance, series_uid: str, study_uid: str) -> InstanceView:
    """The public view of an instance row."""
    return InstanceView(
        sop_instance_uid=i.sop_instance_uid, series_uid=series_uid, study_uid=study_uid, path=i.path,
        content_sha256=i.content_sha256, metadata=i.metadata_json, modality=i.modality, body_part=i.body_part,
    )


def study_view(
    study: Study, pseudonym: str, tags: tuple[tuple[str, ...], tuple[str, ...]] | None,
    instances: tuple[InstanceView, ...],
) -> StudyView:
    """The public view of a study row."""
    modalities, body_parts = tags or ((), ())
    return StudyView(
        study_uid=study.study_uid, patient_id=pseudonym, study_date=study.study_date,
        description=study.description, status=study.status, modalities=modalities, body_parts=body_parts,
        instances=instances, created_at=study.created_at,
    )


def _matrix(keys: list[str], dims: list[int], blobs: list[bytes], meta: list[dict[str, str]]) -> EmbeddingMatrix:
    if not keys:
        return EmbeddingMatrix([], np.zeros((0, 0), np.float32), [])
    if len(set(dims)) != 1:
        raise StoreError(f"embedding_matrix: stored dims {sorted(set(dims))}; expected one dimension per model")
    vectors = np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(keys), dims[0]).astype(np.float32)
    return EmbeddingMatrix(keys, vectors, meta)


def image_matrix(s: Session, model_id: str) -> EmbeddingMatrix:
    """Image embeddings of `model_id`, one row per instance, in storage order."""
    rows = s.execute(
        select(Instance.sop_instance_uid, Instance.modality, Instance.body_part, Study.study_uid,
               Embedding.dim, Embedding.vector)
        .join(Instance, Embedding.instance_id == Instance.id)
        .join(Series, Instance.series_id == Series.id)
        .join(Study, Series.study_id == Study.id)
        .where(Embedding.kind == "image", Embedding.model_id == model_id)
        .order_by(Instance.id)
    ).all()
    meta = [{"study_uid": r[3], "sop_instance_uid": r[0], "modality": r[1], "body_part": r[2]} for r in rows]
    return _matrix([r[0] for r in rows], [r[4] for r in rows], [r[5] for r in rows], meta)


def report_matrix(s: Session, model_id: str) -> EmbeddingMatrix:
    """Per study, the embedding of its newest report version that has one for `model_id`."""
    rows = s.execute(
        select(Study.id, Study.study_uid, Report.version, Embedding.dim, Embedding.vector)
        .join(Report, Embedding.report_id == Report.id)
        .join(Study, Report.study_id == Study.id)
        .where(Embedding.kind == "report", Embedding.model_id == model_id)
        .order_by(Study.id, Report.version.desc())
    ).all()
    by_study: dict[int, Any] = {}
    for row in rows:
        by_study.setdefault(row[0], row)  # rows come highest version first within each study
    newest = list(by_study.values())
    tags = study_tags(s, [r[0] for r in newest])
    meta = []
    for study_id, study_uid, version, _, _ in newest:
        modalities, body_parts = tags.get(study_id, ((), ()))
        meta.append({"study_uid": study_uid, "modality": ",".join(modalities), "body_part": ",".join(body_parts),
                     "report_version": str(version)})
    return _matrix([r[1] for r in newest], [r[3] for r in newest], [r[4] for r in newest], meta)
