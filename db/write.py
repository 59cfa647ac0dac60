"""Write-side helpers of `db.store`: input checks and writes inside the caller's Session.

Nothing here opens a Session or commits; `CaseStore` owns the transactions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from sqlalchemy import insert, select
from sqlalchemy.orm import InstrumentedAttribute, Session

import db.audit as audit
from db.models import (
    Embedding,
    Instance,
    Patient,
    Report,
    Series,
    Study,
    utcnow,
)
from db.read import CHUNK
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


MAX_REPORT_CHARS = 100_000  # a long radiology report is under 10,000; a 10 MB "report" is an attack or an accident
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # C0 controls and DEL, but tab and line breaks


def check_report_text(what: str, value: Any, empty_ok: bool = False) -> str:
    """`check_text` for a report a person wrote: at most `MAX_REPORT_CHARS` characters and no control
    characters (a NUL or ESC would reach the DICOM SR and every export)."""
    text = check_text(what, value, empty_ok)
    if len(text) > MAX_REPORT_CHARS:
        raise StoreError(f"{what}: {len(text)} characters; expected at most {MAX_REPORT_CHARS}")
    if found := _CONTROL.search(text):
        raise StoreError(f"{what}: control character U+{ord(found.group()):04X} at position {found.start()}; "
                         "expected printable text (tabs and line breaks are fine)")
    return text


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


def ids_by_key(s: Session, column: InstrumentedAttribute, keys: Iterable[str]) -> dict[str, int]:
    """The ids of the rows of `column`'s entity whose `column` is in `keys`, by key (one query per chunk)."""
    unique = list(dict.fromkeys(keys))
    found: dict[str, int] = {}
    entity = column.class_
    for start in range(0, len(unique), CHUNK):
        rows = s.execute(select(column, entity.id).where(column.in_(unique[start : start + CHUNK])))
        found.update(rows.tuples().all())
    return found


