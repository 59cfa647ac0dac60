"""The browser's event handlers: short, named, each one call into the engine or the store.

Per-session values travel in `gr.State`: the study under review (`ReviewStudy`), the similar cases
(`list[SimilarCase]`), the draft's sentences (`list[DraftSentence]`), the text-search matches
(`list[ImageMatch]`) and the worklist study picked last (its UID). Handlers that need a study raise
`gr.Error` when none is loaded; viewer handlers then show no image.

Every handler takes the event's `gr.Request` and acts as its logged-in account (`ui.auth.require`):
reading needs any role, uploading, drafting, saving and signing the clinician role, the audit trail
the admin role. Opening a study (or a similar case, a match, a draft's sources) for reading, and
each search's results, are recorded as one "view" event; scrolling through frames or presets is not.
"""

from __future__ import annotations

import html
from pathlib import Path

import gradio as gr
import pandas as pd
from PIL import Image

from db.store import CaseStore
from medcm.report.draft import DraftSentence
from medcm.engine.facade import Engine, ImageMatch, SimilarCase
import ui.render as render
from ui.api import check_k, export_study, sign_study
from ui.auth import Login, allowed, log_view, require
from ui.errors import readable_errors, user_error
from ui.selection import last_cell, picked, row_key
from ui.study import (
    ImageRef,
    ReviewStudy,
    UploadSlots,
    check_upload_request,
    ingest_upload,
    load_study,
    read_view,
    require_for_upload,
    window_of,
)
from ui.viewer_route import viewer_url

TOP_K = 5
REVIEW_TAB = "review"
NO_STUDY = "no study loaded: upload a DICOM study first"
DRAFT_MARKER = ("### ⚠ UNVERIFIED DRAFT\nSuggested from the reports of similar past cases. "
                "Review and edit every sentence before signing.")

# study, image, instance selector, frame slider, study line, then the panels a new study clears:
# comparison query / case / report, source report / image, sign message.
StudyOutputs = tuple[ReviewStudy, Image.Image, gr.Dropdown, gr.Slider, str, None, None, str, str, None, str]
COMPARE_HINT = "Select a case above to compare."
READ_ONLY_MARKER = "### Latest report (read-only)\nYour role can read reports; drafting and signing need a clinician."
AUDIT_LIMIT = 500
AUDIT_KINDS = ("", "ingest", "view", "draft", "edit", "sign", "send", "export", "download", "download_refused", "login",
               "login_failed", "login_lockout", "login_locked", "login_throttled", "user")


def _frame_slider(ref: ImageRef) -> gr.Slider:
    """The slider of a multi-frame image ("Frame") or of a volume series ("Slice"), hidden for one frame."""
    return gr.Slider(minimum=0, maximum=max(ref.frames - 1, 1), value=0, step=1, visible=ref.frames > 1,
                     label="Slice" if ref.slices else "Frame")


