"""Write-side helpers of `db.store`: input checks and writes inside the caller's Session.

Nothing here opens a Session or commits; `CaseStore` owns the transactions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import InstrumentedAttribute, Session

from db.models import (
    REPORT_STATUSES,
    Embedding,
    Event,
    Instance,
    Patient,
    Report,
    Series,
    Study,
    utcnow,
)
from db.read import CHUNK, latest_report, study_or_error
from db.records import StoreError

KINDS = ("image", "report")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_DATE = re.compile(r"\d{8}")


# -------------------------------------------------------------------- checks
def check_text(what: str, value: Any, empty_ok: bool = False) -> str:
    """`value` if it is a string (non-blank unless `empty_ok`), else StoreError naming `what`."""
    if not isinstance(value, str) or not (empty_ok or value.strip()):
        raise StoreError(f"{what}: got {value!r}, expected a {'' if empty_ok else 'non-empty '}string")
    return value


def check_json(what: str, value: Any) -> dict[str, Any]:
    """`value` if it is a dict that strict JSON can hold (no NaN), else StoreError."""
    try:
        ok = isinstance(value, dict) and bool(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise StoreError(f"{what}: {err}; expected a JSON-serialisable dict") from None
    if not ok:
        raise StoreError(f"{what}: got {type(value).__name__}, expected a JSON-serialisable dict")
    return value


def check_kind(what: str, kind: str) -> str:
    """`kind` if it is "image" or "report", else StoreError."""
    if kind not in KINDS:
        raise StoreError(f"{what} kind: got {kind!r}, expected one of {KINDS}")
    return kind


def check_limit(what: str, limit: int) -> None:
    """StoreError unless `limit` is an int >= 1."""
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise StoreError(f"{what} limit: got {limit!r}, expected an integer >= 1")


def sections_of(what: str, sections: Sequence[tuple[str, str]]) -> list[list[str]]:
    """Sections as JSON-ready [[name, text], ...]; StoreError unless each is a pair of strings."""
    if not isinstance(sections, (list, tuple)):
        raise StoreError(f"{what}: got {type(sections).__name__}, expected a list of (name, text) pairs")
    pairs = []
    for pair in sections:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2 or not all(isinstance(p, str) for p in pair):
            raise StoreError(f"{what}: got item {pair!r}, expected a (name, text) pair of strings")
        pairs.append([pair[0], pair[1]])
    return pairs


def _vector(item: Any) -> tuple[bytes, int]:
    try:
        array = np.asarray(item.vector, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise StoreError(f"embedding {item.key!r}: vector {err}; expected a [D] float array") from None
    if array.ndim != 1 or array.size == 0 or not np.isfinite(array).all():
        raise StoreError(
            f"embedding {item.key!r}: vector of shape {array.shape} (finite: {bool(np.isfinite(array).all())}); "
            "expected a non-empty 1-D array of finite values"
        )
    return array.astype("<f4", copy=False).tobytes(), int(array.size)


# ------------------------------------------------------------------- lookup
def by_key(s: Session, column: InstrumentedAttribute, keys: Iterable[str], *where: Any) -> dict[str, Any]:
    """Rows of `column`'s entity whose `column` is in `keys`, by key (one query per chunk)."""
    unique = list(dict.fromkeys(keys))
    found: dict[str, Any] = {}
    for start in range(0, len(unique), CHUNK):
        query = select(column.class_).where(column.in_(unique[start : start + CHUNK]), *where)
        found.update({getattr(row, column.key): row for row in s.scalars(query)})
    return found


# -------------------------------------------------------------------- writes
def add_instances(s: Session, items: Sequence[Any]) -> tuple[int, int, set[str]]:
    """Add new instances with their patients, studies and series.

    Returns:
        (added, skipped, UIDs of the studies touched).
    """
    checked = [(item, _checked_instance(item)) for item in items]
    known_rows = by_key(s, Instance.sop_instance_uid, (item.sop_instance_uid for item in items))
    stored = {uid: row.content_sha256 for uid, row in known_rows.items()}
    tree = _Tree(s, items)
    added = skipped = 0
    for item, (sha, metadata) in checked:
        uid = item.sop_instance_uid
        known = stored.get(uid)
        if known is not None:
            if known != sha:
                raise StoreError(
                    f"instance {uid}: content_sha256 {sha} differs from the stored {known}; expected the same "
                    "content for the same SOPInstanceUID"
                )
            skipped += 1
            continue
        s.add(Instance(
            sop_instance_uid=uid, series=tree.series(item, metadata), path=item.path, content_sha256=sha,
            metadata_json=metadata, modality=_meta_text(metadata, "modality"),
            body_part=_meta_text(metadata, "body_part"), preview_png=item.preview_png,
        ))
        stored[uid] = sha
        added += 1
    return added, skipped, {item.study_uid for item in items}


