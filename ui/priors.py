"""The Review tab's priors: the same patient's other studies, their signed reports, and one beside the current study.

`prior_panel` builds a compact table in the review column (date, modality, description, status, the
signed report's first line); selecting a prior shows its signed report under the table at once and opens
`prior_comparison`, full width below: the current study's and the prior's server-rendered images side by side.
`PriorHandlers` fills them from `Engine.priors` whenever the study under review changes.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
import pandas as pd
from PIL import Image

from db.store import CaseStore
from medcm.engine.facade import Engine, Prior
import ui.render as render
from ui.auth import log_view, require
from ui.errors import readable_errors
from ui.handlers import last_cell
from ui.study import ReviewStudy

NO_PRIOR = "No other study of this patient is stored."
PRIOR_HINT = "Select a prior to read its signed report and see it beside this study."


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
                  request: gr.Request) -> tuple[list[Prior], pd.DataFrame, gr.Accordion, str, None, None]:
        """The study under review changed: its patient's other studies, newest first, the panel's title, and
        the last prior's report and images cleared. No study: an empty list."""
        require(self.store, request, "read")
        priors = self.engine.priors(study.study_uid) if study is not None else []
        hint = PRIOR_HINT if priors else NO_PRIOR
        return priors, render.prior_rows(priors), gr.Accordion(label=_priors_label(len(priors))), hint, None, None

    @readable_errors
    def on_prior_select(self, priors: list[Prior] | None, study: ReviewStudy | None, evt: gr.SelectData,
                        request: gr.Request) -> tuple[str, Image.Image | None, Image.Image | None, gr.Accordion]:
        """A prior picked: its signed report, this study's and the prior's images side by side (the
        comparison opened); a "view" event names the prior."""
        login = require(self.store, request, "read")
        uid = str(last_cell(evt))
        prior = next((p for p in priors or [] if p.study_uid == uid), None)
        if prior is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        log_view(self.store, login, prior.study_uid, "prior")
        current = render.study_preview(self.store, study.study_uid) if study is not None else None
        return (render.prior_markdown(prior), current, render.study_preview(self.store, prior.study_uid),
                gr.Accordion(open=True))


def prior_panel(c: dict[str, Any]) -> None:
    """The priors table and the selected prior's report, in an accordion of the review column."""
    c["priors"] = gr.State([])
    with gr.Accordion(_priors_label(0), open=False, elem_id="priors-panel") as c["priors_panel"]:
        c["prior_table"] = gr.Dataframe(render.table([], render.PRIOR_HEADERS), label="Same patient's other studies",
                                        interactive=False, wrap=True, max_height=180, elem_id="prior-table")
        c["prior_report"] = gr.Markdown(NO_PRIOR, latex_delimiters=[], max_height=220, elem_id="prior-report")


def prior_comparison(c: dict[str, Any]) -> None:
    """The selected prior beside this study (server-rendered images), full width."""
    with gr.Accordion("Prior beside this study", open=False, elem_id="prior-compare-panel") as c["prior_compare"]:
        with gr.Row(equal_height=True):
            c["prior_query"] = gr.Image(label="This study", type="pil", format="png", height=320, interactive=False,
                                        elem_id="prior-query")
            c["prior_image"] = gr.Image(label="Selected prior", type="pil", format="png", height=320,
                                        interactive=False, elem_id="prior-image")


def wire_priors(h: PriorHandlers, c: dict[str, Any], private: dict[str, Any]) -> None:
    """The study under review changes → its priors; a prior picked → its report and the side-by-side view."""
    c["study"].change(h.on_priors, [c["study"]], [c["priors"], c["prior_table"], c["priors_panel"], c["prior_report"],
                                                 c["prior_query"], c["prior_image"]], **private)
    c["prior_table"].select(h.on_prior_select, [c["priors"], c["study"]],
                            [c["prior_report"], c["prior_query"], c["prior_image"], c["prior_compare"]], **private)
