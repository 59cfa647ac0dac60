"""The browser review app: upload a study, compare similar cases, edit the draft findings, sign.

`build_app(engine, store, upload_dir=...)` returns a `gr.Blocks`; nothing is loaded or launched at
import. Launch it bound to the local machine, with the options of `launch_options()` and the store's
login check (`ui.auth.make_auth`)::

    app = build_app(engine, store, upload_dir=Path("cases.db.uploads"))
    app.launch(server_name="127.0.0.1", auth=make_auth(store), **launch_options())

Every page and every call needs a login; each handler acts as the logged-in account and checks its
role (viewer: read; clinician: also upload, draft, edit, sign; admin: read and the Audit tab).
Launched without `auth`, every event is refused ("not logged in").

Scripting API (gradio_client; every other event is private to the page). Log in with
`Client(url, auth=(name, password), analytics_enabled=False)` (the client's telemetry is on by
default) and pass files with `gradio_client.handle_file(path)`. A refused request raises
`gradio_client.exceptions.AppError` whose `message` is one readable line, e.g. "the report is
empty: write the findings before signing" or "role viewer may not sign reports (logged in as
dr.v); that needs the clinician role".

`/search` (dicom_file, k=5) -> list[dict]  (clinician)
    dicom_file: a DICOM file or a .zip of a study; it is saved and ingested like a browser upload
    (its first study joins the worklist). k: 1..50.
    Returns the k most similar past cases, best first:
    `[{"study_uid": str, "score": float, "percentile": float | null, "weak": bool, "report": str,
    "modality": str, "body_part": str}]`. `score` is the raw cosine; `percentile` the calibrated score
    (0-100: where the score falls among the archive's own studies' best matches; null for an archive
    too small to calibrate); `weak` marks a poor match (below the abstention percentile, or any case
    of a study the archive holds nothing like).

`/draft` (dicom_file) -> dict  (clinician)
    Ingests the file as `/search` does and drafts the findings from the 5 most similar cases.
    Returns `{"study_uid": str, "text": str, "verified": false, "abstained": bool, "reason": str,
    "abstention": {"abstained", "reason", "nearest_similarity", "typical_similarity", "percentile",
    "threshold", "neighbours"}, "source_cases": [str], "similar_cases": [/search's dicts without "report"],
    "sentences": [{"text": str, "section": "FINDINGS" | "IMPRESSION", "score": float,
    "sources": [{"case_id": str, "case_score": float, "sentence_score": float}]}]}`.
    When the archive holds nothing like the study (`medcm.engine.abstention`: its header names a
    modality or region no stored study has, or its similarity to its nearest cases is below the
    archive's own 5th percentile), `abstained` is true, `reason` says why with the numbers (e.g.
    "nothing in this archive resembles this study: nearest similarity 0.41, typical 0.78 ..."), and
    there is no text and no sentence. The draft is also saved in the store as the model's draft (the study
    stays "new" until a clinician saves a draft) unless it is empty or the study already has a signed
    report or a person's edit.

`/sign` (study_uid, text) -> dict  (clinician)
    Signs the study's final report as the logged-in account (a signed study gets an amendment: a
    new version) and adds it to the retrieval pool at once. Returns `{"report_id": int,
    "study_uid": str, "version": int, "status": "signed", "signed_by": <login name>,
    "signed_at": ISO-8601 UTC str}`. Empty text or an unknown study is refused.

`/export` (study_uid, format) -> file  (clinician)
    The study's newest report version as a file: "sr" (DICOM Basic Text SR referencing the study;
    VERIFIED with the signer and time when signed, UNVERIFIED for a draft), "txt" or "json".
    Recorded as an "export" event.

`/search_text` (query, k=5) -> list[dict]  (any role)
    Stored studies whose images match a phrase, best first: `[{"study_uid", "sop_instance_uid",
    "score", "modality", "body_part", "report"}]`.

`/heatmap` (study_uid, sentence) -> dict  (any role)
    Where in a stored study's image a sentence (e.g. one of `/draft`'s) is seen (`medcm.engine.grounding`):
    `{"study_uid", "sop_instance_uid", "sentence", "method", "shape": [H, W], "peak": [row, col],
    "grid": [[float]], "overlay_png": str}`. `grid` is the heatmap (0..1; 1 where the sentence is most
    seen) in at most 32 × 32 cells over the image, `peak` its maximum in the image's pixels, and
    `overlay_png` the image with the heatmap over it, a base64 PNG. The image is the study's first
    series' middle instance (one slice of a volume).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr
from starlette.middleware import Middleware

from db.store import CaseStore
from medcm.engine.dicomweb import DicomWebServer
from medcm.engine.facade import Engine
from ui.api import MAX_K, Endpoints
from ui.handlers import AUDIT_KINDS, REVIEW_TAB, TOP_K, Handlers
from ui.login_guard import LoginPolicy, login_notice
from ui.fetch import FetchHandlers
from ui.priors import PriorHandlers
from ui.render import AUDIT_HEADERS, MATCH_HEADERS, MATCH_WIDTHS, USER_HEADERS, WORKLIST_HEADERS
from ui.review import CHECK_QUEUE, CSS, ENGINE_QUEUE, PRIVATE, SIGN_QUEUE, gallery, picture, review_tab, selectable_table
from ui.session_guard import SessionGuard
from ui.viewer_route import ViewerRoutes

TITLE = "medcm review"
# case, patient, age, sex, date, modality, body part, description, status, report, study uid
WORKLIST_WIDTHS = ["11%", "10%", "5%", "3%", "7%", "5%", "6%", "10%", "5%", "26%", "12%"]
DISCLAIMER = ("Drafts are suggestions from similar past cases; "
              "a clinician reviews, edits and signs every report.")
LOGIN_PAGE_NOTE = f"<strong>{TITLE}</strong>: {DISCLAIMER}<br><br>"  # Gradio shows `auth_message` as HTML
__all__ = ["CHECK_QUEUE", "DISCLAIMER", "ENGINE_QUEUE", "PRIVATE", "SIGN_QUEUE", "TITLE", "SecurityHeaders",
           "build_app", "launch_options"]
# Gradio's temporary copies (uploads, rendered images) older than a day go, checked hourly;
# uploads themselves live on in `upload_dir`.
DELETE_CACHE = (3600, 86400)
# Suggested `launch()` options: no share tunnel; no run history (gradio 6 would otherwise keep every
# call's inputs and outputs, i.e. study images and reports, in the browser's storage); no monitoring
# or MCP endpoints; only the API link in the footer; no public /openapi.json (the API's schema is for
# logged-in users, at /gradio_api/info); security headers on every response (`SecurityHeaders`,
# outermost, so refusals carry them too); the login rules of `auth=make_auth(store)` on gradio's own
# routes (`SessionGuard`), stated on the login page; the study viewer's script and data for readers
# (`ViewerRoutes`); the one-screen layout's style. The default theme's fonts ship with gradio, and the
# viewer is served by the app, so the page fetches nothing from outside the server.
def launch_options() -> dict[str, Any]:
    """Fresh keyword arguments for `gr.Blocks.launch` (gradio fills in the FastAPI arguments it is given)."""
    return {"share": False, "footer_links": ["api"], "run_history": False, "enable_monitoring": False,
            "mcp_server": False, "auth_message": LOGIN_PAGE_NOTE + login_notice(LoginPolicy()), "css": CSS,
            "app_kwargs": {"openapi_url": None,
                           "middleware": [Middleware(SecurityHeaders), Middleware(SessionGuard),
                                          Middleware(ViewerRoutes)]}}


class SecurityHeaders:
    """ASGI middleware: every HTTP response refuses to be framed by another site (clickjacking), to be
    MIME-sniffed, and to send the page's address to other sites."""

    HEADERS = ((b"x-frame-options", b"DENY"), (b"content-security-policy", b"frame-ancestors 'none'"),
               (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"))
    NAMES = frozenset(name for name, _ in HEADERS)

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in self.NAMES]
                message = {**message, "headers": kept + list(self.HEADERS)}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def build_app(engine: Engine, store: CaseStore, *, upload_dir: str | Path,
              demo_notice: str | None = None, dicomweb: DicomWebServer | None = None) -> gr.Blocks:
    """The review app for one engine and store; launch it with `auth=ui.auth.make_auth(store)`.

    Args:
        engine: a loaded `Engine` (with a checkpoint).
        store: the engine's case store.
        upload_dir: where uploads are kept as `<sha256>.dcm` / `.zip` (created when needed).
        demo_notice: a line shown at the top, e.g. "Demo data are synthetic drawings, not patients."
        dicomweb: a PACS's DICOMweb server: clinicians get a "Fetch from PACS" field (a StudyInstanceUID) that
            pulls a study from it and opens it like an upload. None: no such field.

    Returns:
        The app, not launched.
    """
    handlers = Handlers(engine, store, Path(upload_dir))
    fetch = FetchHandlers(engine, store, dicomweb)
    endpoints = Endpoints(engine, store, Path(upload_dir))
    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=DELETE_CACHE, fill_width=True) as app:
        with gr.Row(equal_height=True):
            gr.Markdown(f"**{TITLE}** · {DISCLAIMER}", elem_id="disclaimer")
            if demo_notice:
                gr.Markdown(f"**⚠ {demo_notice}**", elem_id="demo-notice")
            login = gr.Markdown(elem_id="login")
        with gr.Tabs() as tabs:
            with gr.Tab("Review", id=REVIEW_TAB):
                review = review_tab(handlers, PriorHandlers(engine, store), fetch)
                review["tabs"] = tabs
            with gr.Tab("Worklist", id="worklist"):
                worklist = _worklist_tab(handlers, review)
            with gr.Tab("Audit", id="audit", visible=False) as audit:
                _audit_tab(handlers)
        _api(endpoints)
        clinical = [review["files"], review["redraft"], review["save"], review["sign"], review["export"],
                    review["question_apply"], review["draft"], review["sign_section"]]
        app.load(handlers.on_load, None, [login, worklist, audit, *clinical], **PRIVATE)
        app.load(fetch.on_load, None, review["fetch_box"], **PRIVATE)
    return app


