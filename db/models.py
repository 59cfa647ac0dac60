"""The case store's tables: patients, studies, series, instances, reports, embeddings, audit events (and
their chain's head), users.

Every change to these classes needs a migration in `db/migrations/versions/`; the test suite compares
the models with the migrated schema and fails on any difference.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    event,
    inspect,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from db.records import StoreError

# Deterministic constraint names, so later migrations (and SQLite batch mode) can refer to them.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

STUDY_STATUSES = ("new", "drafted", "signed")
REPORT_STATUSES = ("draft", "signed")
EMBEDDING_KINDS = ("image", "report")
# viewer: reads; clinician: also ingests, drafts, edits, signs, exports; admin: reads, audit trail, accounts.
USER_ROLES = ("viewer", "clinician", "admin")


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """A timestamp stored as UTC and always read back timezone-aware.

    SQLite has no timezone type and returns naive datetimes; PostgreSQL's `timestamptz` keeps the
    offset. Either way callers get aware UTC values, and naive input is refused rather than guessed.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise StoreError(f"timestamp {value!r}: got a naive datetime, expected a timezone-aware one")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Patient(Base):
    """A patient, known only by a pseudonymous id (the store never sees real names)."""

    __tablename__ = "patients"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pseudonym: Mapped[str] = mapped_column(String, unique=True)


class Study(Base):
    """A DICOM study; `status` follows its latest report version that is not the model's draft (`db.versions`):
    none → "new", a person's draft → "drafted", a signed version → "signed". `clinical_question` is the
    indication a clinician gave for it."""

    __tablename__ = "studies"
    __table_args__ = (CheckConstraint(_in("status", STUDY_STATUSES), name="status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(String, unique=True)
    # Nullable: a file without PatientID belongs to no known patient (rather than one shared "" patient).
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patients.id"), index=True)
    study_date: Mapped[str] = mapped_column(String(8), default="")
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    status: Mapped[str] = mapped_column(String(16), default="new", index=True)
    # The indication / history a clinician gave (scrubbed); None: none given (migration 0004).
    clinical_question: Mapped[str | None] = mapped_column(Text)

    patient: Mapped[Patient | None] = relationship()


class Series(Base):
    """A DICOM series of one study."""

    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_uid: Mapped[str] = mapped_column(String, unique=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    modality: Mapped[str] = mapped_column(String, default="")
    body_part: Mapped[str] = mapped_column(String, default="")
    description: Mapped[str] = mapped_column(Text, default="")

    study: Mapped[Study] = relationship()


class Instance(Base):
    """One DICOM instance (image): where its file is, its content hash, its full metadata."""

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String, unique=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    path: Mapped[str] = mapped_column(Text)
    content_sha256: Mapped[str] = mapped_column(String(64))
    metadata_json: Mapped[dict[str, Any]] = mapped_column(JSON)
    # Copied out of metadata_json so that filters are plain indexed columns.
    modality: Mapped[str] = mapped_column(String, default="", index=True)
    body_part: Mapped[str] = mapped_column(String, default="", index=True)
    preview_png: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    series: Mapped[Series] = relationship()


class Report(Base):
    """One version of a study's report. Drafts may be edited in place; signed versions never change."""

    __tablename__ = "reports"
    __table_args__ = (
        UniqueConstraint("study_id", "version"),
        CheckConstraint(_in("status", REPORT_STATUSES), name="status"),
        CheckConstraint("version >= 1", name="version_positive"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"))
    version: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    sections_json: Mapped[list[list[str]]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))
    author: Mapped[str] = mapped_column(String)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    signed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    signed_by: Mapped[str | None] = mapped_column(String)
    source: Mapped[str] = mapped_column(String)

    study: Mapped[Study] = relationship()


class Embedding(Base):
    """A model's vector for an instance (kind "image") or a report version (kind "report").

    `owner_key` ("instance:<sop_uid>" / "report:<report id>") is never NULL, so the unique
    constraint on (kind, owner_key, model_id) holds on every database; a constraint over the two
    nullable foreign keys would not, as NULLs never collide in a unique constraint.
    """

    __tablename__ = "embeddings"
    __table_args__ = (
        UniqueConstraint("kind", "owner_key", "model_id"),
        CheckConstraint(
            "(kind = 'image' AND instance_id IS NOT NULL AND report_id IS NULL)"
            " OR (kind = 'report' AND report_id IS NOT NULL AND instance_id IS NULL)",
            name="owner",
        ),
        CheckConstraint("dim > 0", name="dim_positive"),
        Index("ix_embeddings_kind_model_id", "kind", "model_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    owner_key: Mapped[str] = mapped_column(String)
    instance_id: Mapped[int | None] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"), index=True)
    report_id: Mapped[int | None] = mapped_column(ForeignKey("reports.id", ondelete="CASCADE"), index=True)
    model_id: Mapped[str] = mapped_column(String)
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)  # float32 little-endian, `dim` values
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Event(Base):
    """An audit record (append-only): who did what to which study, when."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    time: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String, index=True)
    user: Mapped[str] = mapped_column(String)
    # A plain string, not a foreign key: the trail must also record actions on unknown studies.
    study_uid: Mapped[str | None] = mapped_column(String, index=True)
    detail_json: Mapped[dict[str, Any]] = mapped_column(JSON)
    # The hash chain (see db.audit): the previous event's row_hash, and this row's own (hex).
    prev_hash: Mapped[str] = mapped_column(String(64))
    row_hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """The audit trail's anchor, one row: the last event's id and hash, the id of the key that chained
    them, and a MAC over those (see `db.audit`); it catches deleted last events."""

    __tablename__ = "audit_head"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_id: Mapped[int | None] = mapped_column(Integer)  # None: no event yet
    last_hash: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str] = mapped_column(String(16))
    head_mac: Mapped[str] = mapped_column(String(64))


class User(Base):
    """An account of the review app: a unique name, a role and a password hash (see `db.accounts`).

    Accounts are disabled, never deleted: the audit trail keeps naming them.
    """

    __tablename__ = "users"
    __table_args__ = (CheckConstraint(_in("role", USER_ROLES), name="role"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)


def _stored_status(report: Report) -> str | None:
    history = inspect(report).attrs.status.history
    return (list(history.deleted) + list(history.unchanged) + [None])[0]


# Invariants, a last line of defence under the store's own logic: a signed version is a legal
# record, and the audit trail is append-only (migrations 0002 and 0003 also make the database itself
# refuse UPDATE, DELETE and out-of-order INSERTs on `events`, for writers that bypass the ORM).
@event.listens_for(Report, "before_update")
def _signed_is_final(_mapper: Any, _connection: Any, report: Report) -> None:
    changed = any(attr.history.has_changes() for attr in inspect(report).attrs)
    if changed and _stored_status(report) == "signed":
        raise StoreError(f"report {report.id}: is signed; expected a draft (signed versions never change)")


@event.listens_for(Report, "before_delete")
def _signed_is_kept(_mapper: Any, _connection: Any, report: Report) -> None:
    if _stored_status(report) == "signed":
        raise StoreError(f"report {report.id}: is signed; expected a draft (signed versions are never deleted)")


@event.listens_for(Event, "before_update")
@event.listens_for(Event, "before_delete")
def _append_only(_mapper: Any, _connection: Any, row: Event) -> None:
    raise StoreError(f"event {row.id}: the audit trail is append-only; expected no update or delete")