def _checked_instance(item: Any) -> tuple[str, dict[str, Any]]:
    uid = check_text("instance sop_instance_uid", item.sop_instance_uid)
    for field in ("study_uid", "series_uid"):
        check_text(f"instance {uid}: {field}", getattr(item, field))
    check_text(f"instance {uid}: patient_id", item.patient_id, empty_ok=True)
    check_text(f"instance {uid}: path", item.path, empty_ok=True)
    sha = item.content_sha256.lower() if isinstance(item.content_sha256, str) else item.content_sha256
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        raise StoreError(f"instance {uid}: content_sha256 {item.content_sha256!r}; expected 64 hex characters")
    if item.preview_png is not None and not isinstance(item.preview_png, (bytes, bytearray)):
        kind = type(item.preview_png).__name__
        raise StoreError(f"instance {uid}: preview_png of type {kind}; expected bytes or None")
    return sha, check_json(f"instance {uid}: metadata", item.metadata)


def _meta_text(metadata: dict[str, Any], key: str) -> str:
    value = metadata.get(key)
    return "" if value is None else str(value)


class _Tree:
    """The patients, studies and series one ingest call touches, fetched once and created as needed."""

    def __init__(self, s: Session, items: Sequence[Any]) -> None:
        self.s = s
        self.patients = by_key(s, Patient.pseudonym, (i.patient_id for i in items if i.patient_id))
        self.studies = by_key(s, Study.study_uid, (i.study_uid for i in items))
        self.series_rows = by_key(s, Series.series_uid, (i.series_uid for i in items))

    def series(self, item: Any, metadata: dict[str, Any]) -> Series:
        """The series of `item`, created under its study if new; StoreError if it is another study's."""
        study = self._study(item, metadata)
        series = self.series_rows.get(item.series_uid)
        if series is None:
            series = Series(
                series_uid=item.series_uid, study=study, modality=_meta_text(metadata, "modality"),
                body_part=_meta_text(metadata, "body_part"), description=_meta_text(metadata, "series_description"),
            )
            self.s.add(series)
            self.series_rows[item.series_uid] = series
        elif series.study is not study:
            raise StoreError(
                f"series {item.series_uid}: stored under study {series.study.study_uid}, got study_uid "
                f"{item.study_uid}; expected the same study"
            )
        return series

    def _study(self, item: Any, metadata: dict[str, Any]) -> Study:
        study = self.studies.get(item.study_uid)
        if study is None:
            date = _meta_text(metadata, "study_date")
            study = Study(
                study_uid=item.study_uid, patient=self._patient(item.patient_id), status="new",
                study_date=date if _DATE.fullmatch(date) else "",  # the raw value stays in metadata
                description=_meta_text(metadata, "study_description"),
            )
            self.s.add(study)
            self.studies[item.study_uid] = study
            return study
        stored = study.patient.pseudonym if study.patient else ""
        if stored != item.patient_id:
            raise StoreError(
                f"study {item.study_uid}: patient_id {item.patient_id!r} differs from the stored {stored!r}; "
                "expected the same patient"
            )
        return study

    def _patient(self, pseudonym: str) -> Patient | None:
        if not pseudonym:
            return None  # no PatientID: no patient row, rather than one "" patient shared by strangers
        if pseudonym not in self.patients:
            self.patients[pseudonym] = Patient(pseudonym=pseudonym)
            self.s.add(self.patients[pseudonym])
        return self.patients[pseudonym]


def new_report(
    s: Session, study: Study, latest: Report | None, text: str, sections: list[list[str]], status: str,
    author: str, source: str,
) -> Report:
    """Add the next report version of `study` (after `latest`)."""
    report = Report(
        study=study, version=latest.version + 1 if latest else 1, text=text, sections_json=sections,
        status=status, author=author, source=source,
    )
    if status == "signed":
        report.signed_by, report.signed_at = author, utcnow()
    s.add(report)
    return report


