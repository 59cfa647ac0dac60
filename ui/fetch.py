"""The Review tab's "Fetch from PACS": pull a study by StudyInstanceUID from the configured DICOMweb server.

Shown to clinicians only, and only when the app was built with a server (`medcm serve --dicomweb URL`).
The pull (`medcm.engine.dicomweb.pull_study`: QIDO-RS, WADO-RS, then the engine's ingest with its
de-identification) waits in the engine's queue like an upload; the stored study is then opened like an
upload: the viewer, similar cases, the draft.
"""

from __future__ import annotations

import html
from typing import Any

import gradio as gr

from db.store import CaseStore
from medcm.engine.dicomweb import DicomWebError, DicomWebServer
from medcm.engine.facade import Engine
from ui.auth import allowed, require
from ui.errors import one_line, readable_errors, user_error


class FetchHandlers:
    """Handlers of the PACS fetch field, bound to one engine, store and (optional) DICOMweb server.

    Args:
        engine: the loaded engine the pulled study is ingested with.
        store: its case store (logins).
        server: the DICOMweb server to pull from; None hides the field.
    """

    def __init__(self, engine: Engine, store: CaseStore, server: DicomWebServer | None) -> None:
        self.engine, self.store, self.server = engine, store, server

    @readable_errors
    def on_load(self, request: gr.Request) -> gr.Column:
        """At page load: the fetch field, for a clinician of an app with a server configured."""
        login = require(self.store, request, "read")
        return gr.Column(visible=self.server is not None and allowed(login.role, "ingest"))

    @readable_errors
    def on_fetch(self, study_uid: str | None, request: gr.Request,
                 progress: gr.Progress = gr.Progress()) -> str:
        """Pull the study from the server and store it as the logged-in clinician; the stored (de-identified)
        StudyInstanceUID, for the next steps to open. A warning names any instance not stored.

        Raises:
            gr.Error: one line: no server, no or a malformed UID, the server unreachable or without the study.
        """
        login = require(self.store, request, "ingest")
        if self.server is None:
            raise user_error("no PACS is configured: start the app with `medcm serve --dicomweb URL`")
        if not (study_uid or "").strip():
            raise user_error("type the StudyInstanceUID of the study to fetch from the PACS")
        progress(0.2, desc="fetching the study from the PACS and storing it")
        try:
            pulled = self.server.pull(self.engine, study_uid.strip(), user=login.name)
        except (ValueError, DicomWebError) as err:
            raise user_error(f"fetch from PACS failed: {one_line(str(err))}") from None
        received = pulled.received
        if received.errors:
            gr.Warning(html.escape(one_line(f"{len(received.errors)} instance(s) not stored: {received.errors[0]}")))
        if not received.studies:
            raise user_error(f"fetch from PACS: study {pulled.study_uid} holds no storable image")
        return received.studies[0]


def fetch_box(c: dict[str, Any]) -> None:
    """The StudyInstanceUID field and the Fetch button (beside the upload box), hidden until
    `FetchHandlers.on_load` shows them."""
    c["fetched"] = gr.State(None)
    with gr.Column(visible=False, scale=2, min_width=260, elem_id="fetch-box") as c["fetch_box"]:
        c["fetch_uid"] = gr.Textbox(label="Fetch from PACS: StudyInstanceUID", placeholder="1.2.840…", max_lines=1,
                                    elem_id="fetch-uid")
        c["fetch"] = gr.Button("Fetch from PACS", size="sm", elem_id="fetch-button")


def wire_fetch(fh: FetchHandlers, h: Any, c: dict[str, Any], private: dict[str, Any],
               engine_queue: dict[str, Any]) -> None:
    """Fetch (button or Enter) → open the stored study → similar cases → draft, each after the last succeeded,
    as an upload (`ui.review`); `c["fetch_events"]` lists both chains, for the worklist to refresh after them.

    Args:
        fh: the fetch handlers.
        h: the review's `ui.handlers.Handlers` (opening, similar cases, drafting).
        c: the review tab's components (`ui.review.review_tab`), with `fetch_box`'s.
        private: the events' API visibility.
        engine_queue: the engine's queue (one event at a time).
    """
    c["fetch_events"] = [
        trigger(fh.on_fetch, [c["fetch_uid"]], c["fetched"], **private, **engine_queue)
        .success(h.open_study, [c["fetched"], c["preset"]], c["shown"], **private)
        .success(h.on_similar, *c["load_similar"], **private, **engine_queue)
        .success(h.on_draft, *c["load_draft"], **private, **engine_queue)
        for trigger in (c["fetch"].click, c["fetch_uid"].submit)]