def _worklist_tab(h: Handlers, review: dict[str, Any]) -> gr.Dataframe:
    """Worklist with status, opening a study for review, and text search; returns the worklist table."""
    picked, matches = gr.State(None), gr.State([])
    with gr.Row():
        refresh = gr.Button("Refresh", elem_id="worklist-refresh")
        open_button = gr.Button("Open selected study for review", elem_id="worklist-open")
    worklist = selectable_table(WORKLIST_HEADERS, "Studies (select one)", "worklist", column_widths=WORKLIST_WIDTHS)
    with gr.Row():
        picked_image = picture("Selected study", "worklist-image")
        picked_report = gr.Markdown(latex_delimiters=[], elem_id="worklist-report")
    gr.Markdown("## Text search")
    with gr.Row():
        query = gr.Textbox(label="Find images matching a phrase", placeholder="pleural effusion", scale=4,
                           elem_id="text-query")
        k = gr.Number(value=TOP_K, minimum=1, maximum=MAX_K, precision=0, label="How many", scale=1, elem_id="text-k")
        search = gr.Button("Search", scale=1, elem_id="text-search")
    found_gallery = gallery("Matching studies (similarity · modality · body part)", "match-gallery")
    found = selectable_table(MATCH_HEADERS, "Matches (select one to read its report)", "match-table",
                             column_widths=MATCH_WIDTHS)
    with gr.Row():
        match_image = picture("Selected match", "match-image")
        match_report = gr.Markdown(latex_delimiters=[], elem_id="match-report")

    refresh.click(h.on_worklist, None, worklist, **PRIVATE)
    for event in (review["uploaded"], *review["fetch_events"]):  # a new study joins the worklist
        event.then(h.on_worklist, None, worklist, **PRIVATE)
    worklist.select(h.on_worklist_select, None, [picked, picked_image, picked_report], **PRIVATE)
    (open_button.click(h.open_study, [picked, review["preset"]], review["shown"], **PRIVATE)
     .success(h.show_review, None, review["tabs"], **PRIVATE)
     .success(h.on_similar, *review["load_similar"], **PRIVATE, **ENGINE_QUEUE)
     .success(h.on_open_draft, *review["load_draft"], **PRIVATE, **ENGINE_QUEUE)
     .then(h.on_worklist, None, worklist, **PRIVATE))
    (review["save"].click(h.on_save, [review["study"], review["draft"]], review["signed"], **PRIVATE)
     .success(h.on_worklist, None, worklist, **PRIVATE))
    review["export"].click(h.on_export, [review["study"], review["export_format"]], review["exported"], **PRIVATE)
    review["sign"].click(h.ask_to_sign, [review["draft"]], [review["confirm_row"], review["confirm_text"]], **PRIVATE)
    review["cancel"].click(h.cancel_sign, None, review["confirm_row"], **PRIVATE)
    (review["confirm"].click(h.on_sign, [review["study"], review["draft"], review["sentences"]],
                             [review["signed"], review["marker"], review["sign"], review["provenance"],
                              review["exported"], review["confirm_row"]], **PRIVATE, **SIGN_QUEUE)
     .success(h.on_worklist, None, worklist, **PRIVATE))
    review["draft"].input(h.enable_sign, None, review["sign"], **PRIVATE)  # edited after signing: an amendment
    review["sentences"].change(h.enable_sign, None, review["sign"], **PRIVATE)  # a new draft
    review["sentences"].change(h.cancel_sign, None, review["confirm_row"], **PRIVATE)  # no question left open
    for trigger in (search.click, query.submit):
        trigger(h.on_text_search, [query, k], [matches, found_gallery, found], **PRIVATE, **ENGINE_QUEUE)
    for source in (found_gallery, found):
        source.select(h.on_match_select, [matches], [match_image, match_report], **PRIVATE)
    return worklist


