"""The Review tab on one screen: the study viewer left, the draft and signing right, similar cases as a strip.

At 1440 × 900 the viewer (Cornerstone3D, `ui/static/viewer.js`, fed by `ui.viewer_route`) and the
editable draft sit side by side and fully visible; the similar cases are a thumbnail strip under the
draft, whose selection opens the side-by-side comparison; the patient's priors (`ui.priors`), each
sentence's provenance, the export, the server-rendered fallback image and the keyboard shortcuts are
accordions.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from medcm.dicom.sr import EXPORT_FORMATS
from ui.handlers import COMPARE_HINT, DRAFT_MARKER, TOP_K, Handlers
from ui.question import question_section, wire_question
from ui.fetch import FetchHandlers, fetch_box, wire_fetch
from ui.priors import COMPARE_CSS, PriorHandlers, prior_comparison, prior_panel, wire_priors
from ui.render import PROVENANCE_HEADERS, SIMILAR_HEADERS, SIMILAR_WIDTHS, table
from ui.study import DEFAULT_PRESET, PRESETS
from ui.viewer_route import SCRIPT_PATH

PRIVATE: dict[str, Any] = {"api_visibility": "private"}
# Model and store work runs one event at a time (one engine, CPU-bound); viewing does not wait on it.
ENGINE_QUEUE: dict[str, Any] = {"concurrency_id": "engine", "concurrency_limit": 1}
# Work that must not wait behind an upload: an upload's cheap checks (a refused upload never enters the
# engine's queue) and signing (one text embedding and one short transaction, beside a running ingest).
CHECK_QUEUE: dict[str, Any] = {"concurrency_id": "checks", "concurrency_limit": 4}
SIGN_QUEUE: dict[str, Any] = {"concurrency_id": "sign", "concurrency_limit": 2}

VIEWER_HTML = """
<div id="medcm-viewer" tabindex="0" aria-label="Study viewer: drag to window, wheel or arrow keys to scroll">
  <div class="medcm-toolbar">
    <span id="medcm-presets"></span>
    <button type="button" class="medcm-btn" id="medcm-cine" disabled title="play the frames (key c)">▶ cine</button>
    <button type="button" class="medcm-btn" id="medcm-reset" title="fit and the file's window (key r)">reset</button>
    <button type="button" class="medcm-btn" id="medcm-full" title="native resolution on black (key f)">fullscreen</button>
  </div>
  <div class="medcm-stage">
    <div id="medcm-viewport"></div>
    <div class="medcm-ov medcm-tl" id="medcm-ov-series">Upload a study or open one from the worklist</div>
    <div class="medcm-ov medcm-tr" id="medcm-ov-frame"></div>
    <div class="medcm-ov medcm-bl" id="medcm-ov-wl"></div>
    <div class="medcm-ov medcm-br" id="medcm-ov-zoom"></div>
    <div class="medcm-ov medcm-ml" id="medcm-ov-left"></div>
    <div class="medcm-ov medcm-mr" id="medcm-ov-right"></div>
    <div class="medcm-ov medcm-tc" id="medcm-ov-top"></div>
    <div class="medcm-ov medcm-bc" id="medcm-ov-bottom"></div>
  </div>
  <input type="range" id="medcm-slider" min="0" max="0" value="0" disabled aria-label="slice or frame">
</div>
"""
SHORTCUTS = """
| key | in the viewer (click it first) |
|---|---|
| wheel, ↑ ↓ ← → | previous / next slice or frame (PageUp / PageDown: 10, Home / End: first / last) |
| left drag | window / level; **0** the file's window, **1**–**5** the CT presets (CT only) |
| right drag or Shift + drag | zoom; middle drag or Ctrl + drag: pan; **r** reset |
| **c** or space | cine (play the frames); **f** fullscreen at native resolution, on black |
| wheel, ↑ ↓ in "Prior beside this study" | both studies move together by the same distance in mm (untick "link scrolling" to move one) |