# -------------------------------------------------------------------- writes
# Ingest writes new rows with one multi-row INSERT per table (`session.execute(insert(Model), rows)`)
# and looks their ids up afterwards where needed: the ORM's unit of work would insert them one
# statement per row on SQLite, which cannot return the ids of a multi-row INSERT in order.
def add_instances(s: Session, items: Sequence[Any]) -> tuple[int, int, set[str]]:
    """Add new instances with their patients, studies and series.

    Returns:
        (added, skipped, UIDs of the studies touched).
    """
    checked = [(item, _checked_instance(item)) for item in items]
    known_rows = by_key(s, Instance.sop_instance_uid, (item.sop_instance_uid for item in items))
    stored = {uid: row.content_sha256 for uid, row in known_rows.items()}
    tree = _Tree(s, items)
    new: list[tuple[Any, str, dict[str, Any]]] = []
    skipped = 0
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
        tree.add(item, metadata)
        new.append((item, sha, metadata))
        stored[uid] = sha
    series_ids = tree.write()
    if new:
        s.execute(insert(Instance), [
            {"sop_instance_uid": item.sop_instance_uid, "series_id": series_ids[item.series_uid], "path": item.path,
             "content_sha256": sha, "metadata_json": metadata, "modality": _meta_text(metadata, "modality"),
             "body_part": _meta_text(metadata, "body_part"), "preview_png": item.preview_png}
            for item, sha, metadata in new
        ])
    return len(new), skipped, {item.study_uid for item in items}


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
    """The patients, studies and series one ingest call touches: the stored ones fetched once, the
    new ones checked as instances are added (`add`) and then inserted table by table (`write`)."""

    def __init__(self, s: Session, items: Sequence[Any]) -> None:
        self.s = s
        self.patients = by_key(s, Patient.pseudonym, (i.patient_id for i in items if i.patient_id))
        self.studies = by_key(s, Study.study_uid, (i.study_uid for i in items))
        self.series_rows = by_key(s, Series.series_uid, (i.series_uid for i in items))
        self.new_patients: set[str] = set()
        self.new_studies: dict[str, dict[str, Any]] = {}
        self.new_series: dict[str, dict[str, Any]] = {}

    def add(self, item: Any, metadata: dict[str, Any]) -> None:
        """Note the series of `item` (under its study) if new; StoreError if it is another study's."""
        self._study(item, metadata)
        series = self.series_rows.get(item.series_uid)
        stored = series.study.study_uid if series is not None else self.new_series.get(item.series_uid, {}).get("study")
        if stored is None:
            self.new_series[item.series_uid] = {
                "series_uid": item.series_uid, "study": item.study_uid, "modality": _meta_text(metadata, "modality"),
                "body_part": _meta_text(metadata, "body_part"),
                "description": _meta_text(metadata, "series_description"),
            }
        elif stored != item.study_uid:
            raise StoreError(
                f"series {item.series_uid}: stored under study {stored}, got study_uid {item.study_uid}; "
                "expected the same study"
            )

    def _study(self, item: Any, metadata: dict[str, Any]) -> None:
        study = self.studies.get(item.study_uid)
        if study is not None:
            stored = study.patient.pseudonym if study.patient else ""
        elif item.study_uid in self.new_studies:
            stored = self.new_studies[item.study_uid]["patient"]
        else:
            date = _meta_text(metadata, "study_date")
            self.new_studies[item.study_uid] = {
                "study_uid": item.study_uid, "patient": item.patient_id, "status": "new",
                "study_date": date if _DATE.fullmatch(date) else "",  # the raw value stays in metadata
                "description": _meta_text(metadata, "study_description"),
            }
            if item.patient_id and item.patient_id not in self.patients:
                self.new_patients.add(item.patient_id)
            return
        if stored != item.patient_id:
            raise StoreError(
                f"study {item.study_uid}: patient_id {item.patient_id!r} differs from the stored {stored!r}; "
                "expected the same patient"
            )

    def write(self) -> dict[str, int]:
        """Insert the new patients, studies and series; every series' id by SeriesInstanceUID.

        A study without PatientID gets no patient row, rather than one "" patient shared by strangers.
        """
        s = self.s
        patients = {pseudonym: row.id for pseudonym, row in self.patients.items()}
        if self.new_patients:
            s.execute(insert(Patient), [{"pseudonym": pseudonym} for pseudonym in self.new_patients])
            patients.update(ids_by_key(s, Patient.pseudonym, self.new_patients))
        studies = {uid: row.id for uid, row in self.studies.items()}
        if self.new_studies:
            rows = [{**{k: v for k, v in study.items() if k != "patient"}, "patient_id": patients.get(study["patient"])}
                    for study in self.new_studies.values()]
            s.execute(insert(Study), rows)
            studies.update(ids_by_key(s, Study.study_uid, self.new_studies))
        series = {uid: row.id for uid, row in self.series_rows.items()}
        if self.new_series:
            rows = [{**{k: v for k, v in new.items() if k != "study"}, "study_id": studies[new["study"]]}
                    for new in self.new_series.values()]
            s.execute(insert(Series), rows)
            series.update(ids_by_key(s, Series.series_uid, self.new_series))
        return series


def latest_report_ids(s: Session, study_ids: Sequence[int]) -> dict[int, int]:
    """Per study id: the id of its highest report version (studies without a report are absent)."""
    best: dict[int, tuple[int, int]] = {}
    for start in range(0, len(study_ids), CHUNK):
        rows = s.execute(select(Report.study_id, Report.version, Report.id)
                         .where(Report.study_id.in_(study_ids[start : start + CHUNK])))
        for study_id, version, report_id in rows:
            if version > best.get(study_id, (0, 0))[0]:
                best[study_id] = (version, report_id)
    return {study_id: report_id for study_id, (_, report_id) in best.items()}