def _audit_tab(h: Handlers) -> None:
    """The audit trail, newest first, with user and kind filters, and the accounts; read-only, for admins."""
    with gr.Row():
        user = gr.Textbox(label="User", placeholder="any user", scale=2, elem_id="audit-user")
        kind = gr.Dropdown(choices=list(AUDIT_KINDS), value="", label="Kind", scale=2, elem_id="audit-kind")
        show = gr.Button("Show", scale=1, elem_id="audit-show")
    events = selectable_table(AUDIT_HEADERS, "Audit trail (newest first, read-only)", "audit-events")
    users = selectable_table(USER_HEADERS, "Accounts (manage them with `medcm users`)", "audit-users")
    for trigger in (show.click, user.submit, kind.input):
        trigger(h.on_audit, [user, kind], [events, users], **PRIVATE)


def _api(endpoints: Endpoints) -> None:
    """The named endpoints, on hidden components so they keep real file handling and validation."""
    with gr.Column(visible=False):
        dicom = gr.File(label="DICOM file or .zip", file_count="single", type="filepath")
        k = gr.Number(value=TOP_K, precision=0, minimum=1, maximum=MAX_K, label="k")
        study_uid = gr.Textbox(label="study_uid")
        text = gr.Textbox(label="text")
        query = gr.Textbox(label="query")
        fmt = gr.Textbox(label="format")
        result = gr.JSON(label="result")
        exported = gr.File(label="exported report")
        run = {name: gr.Button(name) for name in ("search", "draft", "sign", "export", "search_text", "heatmap")}
    run["search"].click(endpoints.search, [dicom, k], result, api_name="search", **ENGINE_QUEUE)
    run["draft"].click(endpoints.draft, [dicom], result, api_name="draft", **ENGINE_QUEUE)
    run["sign"].click(endpoints.sign, [study_uid, text], result, api_name="sign", **SIGN_QUEUE)
    run["export"].click(endpoints.export, [study_uid, fmt], exported, api_name="export")
    run["search_text"].click(endpoints.search_text, [query, k], result, api_name="search_text", **ENGINE_QUEUE)
    run["heatmap"].click(endpoints.heatmap, [study_uid, text], result, api_name="heatmap", **ENGINE_QUEUE)
