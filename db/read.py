"""Read-side helpers of `db.store`: lookups, queries and the public views of rows, inside the caller's Session.

Nothing here opens a Session; `CaseStore` owns the transactions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import Embedding, Event, Instance, Patient, Report, Series, Study
from db.records import EmbeddingMatrix, InstanceView, ReportView, StoreError, StudyView

CHUNK = 500  # keys per IN (...) query: well under SQLite's bound-parameter limit


def study_or_error(s: Session, study_uid: str) -> Study:
    """The stored study `study_uid`, else StoreError."""
    study = s.scalar(select(Study).where(Study.study_uid == study_uid))
    if study is None:
        raise StoreError(f"study {study_uid!r}: not in the store; expected a stored StudyInstanceUID")
    return study


def latest_report(s: Session, study: Study, signed_only: bool = False) -> Report | None:
    """The study's highest report version (highest signed one if `signed_only`)."""
    query = select(Report).where(Report.study_id == study.id)
    if signed_only:
        query = query.where(Report.status == "signed")
    return s.scalar(query.order_by(Report.version.desc()).limit(1))


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
    instances: tuple[InstanceView, ...], patient: tuple[str, str] = ("", ""),
) -> StudyView:
    """The public view of a study row; `patient` is its (sex, age band) from `patient_characteristics`."""
    modalities, body_parts = tags or ((), ())
    return StudyView(
        study_uid=study.study_uid, patient_id=pseudonym, study_date=study.study_date,
        description=study.description, status=study.status, modalities=modalities, body_parts=body_parts,
        instances=instances, created_at=study.created_at, clinical_question=study.clinical_question,
        patient_sex=patient[0], patient_age=patient[1],
    )


def patient_characteristics(s: Session, study_ids: list[int]) -> dict[int, tuple[str, str]]:
    """Per study id: the patient's (sex, age band) as its first stored instance's metadata records them
    ("patient_sex", "patient_age_band"; "" where absent, e.g. instances stored before they were recorded)."""
    found: dict[int, tuple[str, str]] = {}
    for start in range(0, len(study_ids), CHUNK):
        first = (select(Series.study_id, func.min(Instance.id).label("first"))
                 .join(Series, Instance.series_id == Series.id)
                 .where(Series.study_id.in_(study_ids[start : start + CHUNK]))
                 .group_by(Series.study_id).subquery())
        rows = s.execute(select(first.c.study_id, Instance.metadata_json).join(first, Instance.id == first.c.first))
        for study_id, meta in rows:
            meta = meta or {}
            found[study_id] = (str(meta.get("patient_sex") or ""), str(meta.get("patient_age_band") or ""))
    return found


def latest_report_texts(s: Session, study_uids: list[str]) -> dict[str, str]:
    """Per stored study of `study_uids` that has a report: its highest version's text (any status)."""
    found: dict[str, str] = {}
    for start in range(0, len(study_uids), CHUNK):
        newest = (select(Report.study_id, func.max(Report.version).label("version"))
                  .join(Study, Report.study_id == Study.id)
                  .where(Study.study_uid.in_(study_uids[start : start + CHUNK]))
                  .group_by(Report.study_id).subquery())
        rows = s.execute(select(Study.study_uid, Report.text).select_from(Report)
                         .join(newest, (Report.study_id == newest.c.study_id) & (Report.version == newest.c.version))
                         .join(Study, Study.id == Report.study_id))
        found.update(dict(rows.tuples().all()))
    return found


def study_with_instances(s: Session, study_uid: str) -> StudyView:
    """A study with all its instances (by series, then in storage order); StoreError if unknown."""
    study = study_or_error(s, study_uid)
    rows = s.execute(
        select(Instance, Series.series_uid)
        .join(Series, Instance.series_id == Series.id)
        .where(Series.study_id == study.id)
        .order_by(Series.id, Instance.id)
    ).all()
    instances = tuple(instance_view(inst, series_uid, study_uid) for inst, series_uid in rows)
    pseudonym = study.patient.pseudonym if study.patient else ""
    patient = patient_characteristics(s, [study.id]).get(study.id, ("", ""))
    return study_view(study, pseudonym, study_tags(s, [study.id]).get(study.id), instances, patient)


def newest_studies(s: Session, status: str | None, limit: int) -> list[StudyView]:
    """At most `limit` studies (of `status` if given), most recently stored first, without instances."""
    query = select(Study, Patient.pseudonym).outerjoin(Patient, Study.patient_id == Patient.id)
    if status is not None:
        query = query.where(Study.status == status)
    rows = s.execute(query.order_by(Study.created_at.desc(), Study.id.desc()).limit(limit)).all()
    ids = [study.id for study, _ in rows]
    tags, patients = study_tags(s, ids), patient_characteristics(s, ids)
    return [study_view(study, pseudonym or "", tags.get(study.id), (), patients.get(study.id, ("", "")))
            for study, pseudonym in rows]


def patient_priors(s: Session, study_uid: str) -> list[tuple[StudyView, ReportView | None]]:
    """The other studies of `study_uid`'s patient, newest study date first (then newest stored), each with
    its latest signed report version (None if none); empty for a study of no known patient."""
    study = study_or_error(s, study_uid)
    if study.patient_id is None:
        return []
    others = list(s.scalars(select(Study).where(Study.patient_id == study.patient_id, Study.id != study.id)
                            .order_by(Study.study_date.desc(), Study.created_at.desc(), Study.id.desc())))
    ids = [other.id for other in others]
    tags, patients = study_tags(s, ids), patient_characteristics(s, ids)
    found = []
    for other in others:
        signed = latest_report(s, other, signed_only=True)
        found.append((study_view(other, study.patient.pseudonym, tags.get(other.id), (),
                                 patients.get(other.id, ("", ""))),
                      None if signed is None else report_view(signed, other.study_uid)))
    return found


def events(s: Session, study_uid: str | None, kind: str | None, user: str | None, limit: int) -> list[dict]:
    """Audit events as dicts, newest first, optionally only those of one study, kind or user."""
    query = select(Event)
    if study_uid is not None:
        query = query.where(Event.study_uid == study_uid)
    if kind is not None:
        query = query.where(Event.kind == kind)
    if user is not None:
        query = query.where(Event.user == user)
    rows = s.scalars(query.order_by(Event.time.desc(), Event.id.desc()).limit(limit))
    return [
        {"id": e.id, "time": e.time, "kind": e.kind, "user": e.user, "study_uid": e.study_uid, "detail": e.detail_json}
        for e in rows
    ]


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