def put_embeddings(s: Session, items: Sequence[Any]) -> list[Embedding]:
    """Insert or replace embeddings; returns the row written for each item, in order.

    New rows go in with one INSERT per call; a later item for the same key replaces an earlier one.
    """
    s.flush()  # owners added in this transaction need their ids
    owners = _owners(s, items)
    dims: dict[tuple[str, str], int] = {}
    rows: dict[tuple[str, str, str], Embedding] = {}
    for kind, model_id in dict.fromkeys((item.kind, item.model_id) for item in items):
        same = (Embedding.kind == kind, Embedding.model_id == model_id)
        keys = [owner[0] for (owner_kind, _), owner in owners.items() if owner_kind == kind]
        rows.update({(kind, model_id, key): row for key, row in by_key(s, Embedding.owner_key, keys, *same).items()})
        stored_dim = s.scalar(select(Embedding.dim).where(*same).limit(1))
        if stored_dim is not None:
            dims[(kind, model_id)] = stored_dim
    new: dict[tuple[str, str, str], dict[str, Any]] = {}
    written: list[tuple[str, str, str]] = []
    for item in items:
        blob, dim = _vector(item)
        expected = dims.setdefault((item.kind, item.model_id), dim)
        if dim != expected:
            raise StoreError(
                f"embedding {item.key!r}: dim {dim}; expected {expected} like the other {item.kind} embeddings "
                f"of model {item.model_id!r}"
            )
        owner_key, instance_id, report_id = owners[(item.kind, item.key)]
        key = (item.kind, item.model_id, owner_key)
        row = rows.get(key)
        if row is None:
            new[key] = {"kind": item.kind, "owner_key": owner_key, "instance_id": instance_id, "report_id": report_id,
                        "model_id": item.model_id, "dim": dim, "vector": blob}
        else:
            row.dim, row.vector, row.created_at = dim, blob, utcnow()  # an embedding is derived: replace it
        written.append(key)
    if new:
        s.execute(insert(Embedding), list(new.values()))
        for kind, model_id in dict.fromkeys((kind, model_id) for kind, model_id, _ in new):
            keys = [owner_key for k, m, owner_key in new if (k, m) == (kind, model_id)]
            found = by_key(s, Embedding.owner_key, keys, Embedding.kind == kind, Embedding.model_id == model_id)
            rows.update({(kind, model_id, owner_key): row for owner_key, row in found.items()})
    return [rows[key] for key in written]


def _owners(s: Session, items: Sequence[Any]) -> dict[tuple[str, str], tuple[str, int | None, int | None]]:
    """(kind, key) → (owner_key, instance_id, report_id); StoreError for an unknown key.

    A few queries for the whole call: the instances, the studies, their latest report versions.
    """
    for item in items:
        check_kind(f"embedding {item.key!r}:", item.kind)
        check_text(f"embedding {item.key!r}: model_id", item.model_id)
    images = by_key(s, Instance.sop_instance_uid, (i.key for i in items if i.kind == "image"))
    studies = by_key(s, Study.study_uid, (i.key for i in items if i.kind == "report" and isinstance(i.key, str)))
    reports = latest_report_ids(s, [study.id for study in studies.values()])
    owners: dict[tuple[str, str], tuple[str, int | None, int | None]] = {}
    for item in items:
        if (item.kind, item.key) in owners:
            continue
        if item.kind == "image":
            if item.key not in images:
                raise StoreError(f"embedding {item.key!r}: instance not in the store; expected a stored SOPInstanceUID")
            owners[(item.kind, item.key)] = (f"instance:{item.key}", images[item.key].id, None)
            continue
        study = studies.get(item.key)
        if study is None:
            raise StoreError(f"study {item.key!r}: not in the store; expected a stored StudyInstanceUID")
        report_id = reports.get(study.id)
        if report_id is None:
            raise StoreError(f"embedding {item.key!r}: study has no report; expected a study with a report")
        owners[(item.kind, item.key)] = (f"report:{report_id}", None, report_id)
    return owners


def log(s: Session, kind: str, user: str, study_uid: str | None, detail: dict[str, Any]) -> None:
    """Append one audit event to the hash chain, with the audit key of the store whose Session `s` is.

    Raises:
        StoreError: `s` is not a store's Session (it has no audit key), or see `db.audit.append`.
    """
    if audit.SESSION_KEY not in s.info:
        raise StoreError("audit event: the Session has no audit key; expected one opened by Database._session")
    audit.append(s, s.info[audit.SESSION_KEY], kind, user, study_uid, detail)
