"""A study's clinical question (the indication / history a clinician gives): `QuestionMethods` of `db.store.CaseStore`.

A question is free text of at most `MAX_QUESTION_CHARS` characters without control characters (tabs and
line breaks are fine); the caller scrubs identifiers out of it first (`medcm.engine.question`). Setting one
is one transaction with one "question" audit event, whose detail names the action and the length, never the
text (the trail is append-only: text in it could never be corrected).
"""

from __future__ import annotations

import db.read as read
import db.write as write
from db.connect import Database
from db.read import study_or_error
from db.records import StoreError, StudyView

MAX_QUESTION_CHARS = 2_000  # an indication is a few lines; a pasted report or a file is an accident


def check_question(value: object) -> str | None:
    """The question to store: None for None or blank text, else the text with its ends stripped.

    Raises:
        StoreError: not a string, over `MAX_QUESTION_CHARS` characters, or with a control character.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise StoreError(f"clinical_question: got {type(value).__name__}, expected a string or None")
    if len(value) > MAX_QUESTION_CHARS:
        raise StoreError(f"clinical_question: {len(value)} characters; expected at most {MAX_QUESTION_CHARS}")
    write.check_report_text("clinical_question", value, empty_ok=True)  # control characters
    return value.strip() or None


class QuestionMethods(Database):
    """Reading and setting a study's clinical question, each one transaction."""

    def set_clinical_question(self, study_uid: str, text: str | None, user: str) -> StudyView:
        """Set (or, with None or blank text, clear) a study's clinical question; records a "question" event.

        Args:
            study_uid: a stored study.
            text: the question, already scrubbed of identifiers by the caller.
            user: who set it, recorded in the audit trail.

        Returns:
            The study (with its instances) as stored now.

        Raises:
            StoreError: unknown study, empty user, or a text that `check_question` refuses; nothing is
                written then.
        """
        question = check_question(text)
        write.check_text("set_clinical_question user", user)
        with self._session(write=True) as s:
            study = study_or_error(s, study_uid)
            changed = study.clinical_question != question
            study.clinical_question = question
            detail = {"action": "cleared" if question is None else "set", "chars": len(question or ""),
                      "changed": changed}
            write.log(s, "question", user, study_uid, detail)
            s.flush()
            return read.study_with_instances(s, study_uid)

    def clinical_question(self, study_uid: str) -> str | None:
        """A study's clinical question, None when it has none. Raises StoreError for an unknown study."""
        with self._session() as s:
            return study_or_error(s, study_uid).clinical_question
