"""The browser's event handlers: short, named, each one call into the engine or the store.

Per-session values travel in `gr.State`: the study under review (`ReviewStudy`), the similar cases
(`list[SimilarCase]`), the draft's sentences (`list[DraftSentence]`), the text-search matches
(`list[ImageMatch]`) and the worklist study picked last (its UID). Handlers that need a study raise
`gr.Error` when none is loaded; viewer handlers then show no image.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd
from PIL import Image

from db.store import CaseStore
from medcm.draft import DraftSentence
from medcm.engine import Engine, ImageMatch, SimilarCase
from ui import render
from ui.api import check_k, draft_study, sign_study
from ui.errors import readable_errors, user_error
from ui.study import ReviewStudy, ingest_upload, load_study, read_ref, read_study, window_of

TOP_K = 5
REVIEW_TAB = "review"
NO_STUDY = "no study loaded: upload a DICOM study first"
DRAFT_MARKER = ("### ⚠ UNVERIFIED DRAFT\nSuggested from the reports of similar past cases. "
                "Review and edit every sentence before signing.")

# study, image, instance selector, frame slider, study line, then the panels a new study clears:
# comparison query / case / report, source report / image, sign message.
StudyOutputs = tuple[ReviewStudy, Image.Image, gr.Dropdown, gr.Slider, str, None, None, str, str, None, str]
COMPARE_HINT = "Select a case above to compare."


def _row_key(evt: gr.SelectData) -> object:
    """The first cell of the selected table row (robust to the user sorting the table), else the row index."""
    if evt.row_value:
        return evt.row_value[0]
    return evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index


def _picked(items: list[Any], evt: gr.SelectData) -> Any | None:
    """The case a gallery (by position) or a table (by the study uid in its first cell) selection points at."""
    key = evt.index if isinstance(evt.index, int) else _row_key(evt)
    if isinstance(key, int):
        return items[key] if 0 <= key < len(items) else None
    return next((item for item in items if item.study_uid == key), None)


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

    # ------------------------------------------------------------------ viewer
    @readable_errors
    def on_upload(self, files: list[str] | None, signer: str | None, preset: str | None,
                  progress: gr.Progress = gr.Progress()) -> StudyOutputs:
        """Store the upload (content-addressed), ingest it and show its first image."""
        progress(0.2, desc="storing and indexing the upload")
        study_uid, notes = ingest_upload(self.engine, files, self.upload_dir, user=signer or "clinician")
        for note in notes:
            gr.Warning(html.escape(note))
        return self._show(study_uid, preset, notes)

    @readable_errors
    def open_study(self, study_uid: str | None, preset: str | None) -> StudyOutputs:
        """Open a stored study (picked in the worklist) for review."""
        if not study_uid:
            raise user_error("pick a study in the worklist first")
        return self._show(study_uid, preset, [])

    def _show(self, study_uid: str, preset: str | None, notes: list[str]) -> StudyOutputs:
        study = load_study(self.store, study_uid)
        choices = [(ref.label, i) for i, ref in enumerate(study.images)]
        first = study.images[0]
        selector = gr.Dropdown(choices=choices, value=0, visible=len(choices) > 1)
        frames = gr.Slider(minimum=0, maximum=max(first.frames - 1, 1), value=0, step=1, visible=first.frames > 1)
        info = render.study_markdown(study_uid, len(study.images), self.store.latest_report(study_uid), notes)
        cleared = (None, None, COMPARE_HINT, "", None, "")
        return study, self.render_view(study, preset, 0, 0), selector, frames, info, *cleared

    @readable_errors
    def render_view(self, study: ReviewStudy | None, preset: str | None, index: int | None,
                    frame: float | None) -> Image.Image | None:
        """The viewer image: instance `index`, frame `frame`, with a window preset ("default": the file's VOI)."""
        if study is None:
            return None
        ref = study.images[min(max(int(index or 0), 0), len(study.images) - 1)]
        return render.frame_image(read_ref(ref, window_of(preset)), int(frame or 0))

    @readable_errors
    def on_instance(self, study: ReviewStudy | None, index: int | None,
                    preset: str | None) -> tuple[gr.Slider, Image.Image | None]:
        """Another instance picked: reset the frame slider to its frames and show its first frame."""
        if study is None:
            return gr.Slider(visible=False), None
        ref = study.images[int(index or 0)]
        slider = gr.Slider(minimum=0, maximum=max(ref.frames - 1, 1), value=0, step=1, visible=ref.frames > 1)
        return slider, self.render_view(study, preset, index, 0)

    # ----------------------------------------------------------- similar cases
    @readable_errors
    def on_similar(self, study: ReviewStudy | None,
                   progress: gr.Progress = gr.Progress()) -> tuple[list[SimilarCase], list, pd.DataFrame]:
        """The most similar past cases: gallery thumbnails with scores, and the table."""
        if study is None:
            raise user_error(NO_STUDY)
        progress(0.3, desc="searching similar cases")
        cases = self.engine.similar_cases(read_study(study), k=self.top_k)
        gallery = [(render.study_preview(self.store, c.study_uid) or render.blank(),
                    render.case_caption(c.score, c.modality, c.body_part)) for c in cases]
        return cases, gallery, render.similar_rows(cases)

    @readable_errors
    def on_case_select(self, cases: list[SimilarCase] | None, study: ReviewStudy | None, preset: str | None,
                       index: int | None, frame: float | None,
                       evt: gr.SelectData) -> tuple[Image.Image | None, Image.Image | None, str]:
        """A similar case picked (gallery or table): query image, its preview and its report side by side."""
        case = _picked(cases or [], evt)
        if case is None:
            return gr.skip(), gr.skip(), gr.skip()
        report = render.report_markdown(case.study_uid, self.store.latest_report(case.study_uid), case.score)
        return self.render_view(study, preset, index, frame), render.study_preview(self.store, case.study_uid), report

    # ------------------------------------------------------------------- draft
    @readable_errors
    def on_draft(self, study: ReviewStudy | None,
                 progress: gr.Progress = gr.Progress()) -> tuple[list[DraftSentence], str, pd.DataFrame, str]:
        """Draft the findings (kept in the store as a draft) and list every sentence's sources."""
        if study is None:
            raise user_error(NO_STUDY)
        progress(0.3, desc="drafting findings from similar cases")
        draft = draft_study(self.engine, self.store, study.study_uid, read_study(study))
        if not draft.sentences:
            gr.Warning("no draft: the similar cases gave no usable sentence; write the findings yourself")
        return list(draft.sentences), draft.text(), render.provenance_rows(draft), DRAFT_MARKER

    @readable_errors
    def on_source_select(self, sentences: list[DraftSentence] | None,
                         evt: gr.SelectData) -> tuple[str, Image.Image | None]:
        """A draft sentence picked: its source cases' reports, and the best source's preview."""
        sentences = sentences or []
        number = int(_row_key(evt) or 0)
        if not 1 <= number <= len(sentences):
            return gr.skip(), gr.skip()
        sentence = sentences[number - 1]
        reports = {}
        for p in sentence.sources:
            report = self.store.latest_report(p.case_id)
            reports[p.case_id] = report.text if report else "(no report)"
        best = sentence.sources[0].case_id if sentence.sources else None
        preview = render.study_preview(self.store, best) if best else None
        return render.sources_markdown(sentence, reports), preview

    # -------------------------------------------------------------------- sign
    @readable_errors
    def on_sign(self, study: ReviewStudy | None, text: str | None, signer: str | None) -> tuple[str, pd.DataFrame]:
        """Sign the edited report; the worklist shows the study as signed."""
        report = sign_study(self.engine, study.study_uid if study else None, text, signer)
        message = render.signed_message(report)
        gr.Info(html.escape(message))
        return render.escape_md(message), self.on_worklist()

    # ---------------------------------------------------------------- worklist
    @readable_errors
    def on_worklist(self) -> pd.DataFrame:
        """Every stored study, newest first, with its status (new / drafted / signed)."""
        return render.worklist_rows(self.store.list_studies())

    @readable_errors
    def on_worklist_select(self, evt: gr.SelectData) -> tuple[str, Image.Image | None, str]:
        """A worklist study picked: remember it, show its preview and latest report."""
        study_uid = str(_row_key(evt))
        report = self.store.latest_report(study_uid)
        return study_uid, render.study_preview(self.store, study_uid), render.report_markdown(study_uid, report)

    @readable_errors
    def on_text_search(self, query: str | None, k: float | None) -> tuple[list[ImageMatch], list, pd.DataFrame]:
        """Stored images matching a phrase, one per study, with their reports."""
        if not (query or "").strip():
            raise user_error("type a phrase to search for, e.g. 'pleural effusion'")
        matches = self.engine.search_text(query.strip(), k=check_k(k))
        reports = {m.study_uid: self._report_text(m.study_uid) for m in matches}
        gallery = [(render.png_image(self.store.preview(m.sop_instance_uid)) or render.blank(),
                    render.case_caption(m.score, m.modality, m.body_part)) for m in matches]
        return matches, gallery, render.match_rows(matches, reports)

    @readable_errors
    def on_match_select(self, matches: list[ImageMatch] | None,
                        evt: gr.SelectData) -> tuple[Image.Image | None, str]:
        """A text-search match picked: its image and its report."""
        match = _picked(matches or [], evt)
        if match is None:
            return gr.skip(), gr.skip()
        preview = render.png_image(self.store.preview(match.sop_instance_uid))
        return preview, render.report_markdown(match.study_uid, self.store.latest_report(match.study_uid), match.score)

    @staticmethod
    def show_review() -> gr.Tabs:
        """Switch to the Review tab (after a study was opened from the worklist)."""
        return gr.Tabs(selected=REVIEW_TAB)

    def _report_text(self, study_uid: str) -> str:
        report = self.store.latest_report(study_uid)
        return report.text if report else ""
