"""The Review tab's priors: the same patient's other studies, their signed reports, and one beside the current study.

`prior_panel` builds a compact table in the review column (date, modality, description, status, the
signed report's first line); selecting a prior shows its signed report under the table at once and opens
`prior_comparison`, full width below: the series on screen and the prior's series of the same modality in two
linked viewers (`ui/static/viewer.js`: scrolling one scrolls the other by the same distance in mm).
`PriorHandlers` fills them from `Engine.priors` whenever the study under review changes.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
import pandas as pd

from db.store import CaseStore
from medcm.engine.facade import Engine, Prior
import ui.render as render
from ui.auth import log_view, require
from ui.errors import readable_errors
from ui.selection import last_cell
from ui.study import ReviewStudy, load_study
from ui.viewer_route import viewer_url

NO_PRIOR = "No other study of this patient is stored."
PRIOR_HINT = "Select a prior to read its signed report and see it beside this study."
COMPARE_HTML = """
<div id="medcm-compare" tabindex="0" aria-label="This study and the prior: wheel or arrow keys scroll both">
  <div class="medcm-toolbar">
    <label class="medcm-link"><input type="checkbox" id="medcm-link" checked> link scrolling (same distance in mm)</label>
    <span class="medcm-hint">drag: window · wheel or ↑ ↓: slices · right drag: zoom · middle drag: pan</span>
  </div>
  <div class="medcm-pair">
    <div class="medcm-stage"><div id="medcm-cmp-current" class="medcm-cmp-vp"></div>
      <div class="medcm-ov medcm-tl" id="medcm-cmp-current-label">This study</div>
      <div class="medcm-ov medcm-tr" id="medcm-cmp-current-frame"></div>
      <div class="medcm-ov medcm-bl" id="medcm-cmp-current-wl"></div></div>
    <div class="medcm-stage"><div id="medcm-cmp-prior" class="medcm-cmp-vp"></div>
      <div class="medcm-ov medcm-tl" id="medcm-cmp-prior-label">Select a prior</div>
      <div class="medcm-ov medcm-tr" id="medcm-cmp-prior-frame"></div>
      <div class="medcm-ov medcm-bl" id="medcm-cmp-prior-wl"></div></div>
  </div>
</div>
"""
COMPARE_CSS = """
#medcm-compare { background: #000; border-radius: 6px; outline: none; padding: 4px; }
#medcm-compare:focus { box-shadow: 0 0 0 2px #f97316; }
.medcm-pair { display: grid; grid-template-columns: 1fr 1fr; gap: 4px; }
.medcm-cmp-vp { width: 100%; height: calc(100vh - 260px); min-height: 320px; }
.medcm-link, .medcm-hint { color: #e4e4e7; font-size: 12px; margin-right: 12px; }
"""


def matching_series(study: ReviewStudy, modality: str) -> int:
    """The series of `study` to set beside one of `modality`: the longest stack of that modality, else the
    longest stack of any."""
    def rank(index: int) -> tuple[bool, int, int]:
        ref = study.images[index]
        return ref.modality == modality, ref.frames, -index

    return max(range(len(study.images)), key=rank)


def _priors_label(count: int) -> str:
    """The accordion's title: how many priors the patient has."""
    if count == 0:
        return "Priors: no other study of this patient"
    return f"Priors: {count} other stud{'y' if count == 1 else 'ies'} of this patient (select one to compare)"


class PriorHandlers:
    """Handlers of the priors panel, bound to one engine and store.

    Args:
        engine: the loaded engine (`Engine.priors`).
        store: its case store (previews, the audit trail, logins).
    """

    def __init__(self, engine: Engine, store: CaseStore) -> None:
        self.engine, self.store = engine, store

    @readable_errors
    def on_priors(self, study: ReviewStudy | None,
                  request: gr.Request) -> tuple[list[Prior], pd.DataFrame, gr.Accordion, str, str, gr.Accordion]:
        """The study under review changed: its patient's other studies, newest first, the panel's title, and
        the last prior's report and comparison cleared (and closed). No study: an empty list."""
        require(self.store, request, "read")
        priors = self.engine.priors(study.study_uid) if study is not None else []
        hint = PRIOR_HINT if priors else NO_PRIOR
        return (priors, render.prior_rows(priors), gr.Accordion(label=_priors_label(len(priors))), hint, "",
                gr.Accordion(open=False))

    @readable_errors
    def on_prior_select(self, priors: list[Prior] | None, study: ReviewStudy | None, index: int | None,
                        evt: gr.SelectData, request: gr.Request) -> tuple[str, str, gr.Accordion]:
        """A prior picked: its signed report, and the series on screen (`index` of the study) beside the
        prior's series of the same modality in the linked viewers (the comparison opened); a "view" event
        names the prior."""
        login = require(self.store, request, "read")
        uid = str(last_cell(evt))
        prior = next((p for p in priors or [] if p.study_uid == uid), None)
        if prior is None:
            return gr.skip(), gr.skip(), gr.skip()
        log_view(self.store, login, prior.study_uid, "prior")
        report = render.prior_markdown(prior)
        if study is None:
            return report, "", gr.skip()
        current = min(max(int(index or 0), 0), len(study.images) - 1)
        earlier = load_study(self.store, prior.study_uid)
        series = matching_series(earlier, study.images[current].modality)
        source = render.compare_source_html(
            viewer_url(study.study_uid, current), viewer_url(prior.study_uid, series),
            "This study", "Prior" + (f" · {prior.study_date}" if prior.study_date else ""))
        return report, source, gr.Accordion(open=True)


def prior_panel(c: dict[str, Any]) -> None:
    """The priors table and the selected prior's report, in an accordion of the review column."""
    c["priors"] = gr.State([])
    with gr.Accordion(_priors_label(0), open=False, elem_id="priors-panel") as c["priors_panel"]:
        c["prior_table"] = gr.Dataframe(render.table([], render.PRIOR_HEADERS), label="Same patient's other studies",
                                        interactive=False, wrap=True, max_height=220, elem_id="prior-table",
                                        column_widths=render.PRIOR_WIDTHS)
        c["prior_report"] = gr.Markdown(NO_PRIOR, latex_delimiters=[], max_height=220, elem_id="prior-report")


def prior_comparison(c: dict[str, Any]) -> None:
    """The selected prior beside this study in two linked viewers, full width."""
    with gr.Accordion("Prior beside this study", open=False, elem_id="prior-compare-panel") as c["prior_compare"]:
        c["compare_viewer"] = gr.HTML(COMPARE_HTML, elem_id="compare-viewer")
        c["compare_source"] = gr.HTML("", visible="hidden", elem_id="compare-source")


def wire_priors(h: PriorHandlers, c: dict[str, Any], private: dict[str, Any]) -> None:
    """The study under review changes → its priors; a prior picked → its report and the side-by-side view."""
    c["study"].change(h.on_priors, [c["study"]], [c["priors"], c["prior_table"], c["priors_panel"], c["prior_report"],
                                                 c["compare_source"], c["prior_compare"]], **private)
    c["prior_table"].select(h.on_prior_select, [c["priors"], c["study"], c["instance"]],
                            [c["prior_report"], c["compare_source"], c["prior_compare"]], **private)
