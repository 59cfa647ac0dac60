"""The scripting endpoints (`/search`, `/draft`, `/sign`, `/export`, `/search_text`, `/heatmap`) as plain functions.

They need no UI state: each one that takes a DICOM file saves and ingests it exactly as an upload
in the browser does, then answers in JSON-ready dicts (see `ui.app` for the exact contract).
Each one acts as the logged-in account of its `gr.Request` and checks that account's role first
(`ui.auth`). The helpers `sign_study` and `export_study` are shared with the browser handlers.
Searching and drafting reuse the vectors ingest just stored for the study (`Engine.similar_cases_for_study`,
`Engine.draft_for_study`): an upload is decoded and embedded once.
"""

from __future__ import annotations

import base64
import io
import shutil
import tempfile
from pathlib import Path

import gradio as gr
from gradio import utils as gradio_utils
from PIL import Image

from db.store import CaseStore, ReportView
from medcm.dicom.sr import EXPORT_FORMATS
from medcm.engine.facade import Engine, SimilarCase
from medcm.engine.grounding import SentenceHeatmap, heatmap_grid, overlay
from medcm.engine.reports import export_study_report
from medcm.report.draft import Draft
from medcm.report.draft_types import Abstention
from ui.auth import Login, log_view, require
from ui.errors import readable_errors, user_error
from ui.study import ingest_upload, require_for_upload

MAX_K = 50


def check_k(k: float | int | None, default: int = 5) -> int:
    """A result count between 1 and `MAX_K` (None → `default`).

    Raises:
        gr.Error: out of range or not a whole number.
    """
    if k is None:
        return default
    if float(k) != int(k) or not 1 <= int(k) <= MAX_K:
        raise user_error(f"k: got {k}, expected a whole number from 1 to {MAX_K}")
    return int(k)


def sign_study(engine: Engine, study_uid: str | None, text: str | None, signer: str | None) -> ReportView:
    """Sign a study's final report after checking the three inputs; `signer` is the logged-in name.

    Raises:
        gr.Error: no study, empty text or no signer (the store's own errors pass through).
    """
    if not (study_uid or "").strip():
        raise user_error("no study to sign: upload a study (or give its study UID) first")
    if not (text or "").strip():
        raise user_error("the report is empty: write the findings before signing")
    if not (signer or "").strip():
        raise user_error("no signer: log in before signing")
    return engine.sign(study_uid.strip(), text.strip(), signer.strip())


def export_study(store: CaseStore, study_uid: str | None, fmt: str | None, login: Login) -> str:
    """Export a study's newest report version (signed or draft) and record an "export" event.

    The file goes to a fresh folder in Gradio's upload cache, which the app empties at start and
    ages out (`ui.app.DELETE_CACHE`), and is served to the logged-in user only through the response.

    Returns:
        The exported file's path.

    Raises:
        gr.Error: no study, an unknown format, or a study without a report.
    """
    if not (study_uid or "").strip():
        raise user_error("no study to export: open a study (or give its study UID) first")
    if fmt not in EXPORT_FORMATS:
        raise user_error(f"export format: got {fmt!r}, expected one of {', '.join(EXPORT_FORMATS)}")
    folder = Path(tempfile.mkdtemp(prefix="export-", dir=_cache_folder()))
    try:
        return str(export_study_report(store, study_uid.strip(), fmt, login.name, folder=folder).path)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)  # e.g. a study without a report: leave no empty folder
        raise


def _cache_folder() -> Path:
    folder = Path(gradio_utils.get_upload_folder())
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def case_json(case: SimilarCase, report: bool = True) -> dict:
    """`{study_uid, score, percentile, weak, report, modality, body_part}`: `score` is the raw cosine, `percentile`
    the calibrated score (0-100 against the archive's own matches; None when it is too small to calibrate),
    `weak` marks a poor match. `report=False` leaves the report text out."""
    out = {"study_uid": case.study_uid, "score": float(case.score),
           "percentile": None if case.percentile is None else float(case.percentile), "weak": bool(case.weak),
           "report": case.report, "modality": case.modality, "body_part": case.body_part}
    if not report:
        del out["report"]
    return out


def abstention_json(abstention: Abstention | None) -> dict:
    """`{abstained, reason, nearest_similarity, typical_similarity, percentile, threshold, neighbours}` (all None
    when nothing was checked)."""
    fields = ("nearest_similarity", "typical_similarity", "percentile", "threshold")
    if abstention is None:
        return {"abstained": False, "reason": "", **dict.fromkeys(fields), "neighbours": None}
    numbers = {name: None if getattr(abstention, name) is None else float(getattr(abstention, name)) for name in fields}
    return {"abstained": bool(abstention.abstained), "reason": abstention.reason, **numbers,
            "neighbours": int(abstention.neighbours)}


def draft_json(study_uid: str, draft: Draft, cases: list[SimilarCase] = ()) -> dict:
    """`{study_uid, text, verified: false, abstained, reason, abstention: {...}, sentences: [...], source_cases: [...],
    similar_cases: [...]}`: an abstained draft has no text and no sentences, the reason and the numbers say why
    (`abstention_json`), and its similar cases (`case_json` without their reports) are marked weak."""
    sentences = [
        {"text": s.text, "section": s.section, "score": float(s.score),
         "sources": [{"case_id": p.case_id, "case_score": float(p.case_score),
                      "sentence_score": float(p.sentence_score)} for p in s.sources]}
        for s in draft.sentences
    ]
    abstention = abstention_json(draft.abstention)
    return {"study_uid": study_uid, "text": draft.text(), "verified": bool(draft.verified),
            "abstained": abstention["abstained"], "reason": abstention["reason"], "abstention": abstention,
            "sentences": sentences, "source_cases": list(draft.source_cases),
            "similar_cases": [case_json(case, report=False) for case in cases]}