class Handlers:
    """Named handlers bound to one engine, store and upload folder.

    Args:
        engine: the loaded engine (model, store, indexes).
        store: the case store the engine writes to.
        upload_dir: where uploads are kept under content-addressed names.
        top_k: how many similar cases the review tab shows.
    """

    def __init__(self, engine: Engine, store: CaseStore, upload_dir: Path, top_k: int = TOP_K) -> None:
        self.engine, self.store, self.top_k = engine, store, top_k
        self.upload_dir = Path(upload_dir).resolve()  # stored file locations must not depend on the cwd
        self.upload_slots = UploadSlots()

    # ------------------------------------------------------------------ viewer
    # ------------------------------------------------------------------- login
    @readable_errors
    def on_load(self, request: gr.Request) -> tuple[str, pd.DataFrame, gr.Tab, gr.File, gr.Button, gr.Button,
                                                     gr.Button, gr.Button, gr.Button, gr.Textbox, gr.Column]:
        """At page load: who is logged in, the worklist, and the controls their role may use.

        Returns the login line, the worklist, the Audit tab (shown to admins only), then the upload
        box, "Draft again", "Save draft", "Sign", "Export", the clinical question's button, the report box
        and the whole save-and-sign section (for clinicians only).
        """
        login = require(self.store, request, "read")
        clinical = allowed(login.role, "sign")
        return (render.login_markdown(login.name, login.role), self._worklist(),
                gr.Tab(visible=allowed(login.role, "audit")), gr.File(visible=clinical),
                *(gr.Button(visible=clinical) for _ in range(5)), gr.Textbox(interactive=clinical),
                gr.Column(visible=clinical))

    # ------------------------------------------------------------------ viewer
    @readable_errors
    def on_upload_check(self, files: list[str] | None, request: gr.Request) -> None:
        """The upload's cheap checks, before it waits for the engine (`check_upload_request`): a refused
        upload never holds the engine's queue, and an account has one upload in flight at a time."""
        check_upload_request(self.store, request, files, self.upload_slots)

    @readable_errors
    def on_upload(self, files: list[str] | None, preset: str | None, request: gr.Request,
                  progress: gr.Progress = gr.Progress()) -> StudyOutputs:
        """Store the upload (content-addressed), ingest it as the logged-in clinician and show its first image;
        the account's upload slot (`on_upload_check`) is free again afterwards."""
        login = require_for_upload(self.store, request, "ingest", files)
        try:
            progress(0.2, desc="storing and indexing the upload")
            study_uid, notes = ingest_upload(self.engine, files, self.upload_dir, user=login.name)
        finally:
            self.upload_slots.release(login.name)
        for note in notes:
            gr.Warning(html.escape(note))
        return self._show(study_uid, preset, notes, login)

    @readable_errors
    def open_study(self, study_uid: str | None, preset: str | None, request: gr.Request) -> StudyOutputs:
        """Open a stored study (picked in the worklist) for review."""
        login = require(self.store, request, "read")
        if not study_uid:
            raise user_error("pick a study in the worklist first")
        return self._show(study_uid, preset, [], login)

    def _show(self, study_uid: str, preset: str | None, notes: list[str], login: Login) -> StudyOutputs:
        study = load_study(self.store, study_uid)
        log_view(self.store, login, study_uid, "review")
        for warning in study.warnings:
            gr.Warning(html.escape(warning))
        notes = [*notes, *study.warnings]
        choices = [(ref.label, i) for i, ref in enumerate(study.images)]
        first = study.images[0]
        selector = gr.Dropdown(choices=choices, value=0, visible=len(choices) > 1)
        frames = _frame_slider(first)
        n_series = len({ref.series_uid for ref in study.images})
        n_images = sum(len(ref.slices) or 1 for ref in study.images)
        info = render.study_markdown(self.store.get_study(study_uid), n_series, n_images,
                                     self.store.latest_report(study_uid), notes)
        cleared = (None, None, COMPARE_HINT, "", None, "")
        return study, self._render(study, preset, 0, 0), selector, frames, info, *cleared

    @readable_errors
    def render_view(self, study: ReviewStudy | None, preset: str | None, index: int | None,
                    frame: float | None, request: gr.Request) -> Image.Image | None:
        """The viewer image: instance `index`, frame `frame`, with a window preset ("default": the file's VOI)."""
        require(self.store, request, "read")
        return self._render(study, preset, index, frame)

    def _render(self, study: ReviewStudy | None, preset: str | None, index: int | None,
                frame: float | None) -> Image.Image | None:
        if study is None:
            return None
        ref = study.images[min(max(int(index or 0), 0), len(study.images) - 1)]
        return render.frame_image(*read_view(ref, int(frame or 0), window_of(preset)))

    @readable_errors
    def viewer_source(self, study: ReviewStudy | None, index: int | None, request: gr.Request) -> str:
        """What the page's viewer should show: series `index` of the study (`render.viewer_source_html`)."""
        require(self.store, request, "read")
        if study is None:
            return ""
        index = min(max(int(index or 0), 0), len(study.images) - 1)
        return render.viewer_source_html(viewer_url(study.study_uid, index))

    @readable_errors
    def on_instance(self, study: ReviewStudy | None, index: int | None, preset: str | None,
                    request: gr.Request) -> tuple[gr.Slider, Image.Image | None]:
        """Another instance picked: reset the frame slider to its frames and show its first frame."""
        require(self.store, request, "read")
        if study is None:
            return gr.Slider(visible=False), None
        ref = study.images[int(index or 0)]
        slider = _frame_slider(ref)
        return slider, self._render(study, preset, index, 0)

    # ----------------------------------------------------------- similar cases
    @readable_errors
    def on_similar(self, study: ReviewStudy | None, request: gr.Request,
                   progress: gr.Progress = gr.Progress()) -> tuple[list[SimilarCase], list, pd.DataFrame]:
        """The most similar past cases: gallery thumbnails with scores, and the table (with their reports)."""
        login = require(self.store, request, "read")
        if study is None:
            raise user_error(NO_STUDY)
        progress(0.3, desc="searching similar cases")
        cases = self.engine.similar_cases_for_study(study.study_uid, k=self.top_k)  # from the stored vectors
        log_view(self.store, login, study.study_uid, "similar cases", [c.study_uid for c in cases])
        gallery = [(render.study_preview(self.store, c.study_uid) or render.blank(),
                    render.case_caption(c.score, c.modality, c.body_part, c.percentile, c.weak)) for c in cases]
        return cases, gallery, render.similar_rows(cases)

    @readable_errors
    def on_case_select(self, cases: list[SimilarCase] | None, study: ReviewStudy | None, preset: str | None,
                       index: int | None, frame: float | None, evt: gr.SelectData,
                       request: gr.Request) -> tuple[Image.Image | None, Image.Image | None, str]:
        """A similar case picked (gallery or table): query image, its preview and its report side by side."""
        login = require(self.store, request, "read")
        case = picked(cases or [], evt)
        if case is None:
            return gr.skip(), gr.skip(), gr.skip()
        report = render.report_markdown(case.study_uid, self.store.latest_report(case.study_uid), case.score,
                                        case.percentile)
        log_view(self.store, login, case.study_uid, "similar case")
        return self._render(study, preset, index, frame), render.study_preview(self.store, case.study_uid), report

    # ------------------------------------------------------------------- draft
    @readable_errors
    def on_draft(self, study: ReviewStudy | None, request: gr.Request,
                 progress: gr.Progress = gr.Progress()) -> tuple[list[DraftSentence], str, pd.DataFrame, str]:
        """Draft the findings (kept in the store as a draft, asked for by the logged-in clinician)
        and list every sentence's sources."""
        login = require(self.store, request, "draft")
        if study is None:
            raise user_error(NO_STUDY)
        progress(0.3, desc="drafting findings from similar cases")
        draft = self.engine.draft_for_study(study.study_uid, save=True, user=login.name)
        if draft.abstention is not None and draft.abstention.abstained:  # shown where the draft would be
            return [], "", render.provenance_rows(draft.sentences), render.abstention_markdown(draft.abstention)
        if not draft.sentences:
            gr.Warning("no draft: the similar cases gave no usable sentence; write the findings yourself")
        return list(draft.sentences), draft.text(), render.provenance_rows(draft.sentences), DRAFT_MARKER

    @readable_errors
    def on_open_draft(self, study: ReviewStudy | None, request: gr.Request,
                      progress: gr.Progress = gr.Progress()) -> tuple[list[DraftSentence], str, pd.DataFrame, str]:
        """After a study is opened: a clinician gets a draft (`on_draft`); other roles its latest report, read-only."""
        login = require(self.store, request, "read")
        if allowed(login.role, "draft"):
            return self.on_draft(study, request, progress)
        if study is None:
            raise user_error(NO_STUDY)
        text = self._report_text(study.study_uid)
        return [], text, render.table([], render.PROVENANCE_HEADERS), READ_ONLY_MARKER

    @readable_errors
    def on_source_select(self, sentences: list[DraftSentence] | None, evt: gr.SelectData,
                         request: gr.Request) -> tuple[str, Image.Image | None]:
        """A draft sentence picked: its source cases' reports, and the best source's preview."""
        login = require(self.store, request, "read")
        sentences = sentences or []
        number = int(row_key(evt) or 0)
        if not 1 <= number <= len(sentences):
            return gr.skip(), gr.skip()
        sentence = sentences[number - 1]
        reports = {}
        for p in sentence.sources:
            report = self.store.latest_report(p.case_id)
            reports[p.case_id] = report.text if report else "(no report)"
        best = sentence.sources[0].case_id if sentence.sources else None
        preview = render.study_preview(self.store, best) if best else None
        log_view(self.store, login, best, "draft sources", reports)
        return render.sources_markdown(sentence, reports), preview

    @readable_errors
    def on_sentence_heatmap(self, study: ReviewStudy | None, sentences: list[DraftSentence] | None,
                            evt: gr.SelectData, request: gr.Request) -> Image.Image | None:
        """A draft sentence picked: where in this study's image it is seen (`Engine.sentence_heatmap`)."""
        login = require(self.store, request, "read")
        sentences = sentences or []
        number = int(row_key(evt) or 0)
        if study is None or not 1 <= number <= len(sentences):
            return gr.skip()
        heat = self.engine.sentence_heatmap(study.study_uid, sentences[number - 1].text)
        log_view(self.store, login, study.study_uid, "sentence heatmap")
        return render.heatmap_image(heat)

    @staticmethod
    def clear_heatmap() -> None:
        """Empty the heatmap panel (the draft it belonged to was replaced)."""
        return None

    # ------------------------------------------------------------- save, sign
    @readable_errors
    def on_save(self, study: ReviewStudy | None, text: str | None, request: gr.Request) -> str:
        """Save the edited report as a draft by the logged-in clinician (an "edit" event); nothing is signed.
        The worklist is refreshed by the next step of the event, so a refusal here never blanks it."""
        login = require(self.store, request, "edit")
        if study is None:
            raise user_error(NO_STUDY)
        if not (text or "").strip():
            raise user_error("the report is empty: write the findings before saving")
        report = self.engine.save_edit(study.study_uid, text.strip(), author=login.name)
        message = render.saved_message(report)
        gr.Info(html.escape(message))
        return render.escape_md(message)

    @readable_errors
    def ask_to_sign(self, text: str | None, request: gr.Request) -> tuple[gr.Column, str]:
        """Signing asks first: the confirmation row, naming the account that signs."""
        login = require(self.store, request, "sign")
        if not (text or "").strip():
            raise user_error("the report is empty: write the findings before signing")
        return gr.Column(visible=True), render.sign_question(login.name)

    @staticmethod
    def cancel_sign() -> gr.Column:
        """The confirmation row hidden again; nothing is signed."""
        return gr.Column(visible=False)

    @readable_errors
    def on_sign(self, study: ReviewStudy | None, text: str | None, sentences: list[DraftSentence] | None,
                request: gr.Request) -> tuple[str, str, gr.Button, pd.DataFrame, None, gr.Column]:
        """Sign the edited report as the logged-in clinician (after `ask_to_sign`): the status line, the banner
        turned VERIFIED, the Sign button disabled until the text changes (`enable_sign`), the provenance of
        the sentences the signed text still holds, the stale export cleared and the confirmation hidden.
        The worklist is refreshed by the next step of the event, so a refused signature (an empty report)
        never blanks it."""
        login = require(self.store, request, "sign")
        report = sign_study(self.engine, study.study_uid if study else None, text, login.name)
        message = render.signed_message(report)
        sending = render.send_status_text(self.engine.send_status(report.study_uid))
        message += f". {sending}" if sending else ""
        gr.Info(html.escape(message))
        provenance = render.provenance_rows(sentences or [], kept_in=report.text)
        return (render.escape_md(message), render.verified_marker(report), gr.Button(interactive=False), provenance,
                None, gr.Column(visible=False))

    @staticmethod
    def enable_sign() -> gr.Button:
        """The Sign button active again: the report text changed, or a new draft was loaded."""
        return gr.Button(interactive=True)

    @readable_errors
    def on_export(self, study: ReviewStudy | None, fmt: str | None, request: gr.Request) -> str:
        """The study's newest report as a download: DICOM SR, text or JSON (an "export" event)."""
        login = require(self.store, request, "export")
        return export_study(self.store, study.study_uid if study else None, fmt, login)

    # ---------------------------------------------------------------- worklist
    @readable_errors
    def on_worklist(self, request: gr.Request) -> pd.DataFrame:
        """Every stored study, newest first, with its status (new / drafted / signed)."""
        require(self.store, request, "read")
        return self._worklist()

    def _worklist(self) -> pd.DataFrame:
        studies = self.store.list_studies()
        return render.worklist_rows(studies, self.store.latest_report_texts([s.study_uid for s in studies]))

    @readable_errors
    def on_worklist_select(self, evt: gr.SelectData, request: gr.Request) -> tuple[str, Image.Image | None, str]:
        """A worklist study picked: remember it, show its preview and latest report."""
        login = require(self.store, request, "read")
        study_uid = str(last_cell(evt))
        report = self.store.latest_report(study_uid)
        log_view(self.store, login, study_uid, "worklist")
        return study_uid, render.study_preview(self.store, study_uid), render.report_markdown(study_uid, report)

    @readable_errors
    def on_text_search(self, query: str | None, k: float | None,
                       request: gr.Request) -> tuple[list[ImageMatch], list, pd.DataFrame]:
        """Stored images matching a phrase, one per study, with their reports."""
        login = require(self.store, request, "read")
        if not (query or "").strip():
            raise user_error("type a phrase to search for, e.g. 'pleural effusion'")
        matches = self.engine.search_text(query.strip(), k=check_k(k))
        log_view(self.store, login, None, "text search", [m.study_uid for m in matches])
        reports = {m.study_uid: self._report_text(m.study_uid) for m in matches}
        gallery = [(render.png_image(self.store.preview(m.sop_instance_uid)) or render.blank(),
                    render.case_caption(m.score, m.modality, m.body_part)) for m in matches]
        return matches, gallery, render.match_rows(matches, reports)

    @readable_errors
    def on_match_select(self, matches: list[ImageMatch] | None, evt: gr.SelectData,
                        request: gr.Request) -> tuple[Image.Image | None, str]:
        """A text-search match picked: its image and its report."""
        login = require(self.store, request, "read")
        match = picked(matches or [], evt)
        if match is None:
            return gr.skip(), gr.skip()
        log_view(self.store, login, match.study_uid, "text search match")
        preview = render.png_image(self.store.preview(match.sop_instance_uid))
        return preview, render.report_markdown(match.study_uid, self.store.latest_report(match.study_uid), match.score)

    @staticmethod
    def show_review() -> gr.Tabs:
        """Switch to the Review tab (after a study was opened from the worklist)."""
        return gr.Tabs(selected=REVIEW_TAB)

    # ------------------------------------------------------------------- audit
    @readable_errors
    def on_audit(self, user: str | None, kind: str | None,
                 request: gr.Request) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The audit trail, newest first, optionally of one user and one kind; and the accounts (admins only)."""
        require(self.store, request, "audit")
        if kind and kind not in AUDIT_KINDS:
            raise user_error(f"event kind {kind!r}: expected one of {', '.join(k for k in AUDIT_KINDS if k)}")
        events = self.store.events(kind=kind or None, user=(user or "").strip() or None, limit=AUDIT_LIMIT)
        return render.audit_rows(events), render.user_rows(self.store.users())

    def _report_text(self, study_uid: str) -> str:
        report = self.store.latest_report(study_uid)
        return report.text if report else ""
