"""The clinical question on the Review screen: the indication a clinician gives, stored with the study, redrafts."""

from __future__ import annotations

from typing import Any

import gradio as gr

from db.store import CaseStore
from medcm.engine.facade import Engine
from ui.auth import require
from ui.errors import readable_errors, user_error
from ui.handlers import Handlers
from ui.study import ReviewStudy

QUESTION_LABEL = "Clinical question / history"
QUESTION_PLACEHOLDER = "e.g. cough, fever; pneumonia?"


class QuestionHandlers:
    """Read and store the clinical question of the study under review (`Engine.set_clinical_question`)."""

    def __init__(self, engine: Engine, store: CaseStore) -> None:
        self.engine, self.store = engine, store

    @readable_errors
    def on_open(self, study: ReviewStudy | None, request: gr.Request) -> str:
        """The stored question of the study just opened ("" when it has none or none is open)."""
        require(self.store, request, "read")
        if study is None:
            return ""
        return self.store.clinical_question(study.study_uid) or ""

    @readable_errors
    def on_set(self, study: ReviewStudy | None, text: str | None, request: gr.Request) -> str:
        """Store the question (scrubbed of identifiers, as a report is; empty clears it) as the logged-in
        clinician, and show it as stored. The event's next steps find similar cases and draft again with it."""
        login = require(self.store, request, "draft")
        if study is None:
            raise user_error("no study is open: upload one or open one from the worklist first")
        stored = self.engine.set_clinical_question(study.study_uid, text or None, user=login.name)
        gr.Info("clinical question saved: similar cases and the draft now use it" if stored.clinical_question
                else "clinical question cleared: similar cases and the draft use the image alone")
        return stored.clinical_question or ""


def question_section(c: dict[str, Any]) -> None:
    """The question box and its button (clinicians can change it; other roles read it)."""
    with gr.Row(equal_height=True):  # one line without a frame: the viewer and the draft must stay on one screen
        c["question"] = gr.Textbox(show_label=False, placeholder=f"{QUESTION_LABEL}: {QUESTION_PLACEHOLDER}",
                                   lines=1, max_lines=3, max_length=2000, scale=4, container=False,
                                   elem_id="clinical-question")
        c["question_apply"] = gr.Button("Use it: draft again", size="sm", scale=1, min_width=120,
                                        elem_id="question-apply")


def wire_question(h: Handlers, c: dict[str, Any], private: dict[str, Any], queue: dict[str, Any]) -> None:
    """Opening a study shows its question; applying one stores it, then similar cases and the draft follow."""
    q = QuestionHandlers(h.engine, h.store)
    c["study"].change(q.on_open, [c["study"]], c["question"], **private)
    (c["question_apply"].click(q.on_set, [c["study"], c["question"]], c["question"], **private, **queue)
     .success(h.on_similar, *c["load_similar"], **private, **queue)
     .success(h.on_draft, *c["load_draft"], **private, **queue))