def add_reports(s: Session, items: Sequence[Any]) -> int:
    """Add each report as its study's next version, unless a stored version has the same text."""
    added = 0
    for item in items:
        study = study_or_error(s, check_text("report study_uid", item.study_uid))
        text = check_text(f"report of study {item.study_uid}: text", item.text)
        sections = sections_of(f"report of study {item.study_uid}: sections", item.sections)
        author = check_text(f"report of study {item.study_uid}: author", item.author)
        if item.status not in REPORT_STATUSES:
            raise StoreError(
                f"report of study {item.study_uid}: status {item.status!r}; expected one of {REPORT_STATUSES}"
            )
        if s.scalar(select(Report.id).where(Report.study_id == study.id, Report.text == text).limit(1)):
            continue
        new_report(s, study, latest_report(s, study), text, sections, item.status, author, "ingest")
        study.status = "signed" if item.status == "signed" else "drafted"
        added += 1
        s.flush()  # the next report of this study must see this version
    return added


def put_embeddings(s: Session, items: Sequence[Any]) -> list[Embedding]:
    """Insert or replace embeddings; returns the row written for each item, in order."""
    s.flush()  # owners added in this transaction need their ids
    owners = _owners(s, items)
    dims: dict[tuple[str, str], int] = {}
    rows: dict[tuple[str, str, str], Embedding] = {}
    written: list[Embedding] = []
    for kind, model_id in dict.fromkeys((item.kind, item.model_id) for item in items):
        same = (Embedding.kind == kind, Embedding.model_id == model_id)
        keys = [owner[0] for (owner_kind, _), owner in owners.items() if owner_kind == kind]
        rows.update({(kind, model_id, key): row for key, row in by_key(s, Embedding.owner_key, keys, *same).items()})
        stored_dim = s.scalar(select(Embedding.dim).where(*same).limit(1))
        if stored_dim is not None:
            dims[(kind, model_id)] = stored_dim
    for item in items:
        blob, dim = _vector(item)
        expected = dims.setdefault((item.kind, item.model_id), dim)
        if dim != expected:
            raise StoreError(
                f"embedding {item.key!r}: dim {dim}; expected {expected} like the other {item.kind} embeddings "
                f"of model {item.model_id!r}"
            )
        owner_key, instance_id, report_id = owners[(item.kind, item.key)]
        row = rows.get((item.kind, item.model_id, owner_key))
        if row is None:
            row = Embedding(kind=item.kind, owner_key=owner_key, instance_id=instance_id, report_id=report_id,
                            model_id=item.model_id)
            rows[(item.kind, item.model_id, owner_key)] = row
            s.add(row)
        row.dim, row.vector, row.created_at = dim, blob, utcnow()  # an embedding is derived: replace it
        written.append(row)
    return written


def _owners(s: Session, items: Sequence[Any]) -> dict[tuple[str, str], tuple[str, int | None, int | None]]:
    """(kind, key) → (owner_key, instance_id, report_id); StoreError for an unknown key."""
    for item in items:
        check_kind(f"embedding {item.key!r}:", item.kind)
        check_text(f"embedding {item.key!r}: model_id", item.model_id)
    images = by_key(s, Instance.sop_instance_uid, (i.key for i in items if i.kind == "image"))
    owners: dict[tuple[str, str], tuple[str, int | None, int | None]] = {}
    for item in items:
        if (item.kind, item.key) in owners:
            continue
        if item.kind == "image":
            if item.key not in images:
                raise StoreError(f"embedding {item.key!r}: instance not in the store; expected a stored SOPInstanceUID")
            owners[(item.kind, item.key)] = (f"instance:{item.key}", images[item.key].id, None)
            continue
        report = latest_report(s, study_or_error(s, item.key))
        if report is None:
            raise StoreError(f"embedding {item.key!r}: study has no report; expected a study with a report")
        owners[(item.kind, item.key)] = (f"report:{report.id}", None, report.id)
    return owners


def log(s: Session, kind: str, user: str, study_uid: str | None, detail: dict[str, Any]) -> None:
    """Append one audit event."""
    s.add(Event(time=utcnow(), kind=kind, user=user, study_uid=study_uid, detail_json=detail))