def heatmap_json(heat: SentenceHeatmap, grid: int = 32) -> dict:
    """`{study_uid, sop_instance_uid, sentence, method, shape: [H, W], peak: [row, col], grid: [[float]],
    overlay_png: str}`: `grid` is the heatmap (0..1, 1 where the sentence is most seen) shrunk to at most
    `grid` × `grid` cells over the image, `peak` its maximum in the image's pixels, `overlay_png` the image
    with the heatmap over it as a base64 PNG."""
    buffer = io.BytesIO()
    Image.fromarray(overlay(heat.pixels, heat.heatmap)).save(buffer, format="PNG")
    return {"study_uid": heat.study_uid, "sop_instance_uid": heat.sop_instance_uid, "sentence": heat.sentence,
            "method": heat.method, "shape": list(heat.heatmap.shape), "peak": list(heat.peak),
            "grid": heatmap_grid(heat.heatmap, grid),
            "overlay_png": base64.b64encode(buffer.getvalue()).decode("ascii")}


def report_json(report: ReportView) -> dict:
    """`{report_id, study_uid, version, status, signed_by, signed_at}` (signed_at: ISO 8601, UTC)."""
    return {"report_id": report.id, "study_uid": report.study_uid, "version": report.version,
            "status": report.status, "signed_by": report.signed_by,
            "signed_at": report.signed_at.isoformat() if report.signed_at else None}


class Endpoints:
    """The named API endpoints, bound to one engine, store and upload folder."""

    def __init__(self, engine: Engine, store: CaseStore, upload_dir: Path) -> None:
        self.engine, self.store = engine, store
        self.upload_dir = Path(upload_dir).resolve()  # stored file locations must not depend on the cwd

    def _ingest(self, dicom_file: str | None, login: Login, progress: gr.Progress) -> str:
        """Store and embed the upload; its first study's UID (searched and drafted from its stored vectors)."""
        progress(0.1, desc="storing and embedding the upload")
        study_uid, _notes = ingest_upload(self.engine, dicom_file, self.upload_dir, user=login.name)
        return study_uid

    @readable_errors
    def search(self, dicom_file: str | None, k: float, request: gr.Request,
               progress: gr.Progress = gr.Progress()) -> list[dict]:
        """Similar past cases of a DICOM file or .zip (ingested first), best first (clinicians)."""
        login = require_for_upload(self.store, request, "ingest", dicom_file)
        count = check_k(k)
        study_uid = self._ingest(dicom_file, login, progress)
        progress(0.8, desc="searching similar cases")
        cases = self.engine.similar_cases_for_study(study_uid, k=count)
        log_view(self.store, login, study_uid, "api /search", [c.study_uid for c in cases])
        return [case_json(case) for case in cases]

    @readable_errors
    def draft(self, dicom_file: str | None, request: gr.Request, progress: gr.Progress = gr.Progress()) -> dict:
        """An unverified draft of the findings of a DICOM file or .zip (ingested first; clinicians)."""
        login = require_for_upload(self.store, request, "draft", dicom_file)
        study_uid = self._ingest(dicom_file, login, progress)
        progress(0.7, desc="drafting from similar cases")
        draft = self.engine.draft_for_study(study_uid, save=True, user=login.name)
        cases = self.engine.similar_cases_for_study(study_uid, k=self.engine.draft_config.top_k_cases)  # the draft's
        return draft_json(study_uid, draft, cases)

    @readable_errors
    def sign(self, study_uid: str | None, text: str | None, request: gr.Request) -> dict:
        """Sign a stored study's final report as the logged-in clinician; returns the signed version."""
        login = require(self.store, request, "sign")
        return report_json(sign_study(self.engine, study_uid, text, login.name))

    @readable_errors
    def export(self, study_uid: str | None, fmt: str | None, request: gr.Request) -> str:
        """A stored study's newest report as a file: DICOM SR ("sr"), "txt" or "json" (clinicians)."""
        return export_study(self.store, study_uid, fmt, require(self.store, request, "export"))

    @readable_errors
    def search_text(self, query: str | None, k: float, request: gr.Request) -> list[dict]:
        """Stored studies whose images match a phrase, best first, with their latest reports."""
        login = require(self.store, request, "read")
        count = check_k(k)
        if not (query or "").strip():
            raise user_error("text search: type a phrase such as 'pleural effusion'")
        matches = self.engine.search_text(query.strip(), k=count)
        log_view(self.store, login, None, "api /search_text", [m.study_uid for m in matches])
        out = []
        for m in matches:
            report = self.store.latest_report(m.study_uid)
            out.append({"study_uid": m.study_uid, "sop_instance_uid": m.sop_instance_uid, "score": float(m.score),
                        "modality": m.modality, "body_part": m.body_part, "report": report.text if report else ""})
        return out

    @readable_errors
    def heatmap(self, study_uid: str | None, sentence: str | None, request: gr.Request) -> dict:
        """Where in a stored study's image a sentence (e.g. one of its draft's) is seen (`heatmap_json`; any role)."""
        login = require(self.store, request, "read")
        if not (study_uid or "").strip():
            raise user_error("no study: give the study UID of a stored study")
        if not (sentence or "").strip():
            raise user_error("no sentence: give a sentence of the draft or the report to ground")
        heat = self.engine.sentence_heatmap(study_uid.strip(), sentence.strip())
        log_view(self.store, login, heat.study_uid, "api /heatmap")
        return heatmap_json(heat)
