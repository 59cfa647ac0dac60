"""The case store: DICOM studies, their report versions, embeddings and the audit trail, in one database.

Every public method of `CaseStore` is one transaction: it is written whole or not at all. The store
is the source of truth; vector indexes are rebuilt from `embedding_matrix`, joined on plain string
keys (SOPInstanceUID for images, StudyInstanceUID for reports). `CaseStore` is built from method
groups: this module holds ingest, reports, studies and the audit trail; `db.embeddings` the embedding
and pgvector methods, `db.accounts` the accounts, `db.questions` a study's clinical question;
`db.connect.Database` opens and migrates the database.

Report versions: drafts are mutable, signed versions never change. Saving a draft over a signed
version, or signing over one (an amendment), adds a new version. A study's status follows its
latest version that is not the model's draft: "new" (none), "drafted" (a person's draft) or "signed";
the model's draft is stored and shown but changes no status.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sqlalchemy import select

import db.audit as audit
import db.read as read
import db.versions as versions
import db.write as write
from db.accounts import AccountMethods, UserView
from db.audit import AuditProblem, AuditReport
from db.embeddings import EmbeddingMethods
from db.models import STUDY_STATUSES, Embedding, Instance, Report, Series, Study, utcnow
from db.pgvector import VectorHit
from db.questions import MAX_QUESTION_CHARS, QuestionMethods
from db.read import latest_report, report_view, study_or_error
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
    "AuditProblem",
    "AuditReport",
    "CaseStore",
    "EmbeddingInput",
    "EmbeddingMatrix",
    "IngestSummary",
    "InstanceInput",
    "InstanceView",
    "MAX_QUESTION_CHARS",
    "PendingStudy",
    "ReportInput",
    "ReportView",
    "StoreError",
    "StudyView",
    "UserView",
    "VectorHit",
]


class CaseStore(EmbeddingMethods, AccountMethods, QuestionMethods):
    """A case store at a SQLAlchemy URL, migrated to the newest schema when opened.

    Args:
        url: "sqlite:///path/to/cases.db" (the folder is created), "sqlite://" (in memory), or any
            SQLAlchemy URL such as "postgresql+psycopg://user@host/medcm".
        audit_key_file: the secret key file the audit trail is chained with (`db.audit`), created on
            first use. Default: beside a SQLite file (cases.db → cases.db.audit-key); none for other
            databases, whose trail is then an unkeyed chain.

    Raises:
        StoreError: `url` is not a database URL, or `audit_key_file` does not hold a key.
    """

    def __init__(self, url: str, audit_key_file: str | Path | None = None) -> None:
        self.audit_key_file = audit_key_file  # read by Database.__init__: the method groups pass on url alone
        super().__init__(url)

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
        signed version), and so is one of a study whose latest version a person signed in medcm (an
        archive never supersedes a clinician's signature: the text is kept in the "ingest" event and
        the study named in `IngestSummary.kept_out`); otherwise it becomes the next version. Embeddings are written after the
        reports of this call (a "report" embedding goes to its study's latest version) and replace
        any earlier one of the same model for the same key. Records one "ingest" event.

        The cost does not grow with round trips per row: each kind of row is looked up with one
        query per 500 keys and written in one flush (batched INSERTs).

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
        write.check_text("ingest user", user)
        with self._session(write=True) as s:
            added, skipped, studies = write.add_instances(s, instances)
            s.flush()  # reports and embeddings refer to the new rows' ids
            added_reports, kept_out = versions.add_reports(s, reports)
            # A report kept out by a signature has no version: its vector must not go to the signed one.
            embeddings = [e for e in embeddings if not (e.kind == "report" and e.key in kept_out)]
            added_embeddings = len(self._put_embeddings(s, embeddings))
            studies |= {r.study_uid for r in reports}
            detail = {
                "added_instances": added,
                "skipped_instances": skipped,
                "added_reports": added_reports,
                "added_embeddings": added_embeddings,
                "study_uids": sorted(studies),
            }
            if kept_out:  # kept here, in the append-only trail, rather than lost
                detail["reports_kept_out_by_signature"] = kept_out
            write.log(s, "ingest", user, next(iter(studies)) if len(studies) == 1 else None, detail)
        return IngestSummary(added, skipped, added_reports, added_embeddings, tuple(sorted(kept_out)))

    def save_draft(
        self, study_uid: str, text: str, sections: Sequence[tuple[str, str]], author: str, source: str = "draft",
        user: str | None = None,
    ) -> ReportView:
        """Save a draft: update the latest version in place if it is a draft by the same author and source
        (`db.versions.draft_in_place`), else add a draft version, so every version keeps its author.

        Args:
            study_uid: a stored study.
            text: the draft's full text (may be empty).
            sections: [(name, text)] as split by the caller.
            author: who (or which model) wrote it.
            source: "draft" (generated) or "edit" (a person's edit), or another label; recorded on
                the version and as the event kind ("draft" for "draft", otherwise "edit"). A "draft"
                (the model's) leaves the study's status as it is ("new" in the worklist until a person
                works on it); any other makes it "drafted".
            user: who asked for it, recorded in the audit trail (default: `author`); e.g. the
                clinician who had the model write a draft whose author is the model.

        Returns:
            The saved draft version.

        Raises:
            StoreError: unknown study, or an invalid argument.
        """
        write.check_report_text("save_draft text", text, empty_ok=True)
        pairs = write.sections_of("save_draft sections", sections)
        write.check_text("save_draft author", author)
        write.check_text("save_draft source", source)
        user = author if user is None else write.check_text("save_draft user", user)
        with self._session(write=True) as s:
            study = study_or_error(s, study_uid)
            latest = latest_report(s, study)
            if versions.draft_in_place(latest, author, source):
                report, action = latest, "updated"
                report.text, report.sections_json, report.author, report.source = text, pairs, author, source
            else:
                report, action = versions.new_report(s, study, latest, text, pairs, "draft", author, source), "created"
            if source != versions.MACHINE_SOURCE:  # the model's draft changes no status (`db.versions`)
                study.status = "drafted"
            s.flush()
            detail = {"version": report.version, "report_id": report.id, "action": action, "source": source}
            write.log(s, "draft" if source == "draft" else "edit", user, study_uid, detail)
            return report_view(report, study_uid)

    def sign_report(self, study_uid: str, text: str, sections: Sequence[tuple[str, str]], signer: str,
                    embedding: EmbeddingInput | None = None) -> ReportView:
        """Sign a study's report with its final text, with its embedding in the same transaction.

        The signer's own latest draft becomes signed (with this text); over anything else (no report,
        a machine draft, another person's draft, a signed version: an amendment) a new signed version
        by the signer is added, and the earlier versions keep their authors (`db.versions`). Signing
        again the text of the signer's latest signed version is a retry: that version is returned
        (its embedding written if it lacks it) and no version is added. Signed versions never change.

        Args:
            study_uid: a stored study.
            text: the final report text (not empty).
            sections: [(name, text)] as split by the caller.
            signer: the signing clinician.
            embedding: the text's "report" vector (key `study_uid`), written with the signature, so a
                signed version never lacks it after a crash.

        Returns:
            The signed version.

        Raises:
            StoreError: unknown study, empty text or signer, or an invalid argument.
        """
        write.check_report_text("sign_report text", text)
        pairs = write.sections_of("sign_report sections", sections)
        write.check_text("sign_report signer", signer)
        if embedding is not None and (embedding.kind, embedding.key) != ("report", study_uid):
            raise StoreError(f"sign_report embedding: got ({embedding.kind!r}, {embedding.key!r}); expected "
                             f"('report', {study_uid!r})")
        with self._session(write=True) as s:
            study = study_or_error(s, study_uid)
            latest = latest_report(s, study)
            action = versions.sign_action(latest, signer, text)
            if action == versions.SIGN_IN_PLACE:
                report = latest
                report.text, report.sections_json, report.status = text, pairs, "signed"
                report.signed_by, report.signed_at = signer, utcnow()
            elif action == versions.SIGN_NEW:
                report = versions.new_report(s, study, latest, text, pairs, "signed", signer, "sign")
            else:
                report = latest
            study.status = "signed"
            s.flush()
            if embedding is not None:
                self._put_embeddings(s, [embedding])
            detail = {"version": report.version, "report_id": report.id, "action": action,
                      "amendment": action == versions.SIGN_NEW and latest is not None and latest.status == "signed"}
            write.log(s, "sign", signer, study_uid, detail)
            return report_view(report, study_uid)

    def log_event(self, kind: str, user: str, study_uid: str | None = None, detail: dict | None = None) -> None:
        """Append an event to the audit trail (e.g. "view", "export", "login").

        Raises:
            StoreError: empty kind or user, or a detail that is not a JSON object.
        """
        write.check_text("log_event kind", kind)
        write.check_text("log_event user", user)
        if study_uid is not None:
            write.check_text("log_event study_uid", study_uid)
        write.check_json("log_event detail", {} if detail is None else detail)
        with self._session(write=True) as s:
            write.log(s, kind, user, study_uid, detail or {})

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
            return read.study_with_instances(s, study_uid)

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
        write.check_limit("list_studies", limit)
        with self._session() as s:
            return read.newest_studies(s, status, limit)

    def prior_studies(self, study_uid: str) -> list[tuple[StudyView, ReportView | None]]:
        """The same patient's other studies (same pseudonym), newest study date first, without instances,
        each with its latest signed report version (None if none); empty for a study of no known patient.

        Raises:
            StoreError: unknown study.
        """
        with self._session() as s:
            return read.patient_priors(s, study_uid)

    def latest_report_texts(self, study_uids: list[str]) -> dict[str, str]:
        """The latest report version's text (any status) of each of `study_uids` that has one (one query
        per 500 studies, e.g. for a worklist); studies without a report, or unknown, are absent."""
        with self._session() as s:
            return read.latest_report_texts(s, study_uids)

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

    def report_texts(self, study_uids: list[str]) -> dict[str, set[str]]:
        """The texts of every stored report version of those of `study_uids` that are stored (others absent).

        Lets a caller tell, with one query for many studies, which reports `ingest` will skip as
        already stored (and so not embed them).
        """
        found: dict[str, set[str]] = {}
        with self._session() as s:
            studies = write.by_key(s, Study.study_uid, study_uids)
            _, texts = versions.stored_versions(s, [study.id for study in studies.values()])
            for uid, study in studies.items():
                found[uid] = texts.get(study.id, set())
        return found

    def instance_hashes(self, sop_instance_uids: list[str]) -> dict[str, str]:
        """content_sha256 of those of `sop_instance_uids` already stored (unknown ones are absent).

        Lets a caller skip decoding, previews and embeddings for files the store already holds.
        """
        found: dict[str, str] = {}
        with self._session() as s:
            for start in range(0, len(sop_instance_uids), read.CHUNK):  # stay under SQL parameter limits
                chunk = sop_instance_uids[start : start + read.CHUNK]
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

    def events(self, study_uid: str | None = None, kind: str | None = None, limit: int = 1000,
               user: str | None = None) -> list[dict]:
        """Audit events, newest first, optionally only those of one study, kind or user.

        Returns:
            Dicts with id, time (aware UTC datetime), kind, user, study_uid, detail.

        Raises:
            StoreError: a limit below 1.
        """
        write.check_limit("events", limit)
        with self._session() as s:
            return read.events(s, study_uid, kind, user, limit)

    def verify_audit(self) -> AuditReport:
        """Check the audit trail: every event's hash and link, the chain's head, its tables and triggers.

        Changes nothing. `AuditReport.problems` name the first bad row first: a changed or forged row
        (hash mismatch), a deleted one (gap or head mismatch), an inserted one (chain break), a dropped
        trigger or table, or a key other than the one the trail was written with.
        """
        with self._session() as s:
            return audit.verify(s, self._audit_key)

    def image_embeddings(self, sop_instance_uids: list[str], model_id: str) -> dict[str, np.ndarray]:
        """The stored "image" vectors of `model_id` of those of `sop_instance_uids` that have one (others absent).

        Lets a caller reuse what ingest embedded, e.g. a study's query vector, instead of decoding and
        embedding its files again.

        Returns:
            SOPInstanceUID → float32 `[D]` vector.
        """
        found: dict[str, np.ndarray] = {}
        with self._session() as s:
            for start in range(0, len(sop_instance_uids), read.CHUNK):  # stay under SQL parameter limits
                chunk = sop_instance_uids[start : start + read.CHUNK]
                rows = s.execute(
                    select(Instance.sop_instance_uid, Embedding.vector)
                    .join(Instance, Embedding.instance_id == Instance.id)
                    .where(Embedding.kind == "image", Embedding.model_id == model_id,
                           Instance.sop_instance_uid.in_(chunk))
                )
                found.update({uid: np.frombuffer(blob, dtype="<f4").astype(np.float32) for uid, blob in rows})
        return found