| key | anywhere |
|---|---|
| Alt + ↓ / Alt + ↑ | next / previous draft sentence and its sources |
| Ctrl + S | save the draft |
| Ctrl + Enter | sign the report (asks to confirm) |
"""
CSS = """
.gradio-container { max-width: 100% !important; padding-top: 4px !important; }
#medcm-viewer { background: #000; border-radius: 6px; outline: none; padding: 4px; }
#medcm-viewer:focus { box-shadow: 0 0 0 2px #f97316; }
#medcm-viewer:fullscreen { display: flex; flex-direction: column; padding: 0; }
#medcm-viewer:fullscreen .medcm-stage { flex: 1; }
#medcm-viewer:fullscreen #medcm-viewport { height: 100%; }
.medcm-toolbar { display: flex; flex-wrap: wrap; gap: 4px; padding: 2px 0 4px; }
.medcm-btn { background: #27272a; color: #e4e4e7; border: 1px solid #3f3f46; border-radius: 4px;
             padding: 1px 7px; font-size: 12px; cursor: pointer; }
.medcm-btn:disabled { opacity: 0.4; cursor: default; }
.medcm-stage { position: relative; }
#medcm-viewport { width: 100%; height: calc(100vh - 370px); min-height: 360px; }
.medcm-ov { position: absolute; color: #fde68a; font: 12px/1.3 monospace; pointer-events: none;
            text-shadow: 0 0 2px #000; white-space: nowrap; }
.medcm-tl { top: 4px; left: 6px; } .medcm-tr { top: 4px; right: 6px; }
.medcm-bl { bottom: 4px; left: 6px; } .medcm-br { bottom: 4px; right: 6px; }
.medcm-ml { top: 50%; left: 6px; } .medcm-mr { top: 50%; right: 6px; }
.medcm-tc { top: 20px; left: 50%; } .medcm-bc { bottom: 20px; left: 50%; }
#medcm-slider { width: 100%; }
#upload { min-height: 0 !important; }
#disclaimer, #login, #demo-notice { font-size: 13px; }
#disclaimer p, #login p, #demo-notice p { margin: 0; }
""" + COMPARE_CSS


def review_tab(h: Handlers, priors: PriorHandlers, fetch: FetchHandlers) -> dict[str, Any]:
    """Upload or fetch from the PACS, viewer and draft side by side, similar cases, the patient's priors,
    provenance; returns the components other tabs drive."""
    c: dict[str, Any] = {"study": gr.State(None), "cases": gr.State([]), "sentences": gr.State([])}
    with gr.Row(equal_height=False):
        with gr.Column(scale=11, min_width=560):
            with gr.Row():
                c["files"] = gr.File(label="DICOM files or a .zip of one study", file_count="multiple", height=60,
                                     scale=3, elem_id="upload")
                c["instance"] = gr.Dropdown(choices=[], label="Series / instance", visible=False, scale=2,
                                            elem_id="instance")
                fetch_box(c)
            c["viewer"] = gr.HTML(VIEWER_HTML, head=f'<script src="{SCRIPT_PATH}"></script>', elem_id="viewer")
            c["viewer_source"] = gr.HTML("", visible="hidden", elem_id="viewer-source")
            c["info"] = gr.Markdown(elem_id="study-info")
        with gr.Column(scale=9, min_width=440):
            question_section(c)
            _draft_section(c)
            _similar_strip(c)
            prior_panel(c)
            _provenance_section(c)
    _comparison_section(c)
    prior_comparison(c)
    _export_section(c)
    _fallback_section(c)
    with gr.Accordion("Keyboard shortcuts", open=False, elem_id="shortcuts"):
        gr.Markdown(SHORTCUTS)
    _wire(h, c)
    wire_question(h, c, PRIVATE, ENGINE_QUEUE)
    wire_priors(priors, c, PRIVATE)
    wire_fetch(fetch, h, c, PRIVATE, ENGINE_QUEUE)
    return c


def picture(label: str, elem_id: str, height: int = 320) -> gr.Image:
    """A read-only PNG image panel."""
    return gr.Image(label=label, type="pil", format="png", height=height, interactive=False, elem_id=elem_id)


def selectable_table(headers: list[str], label: str, elem_id: str, **kwargs: Any) -> gr.Dataframe:
    """A read-only table whose rows can be selected."""
    return gr.Dataframe(table([], headers), label=label, interactive=False, wrap=True, elem_id=elem_id, **kwargs)


def gallery(label: str, elem_id: str, height: int = 240) -> gr.Gallery:
    """A row of thumbnails, one per case; selecting one fires `.select`."""
    return gr.Gallery(label=label, columns=TOP_K, height=height, format="png", allow_preview=False,
                      interactive=False, elem_id=elem_id)


def _draft_section(c: dict[str, Any]) -> None:
    """The unverified draft, its marker and the save / sign / draft-again buttons."""
    c["marker"] = gr.Markdown(DRAFT_MARKER, elem_id="draft-marker")
    c["draft"] = gr.Textbox(label="Report (edit before signing)", lines=9, max_lines=9, interactive=True,
                            elem_id="draft-text")
    with gr.Row():
        c["redraft"] = gr.Button("Draft again", size="sm", elem_id="redraft")
    with gr.Column(elem_id="sign-section") as c["sign_section"]:  # clinicians only (`Handlers.on_load`)
        with gr.Row():
            c["save"] = gr.Button("Save draft", size="sm", elem_id="save-draft")
            c["sign"] = gr.Button("Sign report", variant="primary", size="sm", elem_id="sign")
        with gr.Column(visible=False, elem_id="sign-confirm-row") as c["confirm_row"]:
            c["confirm_text"] = gr.Markdown(elem_id="sign-question")
            with gr.Row():
                c["confirm"] = gr.Button("Confirm signature", variant="primary", size="sm", elem_id="sign-confirm")
                c["cancel"] = gr.Button("Cancel", size="sm", elem_id="sign-cancel")
        c["signed"] = gr.Markdown(elem_id="signed-status")


def _similar_strip(c: dict[str, Any]) -> None:
    """The similar cases as a thumbnail strip (select one to compare)."""
    c["gallery"] = gallery(f"Similar past cases (top {TOP_K}; select one to compare side by side)",
                           "similar-gallery", height=150)


def _provenance_section(c: dict[str, Any]) -> None:
    """Where each sentence comes from: select one for its sources and where it is seen in this study."""
    with gr.Accordion("Where each sentence comes from (select one: its sources, and where it is seen)",
                      open=False, elem_id="provenance-panel") as c["provenance_panel"]:
        c["provenance"] = selectable_table(PROVENANCE_HEADERS, "Draft sentences and their source cases",
                                           "provenance", column_widths=["4%", "15%", "49%", "9%", "23%"])
        with gr.Row():
            c["heatmap"] = picture("Where the selected sentence is seen in this study", "sentence-heatmap", 240)
            c["source_image"] = picture("Best source case", "source-image", 240)
        c["source_report"] = gr.Markdown(latex_delimiters=[], elem_id="source-report")


def _export_section(c: dict[str, Any]) -> None:
    """The export of the latest report (DICOM SR, text, JSON)."""
    with gr.Accordion("Export the report", open=False, elem_id="export-panel") as c["export_panel"]:
        with gr.Row():
            c["export_format"] = gr.Radio(list(EXPORT_FORMATS), value="sr",
                                          label="Export format (sr: DICOM Structured Report)", elem_id="export-format")
            c["export"] = gr.Button("Export the latest report", elem_id="export")
        c["exported"] = gr.File(label="Exported report", interactive=False, elem_id="exported")


def _comparison_section(c: dict[str, Any]) -> None:
    """The similar cases' table and the side-by-side comparison of the one selected."""
    with gr.Accordion("Similar cases: scores, reports and the side-by-side comparison", open=False,
                      elem_id="compare-panel") as c["compare_panel"]:
        c["similar"] = selectable_table(SIMILAR_HEADERS, "Similar cases (select one to compare)", "similar-table",
                                       column_widths=SIMILAR_WIDTHS)
        with gr.Row(equal_height=True):
            c["compare_query"] = picture("This study", "compare-query")
            c["compare_case"] = picture("Selected past case", "compare-case")
            c["compare_report"] = gr.Markdown(COMPARE_HINT, latex_delimiters=[], elem_id="compare-report")


def _fallback_section(c: dict[str, Any]) -> None:
    """The server-rendered image (8-bit PNG), for a browser without the viewer, and its window and frame."""
    with gr.Accordion("Server-rendered image (without the interactive viewer)", open=False, elem_id="fallback-panel"):
        with gr.Row():
            c["preset"] = gr.Radio(list(PRESETS), value=DEFAULT_PRESET, label="Window / level", elem_id="window-preset")
            c["frame"] = gr.Slider(0, 1, value=0, step=1, label="Frame", visible=False, elem_id="frame")
        c["image"] = picture("Study", "study-image", height=512)


def _wire(h: Handlers, c: dict[str, Any]) -> None:
    """Upload → view → similar cases → draft (each step only after the last succeeded); viewer and picks."""
    shown = [c["study"], c["image"], c["instance"], c["frame"], c["info"], c["compare_query"], c["compare_case"],
             c["compare_report"], c["source_report"], c["source_image"], c["signed"]]
    similar = ([c["study"]], [c["cases"], c["gallery"], c["similar"]])
    draft = ([c["study"]], [c["sentences"], c["draft"], c["provenance"], c["marker"]])
    c["shown"], c["load_similar"], c["load_draft"] = shown, similar, draft
    c["uploaded"] = (c["files"].upload(h.on_upload_check, [c["files"]], None, **PRIVATE, **CHECK_QUEUE)
                     .success(h.on_upload, [c["files"], c["preset"]], shown, **PRIVATE, **ENGINE_QUEUE)
                     .success(h.on_similar, *similar, **PRIVATE, **ENGINE_QUEUE)
                     .success(h.on_draft, *draft, **PRIVATE, **ENGINE_QUEUE))
    c["study"].change(h.viewer_source, [c["study"], c["instance"]], c["viewer_source"], **PRIVATE)
    c["instance"].input(h.viewer_source, [c["study"], c["instance"]], c["viewer_source"], **PRIVATE)
    view = [c["study"], c["preset"], c["instance"], c["frame"]]
    c["preset"].input(h.render_view, view, c["image"], **PRIVATE)
    c["frame"].release(h.render_view, view, c["image"], **PRIVATE)
    c["instance"].input(h.on_instance, [c["study"], c["instance"], c["preset"]], [c["frame"], c["image"]],
                        **PRIVATE)
    compare = [c["compare_query"], c["compare_case"], c["compare_report"]]
    for source in (c["gallery"], c["similar"]):
        source.select(h.on_case_select, [c["cases"], *view], compare, **PRIVATE)
        source.select(open_panel, None, c["compare_panel"], **PRIVATE)
    c["redraft"].click(h.on_draft, *draft, **PRIVATE, **ENGINE_QUEUE)
    c["provenance"].select(h.on_source_select, [c["sentences"]], [c["source_report"], c["source_image"]],
                           **PRIVATE)
    c["provenance"].select(h.on_sentence_heatmap, [c["study"], c["sentences"]], c["heatmap"],
                           **PRIVATE, **ENGINE_QUEUE)
    c["sentences"].change(h.clear_heatmap, None, c["heatmap"], **PRIVATE)  # a new draft: the old map is stale


def open_panel() -> gr.Accordion:
    """Open an accordion (the comparison, once a similar case is picked)."""
    return gr.Accordion(open=True)
