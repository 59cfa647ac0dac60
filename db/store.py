"""The case store: DICOM studies, their report versions, embeddings and the audit trail, in one database.

Every public method of `CaseStore` is one transaction: it is written whole or not at all. The store
is the source of truth; vector indexes are rebuilt from `embedding_matrix`, joined on plain string
keys (SOPInstanceUID for images, StudyInstanceUID for reports).

Report versions: drafts are mutable, signed versions never change. Saving a draft over a signed
version, or signing over one (an amendment), adds a new version. A study's status follows its
latest version: "new" (no report), "drafted" or "signed".
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session

from db import _rows, _views, accounts, embedding_queries, pgvector
from db._rows import check_json, check_text, latest_report, sections_of, study_or_error
from db._views import report_view
from db.accounts import UserView
from db.engine import WRITE_OPTION, make_engine, migrate
from db.pgvector import VectorHit
from db.models import (
    STUDY_STATUSES,
    Embedding,
    Event,
    Instance,
    Patient,
    Report,
    Series,
    Study,
    User,
    utcnow,
)
from db.records import (
    EmbeddingInput,
    EmbeddingMatrix,
    IngestSummary,
    InstanceInput,
    InstanceView,
    PendingStudy,
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
    "PendingStudy",
    "ReportInput",
    "ReportView",
    "StoreError",
    "StudyView",
    "UserView",
    "VectorHit",
]


class CaseStore:
    """A case store at a SQLAlchemy URL, migrated to the newest schema when opened.

    Args:
        url: "sqlite:///path/to/cases.db" (the folder is created), "sqlite://" (in memory), or any
            SQLAlchemy URL such as "postgresql+psycopg://user@host/medcm".

    Raises:
        StoreError: `url` is not a database URL.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            self._engine = make_engine(url)
        except ArgumentError as err:
            raise StoreError(f"url {url!r}: {err}; expected e.g. sqlite:///cases.db") from None
        self._writer = self._engine.execution_options(**{WRITE_OPTION: True})
        self._closed = False
        try:
            migrate(self._engine)
            with self._engine.connect() as connection:
                self._pgvector = pgvector.is_enabled(connection)  # then every write fills its column too
        except BaseException:
            self._engine.dispose()
            raise

    def __repr__(self) -> str:
        return f"CaseStore({self._engine.url.render_as_string(hide_password=True)!r})"

    def __enter__(self) -> CaseStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the database connections; the store cannot be used afterwards."""
        self._closed = True
        self._engine.dispose()

    @contextmanager
    def _session(self, write: bool = False) -> Iterator[Session]:
        # The one place a Session is opened: one transaction, committed on success, else rolled back.
        if self._closed:
            raise StoreError(f"{self!r}: is closed; expected an open store")
        with Session(self._writer if write else self._engine) as s, s.begin():
            yield s

    # ------------------------------------------------------------------ writes
    def ingest(
        self,
        instances: Sequence[InstanceInput],
        reports: Sequence[ReportInput] = (),
        embeddings: Sequence[EmbeddingInput] = (),
        user: str = "system",
    ) -> IngestSummary:
        """Store instances (with their patient, study and series), reports and embeddings at once.

        An instance already stored with the same content hash is skipped; a report whose text equals
        any stored version of its study is skipped (so re-ingesting an archive never buries a newer
        signed version), otherwise it becomes the next version. Embeddings are written after the
        reports of this call (a "report" embedding goes to its study's latest version) and replace
        any earlier one of the same model for the same key. Records one "ingest" event.

        Args:
            instances: DICOM instances.
            reports: reports of stored studies or of studies in `instances`.
            embeddings: vectors for instances or studies' latest reports.
            user: recorded in the audit trail.

        Returns:
            The counts of rows written and instances skipped.

        Raises:
            StoreError: an invalid input, an unknown key, or an instance whose SOPInstanceUID is
                stored with different content; nothing of the call is written then.
        """
        check_text("ingest user", user)
        with self._session(write=True) as s:
            added, skipped, studies = _rows.add_instances(s, instances)
            s.flush()  # reports and embeddings refer to the new rows' ids
            added_reports = _rows.add_reports(s, reports)
            added_embeddings = len(self._put_embeddings(s, embeddings))
            studies |= {r.study_uid for r in reports}
            detail = {
                "added_instances": added,
                "skipped_instances": skipped,
                "added_reports": added_reports,
                "added_embeddings": added_embeddings,
                "study_uids": sorted(studies),
            }
            _rows.log(s, "ingest", user, next(iter(studies)) if len(studies) == 1 else None, detail)
        return IngestSummary(added, skipped, added_reports, added_embeddings)

    def save_draft(
        self, study_uid: str, text: str, sections: Sequence[tuple[str, str]], author: str, source: str = "draft",
        user: str | None = None,
    ) -> ReportView:
        """Save a draft: update the latest version in place if it is a draft, else add a draft version.

        Args:
            study_uid: a stored study.
            text: the draft's full text (may be empty).
            sections: [(name, text)] as split by the caller.
            author: who (or which model) wrote it.
            source: "draft" (generated) or "edit" (a person's edit), or another label; recorded on
                the version and as the event kind ("draft" for "draft", otherwise "edit").
            user: who asked for it, recorded in the audit trail (default: `author`); e.g. the
                clinician who had the model write a draft whose author is the model.

        Returns:
            The saved draft version.

        Raises:
            StoreError: unknown study, or an invalid argument.
        """
        check_text("save_draft text", text, empty_ok=True)
        pairs = sections_of("save_draft sections", sections)
        check_text("save_draft author", author)
        check_text("save_draft source", source)
        user = author if user is None else check_text("save_draft user", user)
        with self._session(write=True) as s:
            study = study_or_error(s, study_uid)
            latest = latest_report(s, study)
            if latest is not None and latest.status == "draft":
                report, action = latest, "updated"
                report.text, report.sections_json, report.author, report.source = text, pairs, author, source
            else:
                report, action = _rows.new_report(s, study, latest, text, pairs, "draft", author, source), "created"
            study.status = "drafted"
            s.flush()
            detail = {"version": report.version, "report_id": report.id, "action": action, "source": source}
            _rows.log(s, "draft" if source == "draft" else "edit", user, study_uid, detail)
            return report_view(report, study_uid)

    def sign_report(self, study_uid: str, text: str, sections: Sequence[tuple[str, str]], signer: str) -> ReportView:
        """Sign a study's report with its final text.

        A latest draft becomes signed (with this text); otherwise (no report, or a signed latest
        version: an amendment) a new signed version is added. Signed versions are never modified.

        Args:
            study_uid: a stored study.
            text: the final report text (not empty).
            sections: [(name, text)] as split by the caller.
            signer: the signing clinician.

        Returns:
            The signed version.

        Raises:
            StoreError: unknown study, empty text or signer, or an invalid argument.
        """
        check_text("sign_report text", text)
        pairs = sections_of("sign_report sections", sections)
        check_text("sign_report signer", signer)
        with self._session(write=True) as s:
            study = study_or_error(s, study_uid)
            latest = latest_report(s, study)
            amendment = latest is not None and latest.status == "signed"
            if latest is not None and latest.status == "draft":
                report = latest
                if report.text != text:
                    report.source = "edit"  # the signer changed the draft while signing
                report.text, report.sections_json, report.status = text, pairs, "signed"
            else:
                report = _rows.new_report(s, study, latest, text, pairs, "signed", signer, "sign")
            report.signed_by, report.signed_at = signer, utcnow()
            study.status = "signed"
            s.flush()
            detail = {"version": report.version, "report_id": report.id, "amendment": amendment}
            _rows.log(s, "sign", signer, study_uid, detail)
            return report_view(report, study_uid)

    def add_embeddings(self, embeddings: Sequence[EmbeddingInput]) -> int:
        """Insert or replace embeddings (one transaction); see `ingest` for the keys.

        Returns:
            The number of embeddings written.

        Raises:
            StoreError: an invalid vector, an unknown key, or a study without a report.
        """
        with self._session(write=True) as s:
            return len(self._put_embeddings(s, embeddings))

    def _put_embeddings(self, s: Session, embeddings: Sequence[EmbeddingInput]) -> list[Embedding]:
        rows = _rows.put_embeddings(s, embeddings)
        if self._pgvector and rows:
            s.flush()  # the rows need their ids, and the trigger must see the new blobs before their vectors
            pgvector.write(s, [(row.id, row.vector) for row in rows])
        return rows

    def log_event(self, kind: str, user: str, study_uid: str | None = None, detail: dict | None = None) -> None:
        """Append an event to the audit trail (e.g. "view", "export", "login").

        Raises:
            StoreError: empty kind or user, or a detail that is not a JSON object.
        """
        check_text("log_event kind", kind)
        check_text("log_event user", user)
        if study_uid is not None:
            check_text("log_event study_uid", study_uid)
        check_json("log_event detail", {} if detail is None else detail)
        with self._session(write=True) as s:
            _rows.log(s, kind, user, study_uid, detail or {})

    # ------------------------------------------------------------------- reads
    def report_versions(self, study_uid: str) -> list[ReportView]:
        """Every report version of a study, oldest first. Raises StoreError for an unknown study."""
        with self._session() as s:
            study = study_or_error(s, study_uid)
            rows = s.scalars(select(Report).where(Report.study_id == study.id).order_by(Report.version))
            return [report_view(r, study_uid) for r in rows]

    def latest_report(self, study_uid: str, signed_only: bool = False) -> ReportView | None:
        """The newest report version (or newest signed one), None if there is none.

        Raises:
            StoreError: unknown study.
        """
        with self._session() as s:
            report = latest_report(s, study_or_error(s, study_uid), signed_only)
            return None if report is None else report_view(report, study_uid)

    def get_study(self, study_uid: str) -> StudyView:
        """A study with all its instances (by series, then in storage order).

        Raises:
            StoreError: unknown study.
        """
        with self._session() as s:
            study = study_or_error(s, study_uid)
            rows = s.execute(
                select(Instance, Series.series_uid)
                .join(Series, Instance.series_id == Series.id)
                .where(Series.study_id == study.id)
                .order_by(Series.id, Instance.id)
            ).all()
            instances = tuple(_views.instance_view(inst, series_uid, study_uid) for inst, series_uid in rows)
            pseudonym = study.patient.pseudonym if study.patient else ""
            return _views.study_view(study, pseudonym, _views.study_tags(s, [study.id]).get(study.id), instances)

    def list_studies(self, status: str | None = None, limit: int = 1000) -> list[StudyView]:
        """Studies, most recently stored first, without their instances (`instances` is empty: use
        `get_study` for those); modalities and body parts are filled.

        Args:
            status: only studies with this status ("new", "drafted", "signed").
            limit: at most this many.

        Raises:
            StoreError: unknown status or a limit below 1.
        """
        if status is not None and status not in STUDY_STATUSES:
            raise StoreError(f"list_studies status: got {status!r}, expected one of {STUDY_STATUSES} or None")
        _rows.check_limit("list_studies", limit)
        with self._session() as s:
            query = select(Study, Patient.pseudonym).outerjoin(Patient, Study.patient_id == Patient.id)
            if status is not None:
                query = query.where(Study.status == status)
            rows = s.execute(query.order_by(Study.created_at.desc(), Study.id.desc()).limit(limit)).all()
            tags = _views.study_tags(s, [study.id for study, _ in rows])
            return [_views.study_view(study, pseudonym or "", tags.get(study.id), ()) for study, pseudonym in rows]

    def study_of_instance(self, sop_instance_uid: str) -> str:
        """The StudyInstanceUID of a stored instance. Raises StoreError for an unknown instance."""
        with self._session() as s:
            uid = s.scalar(
                select(Study.study_uid)
                .join(Series, Series.study_id == Study.id)
                .join(Instance, Instance.series_id == Series.id)
                .where(Instance.sop_instance_uid == sop_instance_uid)
            )
        if uid is None:
            raise StoreError(f"instance {sop_instance_uid!r}: not in the store; expected a stored SOPInstanceUID")
        return uid

    def instance_hashes(self, sop_instance_uids: list[str]) -> dict[str, str]:
        """content_sha256 of those of `sop_instance_uids` already stored (unknown ones are absent).

        Lets a caller skip decoding, previews and embeddings for files the store already holds.
        """
        found: dict[str, str] = {}
        with self._session() as s:
            for start in range(0, len(sop_instance_uids), 500):  # stay under SQL parameter limits
                chunk = sop_instance_uids[start : start + 500]
                rows = s.execute(
                    select(Instance.sop_instance_uid, Instance.content_sha256).where(Instance.sop_instance_uid.in_(chunk))
                )
                found.update(dict(rows.tuples().all()))
        return found

    def preview(self, sop_instance_uid: str) -> bytes | None:
        """The PNG preview of an instance, None if it was stored without one.

        Raises:
            StoreError: unknown instance.
        """
        with self._session() as s:
            row = s.execute(select(Instance.preview_png).where(Instance.sop_instance_uid == sop_instance_uid)).first()
        if row is None:
            raise StoreError(f"instance {sop_instance_uid!r}: not in the store; expected a stored SOPInstanceUID")
        return row[0]

    def embedding_matrix(self, kind: str, model_id: str) -> EmbeddingMatrix:
        """Every vector of `kind` for `model_id`, for building a vector index.

        "image": one row per instance embedding (storage order), keyed by SOPInstanceUID.
        "report": one row per study, keyed by StudyInstanceUID: the embedding of its newest report
        version that has one for this model. Meta modality/body_part of a report row are the
        study's distinct values, sorted and comma-joined.

        Raises:
            StoreError: unknown kind, or stored vectors of mixed dimension.
        """
        _rows.check_kind("embedding_matrix", kind)
        with self._session() as s:
            if kind == "image":
                return _views.image_matrix(s, model_id)
            return _views.report_matrix(s, model_id)

    def count_embeddings(self, kind: str, model_id: str) -> int:
        """The number of rows `embedding_matrix(kind, model_id)` returns (for reports: studies)."""
        _rows.check_kind("count_embeddings", kind)
        with self._session() as s:
            if kind == "image":
                query = select(func.count(Embedding.id))
            else:
                query = select(func.count(func.distinct(Report.study_id))).join(
                    Embedding, Embedding.report_id == Report.id
                )
            return s.scalar(query.where(Embedding.kind == kind, Embedding.model_id == model_id)) or 0

    def studies_to_embed(self, model_id: str, after: str | None = None, limit: int = 32,
                         shard: tuple[int, int] | None = None) -> list[PendingStudy]:
        """The next `limit` studies lacking embeddings of `model_id`, by StudyInstanceUID after `after`.

        Done means: at least one image embedding (when it has instances) and an embedding of its
        latest report version (when it has a report); see `db.embedding_queries` for why not every
        instance. `shard=(index, count)` keeps only studies with `shard_of(uid, count) == index`.

        Raises:
            StoreError: empty model_id, a limit below 1 or an invalid shard.
        """
        check_text("studies_to_embed model_id", model_id)
        _rows.check_limit("studies_to_embed", limit)
        shard = embedding_queries.check_shard(shard)
        with self._session() as s:
            return embedding_queries.pending_studies(s, model_id, after, limit, shard)

    def embedding_stamp(self, kind: str, model_id: str) -> str:
        """A short string that changes whenever embeddings of (kind, model_id) are added or replaced.

        A vector index saved with the stamp of the rows it was built from is current while the
        stamp matches; counting rows alone would miss a replaced vector (an amended report).
        """
        _rows.check_kind("embedding_stamp", kind)
        with self._session() as s:
            count, newest = s.execute(
                select(func.count(Embedding.id), func.max(Embedding.created_at)).where(
                    Embedding.kind == kind, Embedding.model_id == model_id
                )
            ).one()
        return f"{count}:{newest.isoformat() if newest is not None else '-'}"

    # ------------------------------------------------------------------ pgvector
    @property
    def pgvector_enabled(self) -> bool:
        """Whether this (PostgreSQL) store keeps its embeddings in pgvector too (`enable_pgvector`)."""
        return self._pgvector

    def enable_pgvector(self) -> int:
        """Keep every embedding in a pgvector column as well, for `search_vectors`; idempotent.

        Returns:
            How many stored embeddings were converted now.

        Raises:
            StoreError: not PostgreSQL, no pgvector on the server, or a role that may not create it.
        """
        with self._session(write=True) as s:
            converted = pgvector.enable(s.connection())
        self._pgvector = True
        return converted

    def create_pgvector_hnsw(self, kind: str, model_id: str, m: int = 16, ef_construction: int = 64) -> int:
        """Build an HNSW index over the (kind, model_id) embeddings: `search_vectors` of them becomes
        approximate (the index's nearest candidates, scored exactly); idempotent.

        Returns:
            The embedding dimension indexed.

        Raises:
            StoreError: pgvector not enabled, unknown kind, or no such embeddings yet.
        """
        _rows.check_kind("create_pgvector_hnsw", kind)
        with self._session(write=True) as s:
            return pgvector.create_hnsw(s.connection(), kind, model_id, m, ef_construction)

    def search_vectors(self, kind: str, model_id: str, queries: np.ndarray, k: int = 10,
                       filters: dict[str, str | Collection[str]] | None = None, exclude: Collection[str] = (),
                       group_by: str | None = None) -> list[list[VectorHit]]:
        """Cosine search inside PostgreSQL, per row of `queries` [Q, D] (see `db.pgvector.search`): exact,
        or among an HNSW index's candidates where `create_pgvector_hnsw` built one.

        Rows written without their pgvector value (by a process that opened the store before
        pgvector was enabled) are converted first.

        Raises:
            StoreError: pgvector not enabled on this store, unknown kind, or a bad filter.
        """
        _rows.check_kind("search_vectors", kind)
        if not self._pgvector:
            with self._engine.connect() as connection:  # enabled since this store was opened?
                self._pgvector = pgvector.is_enabled(connection)
            if not self._pgvector:
                raise StoreError(f"search_vectors: pgvector is not enabled on {self!r}; expected enable_pgvector() "
                                 "first (PostgreSQL with the pgvector extension)")
        with self._session() as s:
            missing = pgvector.has_missing(s)
        if missing:
            with self._session(write=True) as s:
                pgvector.fill_missing(s)
        with self._session() as s:
            return pgvector.search_batch(s, kind, model_id, queries, k, filters, exclude, group_by)

    def events(self, study_uid: str | None = None, kind: str | None = None, limit: int = 1000,
               user: str | None = None) -> list[dict]:
        """Audit events, newest first, optionally only those of one study, kind or user.

        Returns:
            Dicts with id, time (aware UTC datetime), kind, user, study_uid, detail.

        Raises:
            StoreError: a limit below 1.
        """
        _rows.check_limit("events", limit)
        with self._session() as s:
            query = select(Event)
            if study_uid is not None:
                query = query.where(Event.study_uid == study_uid)
            if kind is not None:
                query = query.where(Event.kind == kind)
            if user is not None:
                query = query.where(Event.user == user)
            rows = s.scalars(query.order_by(Event.time.desc(), Event.id.desc()).limit(limit))
            return [
                {"id": e.id, "time": e.time, "kind": e.kind, "user": e.user, "study_uid": e.study_uid,
                 "detail": e.detail_json}
                for e in rows
            ]

    # ---------------------------------------------------------------- accounts
    def add_user(self, name: str, role: str, password: str, actor: str = "system") -> UserView:
        """Create an account (password hashed with scrypt); records a "user" event by `actor`.

        Raises:
            StoreError: an invalid name, role or password (under 8 characters), or a name in use.
        """
        accounts.check_name(name)
        accounts.check_role(role)
        check_text("add_user actor", actor)
        encoded = accounts.hash_password(password)  # outside the transaction: the KDF takes a while
        with self._session(write=True) as s:
            if s.scalar(select(User.id).where(User.name == name)) is not None:
                raise StoreError(f"user {name!r}: already exists; expected a new name (or use set_password)")
            user = User(name=name, role=role, password_hash=encoded, disabled=False)
            s.add(user)
            s.flush()
            _rows.log(s, "user", actor, None, {"action": "add", "name": name, "role": role})
            return _user_view(user)

    def set_password(self, name: str, password: str, actor: str = "system") -> None:
        """Replace an account's password; records a "user" event (never the password).

        Raises:
            StoreError: unknown user, or an invalid password.
        """
        encoded = accounts.hash_password(password)
        self._change_user(name, actor, {"action": "password"}, password_hash=encoded)

    def set_role(self, name: str, role: str, actor: str = "system") -> None:
        """Change an account's role; records a "user" event.

        Raises:
            StoreError: unknown user or role.
        """
        self._change_user(name, actor, {"action": "role", "role": accounts.check_role(role)}, role=role)

    def set_disabled(self, name: str, disabled: bool = True, actor: str = "system") -> None:
        """Disable (or enable again) an account: a disabled one cannot log in; records a "user" event.

        Raises:
            StoreError: unknown user.
        """
        self._change_user(name, actor, {"action": "disable" if disabled else "enable"}, disabled=bool(disabled))

    def _change_user(self, name: str, actor: str, detail: dict, **values: object) -> None:
        check_text("user change actor", actor)
        with self._session(write=True) as s:
            user = s.scalar(select(User).where(User.name == name))
            if user is None:
                raise StoreError(f"user {name!r}: no such account; expected one of `medcm users list`")
            for key, value in values.items():
                setattr(user, key, value)
            _rows.log(s, "user", actor, None, {**detail, "name": name})

    def users(self) -> list[UserView]:
        """Every account, by name (disabled ones included)."""
        with self._session() as s:
            return [_user_view(u) for u in s.scalars(select(User).order_by(User.name))]

    def user_role(self, name: str | None) -> str | None:
        """The role of an enabled account; None for no name, an unknown name or a disabled account."""
        if not name:
            return None
        with self._session() as s:
            row = s.execute(select(User.role, User.disabled).where(User.name == name)).first()
        return None if row is None or row.disabled else row.role

    def authenticate(self, name: str, password: str) -> str | None:
        """The role of the enabled account `name` if `password` is its password, else None.

        Costs one scrypt computation whether or not the name exists, so the time taken does not
        reveal which names are accounts; the hashes are compared in constant time.
        """
        with self._session() as s:
            row = s.execute(select(User.role, User.disabled, User.password_hash).where(User.name == name)).first()
        ok = accounts.verify_password(password, row.password_hash if row else accounts.dummy_hash())
        return row.role if ok and row is not None and not row.disabled else None


def _user_view(user: User) -> UserView:
    return UserView(name=user.name, role=user.role, created_at=user.created_at, disabled=user.disabled)
