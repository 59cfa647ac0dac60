"""Which studies still lack embeddings of a model: the work list of batch embedding (`medcm embed`).

A study is *done* for a model when
- it has no instance, or at least one of its instances has an "image" embedding of the model, and
- it has no report, or its latest report version has a "report" embedding of the model.

"At least one image embedding", not "every instance": with a volume encoder a CT/MR series is one
vector stored under its middle slice, so most instances of a fully embedded study have none. A study
whose images were embedded only in part (a run killed mid-study cannot do that: a study's vectors are
written in one transaction) therefore counts as done.

Sharding: `shard_of(study_uid, count)` puts each study in one of `count` shards by a CRC-32 of its
UID, so parallel workers split the archive deterministically and without overlap.
"""

from __future__ import annotations

import zlib

from sqlalchemy import and_, exists, func, or_, select
from sqlalchemy.orm import Session, aliased

import db.read as read
from db.models import Embedding, Instance, Report, Series, Study
from db.records import InstanceView, PendingStudy, StoreError


def shard_of(study_uid: str, count: int) -> int:
    """The shard (0 .. count-1) a study belongs to: CRC-32 of its UTF-8 UID modulo `count`."""
    return zlib.crc32(study_uid.encode("utf-8")) % count


def check_shard(shard: tuple[int, int] | None) -> tuple[int, int]:
    """`(index, count)` validated; None means the one shard `(0, 1)`."""
    index, count = (0, 1) if shard is None else shard
    if count < 1 or not 0 <= index < count:
        raise StoreError(f"studies_to_embed shard: got {shard!r}, expected (index, count) with 0 <= index < count")
    return index, count


def _latest_report_ids():
    """A subquery: (study_id, id of its highest report version)."""
    newest = select(Report.study_id, func.max(Report.version).label("version")).group_by(Report.study_id).subquery()
    return (
        select(Report.study_id, Report.id.label("report_id"))
        .join(newest, and_(Report.study_id == newest.c.study_id, Report.version == newest.c.version))
        .subquery()
    )


def pending_rows(s: Session, model_id: str, after: str | None, limit: int) -> list[tuple[int, str, int | None, bool, bool]]:
    """Up to `limit` studies lacking embeddings of `model_id`, by study UID after `after`.

    Returns:
        (study id, study UID, latest report id or None, needs_images, needs_report) per study.
    """
    latest = _latest_report_ids()
    image_done = (
        select(Embedding.id)
        .join(Instance, Embedding.instance_id == Instance.id)
        .join(Series, Instance.series_id == Series.id)
        .where(Series.study_id == Study.id, Embedding.kind == "image", Embedding.model_id == model_id)
    )
    has_instances = select(Instance.id).join(Series, Instance.series_id == Series.id).where(Series.study_id == Study.id)
    report_emb = aliased(Embedding)
    needs_images = and_(exists(has_instances), ~exists(image_done))
    needs_report = and_(latest.c.report_id.is_not(None), report_emb.id.is_(None))
    query = (
        select(Study.id, Study.study_uid, latest.c.report_id, needs_images, needs_report)
        .outerjoin(latest, latest.c.study_id == Study.id)
        .outerjoin(report_emb, and_(report_emb.report_id == latest.c.report_id, report_emb.kind == "report",
                                    report_emb.model_id == model_id))
        .where(or_(needs_images, needs_report))
        .order_by(Study.study_uid)
        .limit(limit)
    )
    if after is not None:
        query = query.where(Study.study_uid > after)
    return [(r[0], r[1], r[2], bool(r[3]), bool(r[4])) for r in s.execute(query).all()]


def pending_studies(s: Session, model_id: str, after: str | None, limit: int,
                    shard: tuple[int, int]) -> list[PendingStudy]:
    """The next `limit` studies of `shard` lacking embeddings of `model_id`, by study UID after `after`."""
    index, count = shard
    chosen: list[tuple[int, str, int | None, bool, bool]] = []
    while len(chosen) < limit:
        rows = pending_rows(s, model_id, after, limit * count)
        chosen += [row for row in rows if shard_of(row[1], count) == index][: limit - len(chosen)]
        if len(rows) < limit * count:
            break
        after = rows[-1][1]
    return _load(s, chosen)


def _load(s: Session, rows: list[tuple[int, str, int | None, bool, bool]]) -> list[PendingStudy]:
    """Instances (of studies needing images) and latest report texts (of those needing a report)."""
    image_ids = [row[0] for row in rows if row[3]]
    instances: dict[int, list[InstanceView]] = {}
    uids = {row[0]: row[1] for row in rows}
    for start in range(0, len(image_ids), 500):  # stay under SQL parameter limits
        found = s.execute(
            select(Series.study_id, Instance, Series.series_uid)
            .join(Series, Instance.series_id == Series.id)
            .where(Series.study_id.in_(image_ids[start : start + 500]))
            .order_by(Series.id, Instance.id)
        ).all()
        for study_id, instance, series_uid in found:
            instances.setdefault(study_id, []).append(read.instance_view(instance, series_uid, uids[study_id]))
    report_ids = [row[2] for row in rows if row[4]]
    texts: dict[int, str] = {}
    for start in range(0, len(report_ids), 500):
        chunk = report_ids[start : start + 500]
        texts.update(s.execute(select(Report.id, Report.text).where(Report.id.in_(chunk))).tuples().all())
    return [PendingStudy(study_uid=uid, instances=tuple(instances.get(study_id, ())),
                         report_text=texts.get(report_id) if needs_report else None,
                         needs_images=needs_images, needs_report=needs_report)
            for study_id, uid, report_id, needs_images, needs_report in rows]
