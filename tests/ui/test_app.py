"""The review app: its scripting API over a real local server (with logins), and its handlers called directly."""

from __future__ import annotations

import os
import socket
import sys
import typing
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlparse

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from db.store import CaseStore  # noqa: E402
from medcm.dicom.write import write_image  # noqa: E402
from medcm.engine.facade import Engine  # noqa: E402
from ui.app import DISCLAIMER, build_app, launch_options  # noqa: E402
from ui.auth import make_auth  # noqa: E402
from ui.handlers import Handlers  # noqa: E402
from ui.fetch import FetchHandlers  # noqa: E402
from ui.priors import PriorHandlers  # noqa: E402
from medcm.engine.dicomweb import DicomWebServer  # noqa: E402
from pacs_peers import ORTHANC_DICOMWEB_PLUGIN, Orthanc, orthanc_or_skip  # noqa: E402  tests/pacs_peers.py
from ui.study import ingest_upload, load_study  # noqa: E402

N_POOL = 40
NOTICE = "Demo data are synthetic drawings, not patients."
ACCOUNTS = {"dr.c": ("clinician", "clinician-pass"), "dr.v": ("viewer", "viewer-pass"), "boss": ("admin", "admin-pass")}
CLINICIAN, VIEWER, ADMIN = (SimpleNamespace(username=name) for name in ACCOUNTS)  # stand-ins for gr.Request


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def cases(synthetic_manifest):
    return synthetic_manifest.parent / "cases"


@pytest.fixture(scope="module")
def served(synthetic_pool, trained_run):
    """An engine over 40 synthetic training cases, and the app serving it on 127.0.0.1."""
    root = synthetic_pool(N_POOL, "ui")
    pool = root / "pool"
    store = CaseStore(f"sqlite:///{root / 'cases.db'}")
    engine = Engine(store, checkpoint=trained_run.best_dir.parent, device="cpu")
    assert engine.ingest([pool], user="tester").added_reports == N_POOL
    for name, (role, password) in ACCOUNTS.items():
        store.add_user(name, role, password)
    mp = pytest.MonkeyPatch()
    mp.setenv("GRADIO_TEMP_DIR", str(root / "gradio-tmp"))
    app = build_app(engine, store, upload_dir=root / "uploads", demo_notice=NOTICE)
    _, url, _ = app.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=_free_port(),
                           quiet=True, auth=make_auth(store), **launch_options())
    clients = {name: _client(url, name) for name in ("dr.c", "dr.v")}
    yield SimpleNamespace(app=app, url=url, engine=engine, store=store, client=clients["dr.c"],
                          viewer=clients["dr.v"], upload_dir=root / "uploads",
                          handlers=Handlers(engine, store, root / "uploads"))
    for client in clients.values():
        client.close()
    app.close()
    mp.undo()
    store.close()


def _client(url: str, name: str, password: str | None = None):
    auth = (name, ACCOUNTS[name][1] if password is None else password)
    return gradio_client.Client(url, auth=auth, verbose=False, analytics_enabled=False, download_files=False)


def _dev(cases, i: int) -> str:
    return str(cases / f"dev-{i:05d}" / "image.dcm")


def test_binds_to_localhost_and_shows_the_notices(served):
    assert urlparse(served.url).hostname == "127.0.0.1"
    config = served.app.get_config_file()
    texts = [c.get("props", {}).get("value") for c in config["components"]]
    assert any(NOTICE in str(t) for t in texts) and any(DISCLAIMER in str(t) for t in texts)


def test_api_page_lists_only_the_named_endpoints(served):
    endpoints = served.client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert set(endpoints) == {"/search", "/draft", "/sign", "/export", "/search_text", "/heatmap"}
    assert not served.client.view_api(print_info=False, return_format="dict")["unnamed_endpoints"]


def test_search_returns_similar_cases_best_first(served, cases):
    result = served.client.predict(gradio_client.handle_file(_dev(cases, 4)), api_name="/search")
    assert len(result) == 5
    scores = [case["score"] for case in result]
    assert scores == sorted(scores, reverse=True)
    stored = {s.study_uid for s in served.store.list_studies()}
    for case in result:
        assert case["report"].startswith("FINDINGS:") and case["study_uid"] in stored
        assert (case["modality"], case["body_part"]) == ("DX", "CHEST")
        assert 0.0 <= case["percentile"] <= 100.0 and case["weak"] == (case["percentile"] < 5.0)  # calibrated
    assert served.client.predict(gradio_client.handle_file(_dev(cases, 4)), 3, api_name="/search")[0] == result[0]


def test_draft_is_unverified_and_every_sentence_names_stored_sources(served, cases):
    result = served.client.predict(gradio_client.handle_file(_dev(cases, 7)), api_name="/draft")
    assert result["verified"] is False and result["sentences"] and result["text"]
    stored = {s.study_uid for s in served.store.list_studies()}
    for sentence in result["sentences"]:
        assert sentence["section"] in ("FINDINGS", "IMPRESSION") and sentence["text"] in result["text"]
        assert sentence["sources"] and all(src["case_id"] in stored for src in sentence["sources"])
    assert served.store.get_study(result["study_uid"]).status == "new"  # the model's draft: nobody worked on it yet
    assert served.store.latest_report(result["study_uid"]).source == "draft"  # stored, for the app to open
    assert (result["abstained"], result["reason"], result["abstention"]["abstained"]) == (False, "", False)
    assert result["abstention"]["nearest_similarity"] >= result["abstention"]["threshold"]
    assert {c["study_uid"] for c in result["similar_cases"]} == set(result["source_cases"])
    assert all(c["percentile"] is not None and "report" not in c for c in result["similar_cases"])


def _as_modality(cases, i: int, modality: str, folder: Path) -> str:
    """Dev case `i` as a new study of another modality (e.g. a mammogram, MG): what the archive does not hold."""
    ds = pydicom.dcmread(_dev(cases, i))
    ds.Modality, ds.StudyInstanceUID, ds.SeriesInstanceUID = modality, generate_uid(), generate_uid()
    ds.save_as(folder / f"{modality}.dcm")
    return str(folder / f"{modality}.dcm")


def test_draft_of_a_mammogram_abstains_with_the_reason_the_numbers_and_weak_cases(served, cases, tmp_path):
    result = served.client.predict(gradio_client.handle_file(_as_modality(cases, 8, "MG", tmp_path)),
                                   api_name="/draft")
    assert (result["abstained"], result["reason"]) == (True, "this archive holds no MG studies")
    assert (result["text"], result["sentences"], result["verified"]) == ("", [], False)
    numbers = result["abstention"]
    assert 0.0 < numbers["nearest_similarity"] <= 1.0 and 0.0 < numbers["typical_similarity"] <= 1.0
    assert 0.0 <= numbers["percentile"] <= 100.0 and numbers["neighbours"] == 10
    assert len(result["similar_cases"]) == 5 and all(c["weak"] for c in result["similar_cases"])
    assert [c["study_uid"] for c in result["similar_cases"]] == result["source_cases"]
    assert served.store.latest_report(result["study_uid"]) is None  # nothing to save
    assert served.store.get_study(result["study_uid"]).status == "new"


def test_the_app_shows_the_abstention_where_the_draft_would_be(served, cases, tmp_path):
    h = served.handlers
    study = h.on_upload([_as_modality(cases, 9, "US", tmp_path)], "default", CLINICIAN)[0]
    found, gallery, table = h.on_similar(study, CLINICIAN)
    assert list(table["match"]) == ["weak"] * 5 and all(p.startswith("p") for p in table["percentile"])
    assert all("weak match" in caption for _, caption in gallery)
    sentences, text, provenance, marker = h.on_draft(study, CLINICIAN)
    assert (sentences, text, len(provenance)) == ([], "", 0)
    assert marker.startswith("### No draft") and "This archive holds no US studies." in marker
    assert "UNVERIFIED DRAFT" not in marker


def test_sign_stores_the_report_and_refuses_empty_text(served, cases):
    study_uid = served.client.predict(gradio_client.handle_file(_dev(cases, 10)), api_name="/draft")["study_uid"]
    text = "FINDINGS: Small square opacity in the lower left zone.\nIMPRESSION: Square lesion, lower left."
    signed = served.client.predict(study_uid, text, api_name="/sign")
    assert (signed["study_uid"], signed["signed_by"], signed["status"]) == (study_uid, "dr.c", "signed")
    latest = served.store.latest_report(study_uid)
    assert (latest.id, latest.text, latest.signed_by, latest.status) == (signed["report_id"], text, "dr.c", "signed")
    assert served.store.get_study(study_uid).status == "signed"
    assert study_uid in served.engine.index("report").keys  # joins the retrieval pool at once
    trail = served.store.events(study_uid=study_uid)
    assert [(e["kind"], e["user"]) for e in trail] == [("sign", "dr.c"), ("draft", "dr.c"), ("ingest", "dr.c")]
    # The model's draft stays its own version; the clinician's signed text is the next one, theirs.
    machine, mine = served.store.report_versions(study_uid)
    assert (machine.author, machine.status, mine.version, mine.author) == ("medcm-draft", "draft", 2, "dr.c")
    again = served.client.predict(study_uid, text, api_name="/sign")  # a retry: the same version
    assert again["report_id"] == signed["report_id"] and len(served.store.report_versions(study_uid)) == 2
    with pytest.raises(gradio_client.exceptions.AppError, match="the report is empty"):
        served.client.predict(study_uid, "   ", api_name="/sign")


def test_export_gives_a_verified_sr_of_the_signed_report_and_is_audited(served, cases, tmp_path):
    import json

    study_uid = served.client.predict(gradio_client.handle_file(_dev(cases, 12)), api_name="/draft")["study_uid"]
    exporter = gradio_client.Client(served.url, auth=("dr.c", ACCOUNTS["dr.c"][1]), verbose=False,
                                    analytics_enabled=False, download_files=str(tmp_path))
    draft_sr = pydicom.dcmread(exporter.predict(study_uid, "sr", api_name="/export"))
    assert (draft_sr.VerificationFlag, draft_sr.CompletionFlag) == ("UNVERIFIED", "PARTIAL")
    served.client.predict(study_uid, "FINDINGS: Round lesion.\nIMPRESSION: Lesion.", api_name="/sign")
    sr = pydicom.dcmread(exporter.predict(study_uid, "sr", api_name="/export"))
    observer = sr.VerifyingObserverSequence[0]  # a person name built from the login, the login as its code
    assert (sr.VerificationFlag, str(observer.VerifyingObserverName)) == ("VERIFIED", "C^^^Dr")
    assert observer.VerifyingObserverIdentificationCodeSequence[0].CodeValue == "dr.c"
    assert sr.StudyInstanceUID == study_uid and sr.Modality == "SR"
    as_json = json.loads(Path(exporter.predict(study_uid, "json", api_name="/export")).read_text(encoding="utf-8"))
    assert as_json["verified"] is True and as_json["signed_by"] == "dr.c"
    exporter.close()
    events = served.store.events(study_uid=study_uid, kind="export")
    assert [(e["user"], e["detail"]["format"], e["detail"]["status"]) for e in events] == [
        ("dr.c", "json", "signed"), ("dr.c", "sr", "signed"), ("dr.c", "sr", "draft")]
    with pytest.raises(gradio_client.exceptions.AppError, match="role viewer may not export reports"):
        served.viewer.predict(study_uid, "txt", api_name="/export")
    with pytest.raises(gradio_client.exceptions.AppError, match=r"export format: got 'pdf', expected one of sr, txt"):
        served.client.predict(study_uid, "pdf", api_name="/export")
    path = served.handlers.on_export(load_study(served.store, study_uid), "txt", CLINICIAN)  # the browser's button
    assert Path(path).read_text(encoding="utf-8").count("dr.c") >= 1


def test_a_non_dicom_upload_gets_one_readable_line(served, tmp_path):
    bogus = tmp_path / "notes.txt"
    bogus.write_text("this is not an image")
    with pytest.raises(gradio_client.exceptions.AppError) as info:
        served.client.predict(gradio_client.handle_file(str(bogus)), api_name="/search")
    message = info.value.message
    assert message.startswith("no readable DICOM image in the upload: notes.txt:")
    assert "Traceback" not in message and "\n" not in message and str(served.upload_dir) not in message


def test_text_search_returns_studies_with_reports(served):
    result = served.client.predict("Large round lesion, lower right.", 4, api_name="/search_text")
    assert len(result) == 4 and len({m["study_uid"] for m in result}) == 4
    assert all(m["report"].startswith("FINDINGS:") for m in result)


def test_window_presets_re_render_the_image(served, cases):
    h = served.handlers
    study_uid, notes = ingest_upload(served.engine, [_dev(cases, 13)], served.upload_dir, user="dr.test")
    study = load_study(served.store, study_uid)
    assert notes == [] and study.images[0].path.startswith(str(served.upload_dir))
    default = np.asarray(h.render_view(study, "default", 0, 0, VIEWER))
    lung = np.asarray(h.render_view(study, "lung", 0, 0, VIEWER))
    assert default.shape == lung.shape and not np.array_equal(default, lung)
    with pytest.raises(gr.Error, match="unknown window preset"):
        h.render_view(study, "retina", 0, 0, VIEWER)


def test_upload_of_a_multiframe_study_offers_frames(served, tmp_path):
    frames = np.stack([np.full((32, 32), v) for v in (0.1, 0.5, 0.9)])
    path = write_image(tmp_path / "cine.dcm", frames, modality="XA")
    h = served.handlers
    study, image, selector, slider, info, *_ = h.on_upload([str(path)], "default", CLINICIAN)
    assert len(study.images) == 1 and study.images[0].frames == 3
    assert slider.visible is True and slider.maximum == 2 and selector.visible is False
    last = np.asarray(h.render_view(study, "default", 0, 2, CLINICIAN))
    assert abs(float(np.asarray(image).mean()) - 0.1 * 255) < 2 and abs(float(last.mean()) - 0.9 * 255) < 2
    assert served.store.get_study(study.study_uid).status == "new" and study.study_uid in info


def test_handlers_draft_then_sign_updates_the_worklist(served, cases):
    h = served.handlers
    study = h.on_upload([_dev(cases, 16)], "default", CLINICIAN)[0]
    cases_found, gallery, table = h.on_similar(study, CLINICIAN)
    assert len(cases_found) == len(gallery) == len(table) == 5
    sentences, text, provenance, marker = h.on_draft(study, CLINICIAN)
    assert "UNVERIFIED DRAFT" in marker and len(provenance) == len(sentences) and text
    with pytest.raises(gr.Error, match="not logged in"):
        h.on_sign(study, text, sentences, SimpleNamespace(username=None))  # an app launched without auth
    with pytest.raises(gr.Error, match="the report is empty"):
        h.on_sign(study, "  ", sentences, CLINICIAN)
    with pytest.raises(gr.Error, match="the report is empty"):
        h.ask_to_sign(" ", CLINICIAN)
    row, question = h.ask_to_sign(text, CLINICIAN)  # Sign asks first; nothing is signed yet
    assert row.visible is True and "Sign this report as dr.c?" in question
    assert served.store.get_study(study.study_uid).status != "signed" and h.cancel_sign().visible is False
    deleted = sentences[0].text
    signed_text = text.replace(deleted, "").strip() + " Edited."
    message, marker, sign_button, kept, exported, row = h.on_sign(study, signed_text, sentences, CLINICIAN)
    assert message.startswith("Signed version ") and " by dr.c at " in message
    assert marker.startswith("### ✔ VERIFIED\nSigned version 2 by dr.c at ") and "UNVERIFIED" not in marker
    assert sign_button.interactive is False and h.enable_sign().interactive is True
    assert deleted not in list(kept["sentence"]) and len(kept) == len(sentences) - 1  # the deleted one has no sources
    assert list(kept["#"]) == list(range(2, len(sentences) + 1)) and exported is None and row.visible is False
    worklist = h.on_worklist(CLINICIAN)  # the event's next step: a refused signature never blanks it
    row = worklist[worklist["study uid"] == study.study_uid]
    assert list(row["status"]) == ["signed"]
    machine, latest = served.store.report_versions(study.study_uid)  # the model's draft stays its own version
    assert (machine.author, machine.status, machine.text) == ("medcm-draft", "draft", text)
    assert (latest.source, latest.signed_by, latest.author, latest.text) == ("sign", "dr.c", "dr.c", signed_text)
    trail = [(e["kind"], e["user"], e["detail"].get("screen")) for e in served.store.events(study_uid=study.study_uid)]
    assert trail == [("sign", "dr.c", None), ("draft", "dr.c", None), ("view", "dr.c", "similar cases"),
                     ("view", "dr.c", "review"), ("ingest", "dr.c", None)]


def test_the_clinical_question_is_stored_and_read_back_by_role(served, cases):
    from ui.question import QuestionHandlers

    q = QuestionHandlers(served.engine, served.store)
    study = served.handlers.on_upload([_dev(cases, 17)], "default", CLINICIAN)[0]
    assert q.on_open(study, CLINICIAN) == "" and q.on_open(None, CLINICIAN) == ""
    stored = q.on_set(study, "  Cough for a week; pneumonia?", CLINICIAN)  # (scrubbing: tests/engine/test_question.py)
    assert stored == "Cough for a week; pneumonia?"
    assert served.store.get_study(study.study_uid).clinical_question == stored
    assert q.on_open(study, VIEWER) == stored  # any reader sees it; only a clinician changes it
    with pytest.raises(gr.Error, match="may not draft reports"):
        q.on_set(study, "anything", VIEWER)
    with pytest.raises(gr.Error, match="clinical_question"):
        q.on_set(study, "x" * 2001, CLINICIAN)
    assert served.store.get_study(study.study_uid).clinical_question == stored  # the refusal wrote nothing
    with pytest.raises(gr.Error, match="no study is open"):
        q.on_set(None, "x", CLINICIAN)
    assert q.on_set(study, "  ", CLINICIAN) == "" and served.store.clinical_question(study.study_uid) is None
    events = [e["kind"] for e in served.store.events(study_uid=study.study_uid)]
    assert events.count("question") == 2


def test_a_zipped_two_series_study_offers_an_instance_selector(served, cases, tmp_path):
    first, second = pydicom.dcmread(_dev(cases, 19)), pydicom.dcmread(_dev(cases, 20))
    second.StudyInstanceUID, second.SeriesInstanceUID = first.StudyInstanceUID, generate_uid()
    second.PatientID = first.PatientID
    first.save_as(tmp_path / "a.dcm")
    second.save_as(tmp_path / "b.dcm")
    with zipfile.ZipFile(tmp_path / "study.zip", "w") as archive:
        archive.write(tmp_path / "a.dcm", "study/a.dcm")
        archive.write(tmp_path / "b.dcm", "study/b.dcm")
    h = served.handlers
    study, image, selector, slider, *_ = h.on_upload([str(tmp_path / "study.zip")], "default", CLINICIAN)
    assert len(study.images) == 2 and all(".zip:study/" in ref.path for ref in study.images)
    assert selector.visible is True and len(selector.choices) == 2 and slider.visible is False
    _, other = h.on_instance(study, 1, "default", VIEWER)
    assert not np.array_equal(np.asarray(image), np.asarray(other))


def _of_patient(cases, i: int, patient_id: str, study_date: str, path: Path) -> str:
    """Dev case `i` as a new study of `patient_id` on `study_date`, saved at `path`."""
    ds = pydicom.dcmread(_dev(cases, i))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID, ds.StudyDate, ds.PatientSex, ds.PatientAge = patient_id, study_date, "F", "067Y"
    ds.save_as(path)
    return str(path)


def test_a_second_study_of_a_patient_lists_the_first_as_a_prior_with_its_signed_report(served, cases, tmp_path):
    h, priors = served.handlers, PriorHandlers(served.engine, served.store)
    first = h.on_upload([_of_patient(cases, 21, "PAT-PRIORS", "20240105", tmp_path / "a.dcm")], "default", CLINICIAN)[0]
    h.on_sign(first, "FINDINGS: Clear lungs. IMPRESSION: Normal.", [], CLINICIAN)
    second, _, _, _, info, *_ = h.on_upload([_of_patient(cases, 22, "PAT-PRIORS", "20250310", tmp_path / "b.dcm")],
                                           "default", CLINICIAN)
    other = h.on_upload([_of_patient(cases, 23, "PAT-OTHER", "20250310", tmp_path / "c.dcm")], "default", CLINICIAN)[0]
    assert "PAT-PRIORS · 60–69 y · F" in info and f'title="StudyInstanceUID {second.study_uid}"' in info
    found, rows, panel, hint, source, compare = priors.on_priors(second, VIEWER)
    assert [p.study_uid for p in found] == [first.study_uid] and list(rows["study uid"]) == [first.study_uid]
    assert (rows.iloc[0]["date"], rows.iloc[0]["status"]) == ("2024-01-05", "signed")
    assert "1 other study of this patient" in panel.label and source == "" and compare.open is False
    assert priors.on_priors(other, VIEWER)[0] == [] and "no other study" in priors.on_priors(other, VIEWER)[2].label
    pick = gr.SelectData(None, {"index": [0, 1], "value": "", "row_value": list(rows.iloc[0])})
    report, source, compare = priors.on_prior_select(found, second, 0, pick, VIEWER)
    assert "> FINDINGS: Clear lungs. IMPRESSION: Normal." in report and "signed version 1 by dr.c" in report
    assert (f'data-current="/medcm/viewer/{second.study_uid}/0" data-prior="/medcm/viewer/{first.study_uid}/0"'
            in source and 'data-prior-label="Prior · 2024-01-05"' in source and compare.open is True)
    (seen,) = served.store.events(study_uid=first.study_uid, kind="view", limit=1)
    assert (seen["user"], seen["detail"]) == ("dr.v", {"screen": "prior"})
    worklist = h.on_worklist(VIEWER)
    row = worklist[worklist["study uid"] == first.study_uid].iloc[0]
    assert (row["age"], row["sex"], row["report"]) == ("60–69 y", "F", "FINDINGS: Clear lungs. IMPRESSION: Normal.")
    assert row["case"].startswith("DX · 2024-01-05 · …") and row["case"].endswith(first.study_uid[-6:])
    picked = gr.SelectData(None, {"index": [0, 0], "value": "", "row_value": list(row)})
    assert h.on_worklist_select(picked, VIEWER)[0] == first.study_uid  # the full UID of the last column


def test_a_study_fetched_from_the_pacs_by_uid_is_stored_and_opened_like_an_upload(served, cases, tmp_path):
    orthanc_or_skip()
    if not ORTHANC_DICOMWEB_PLUGIN.is_file():
        pytest.skip("Orthanc's DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)")
    path = _of_patient(cases, 24, "PAT-FETCH", "20250102", tmp_path / "pacs.dcm")
    orthanc = Orthanc(tmp_path / "orthanc").start()
    try:
        orthanc.upload(Path(path))
        fetch = FetchHandlers(served.engine, served.store, DicomWebServer(orthanc.dicomweb_url))
        assert fetch.on_load(CLINICIAN).visible is True and fetch.on_load(VIEWER).visible is False
        assert FetchHandlers(served.engine, served.store, None).on_load(CLINICIAN).visible is False
        with pytest.raises(gr.Error, match="role viewer may not"):
            fetch.on_fetch("1.2.3", VIEWER)
        with pytest.raises(gr.Error, match=r"fetch from PACS failed: StudyInstanceUID: got '1\.2\.x'"):
            fetch.on_fetch("1.2.x", CLINICIAN)
        with pytest.raises(gr.Error, match=f"DICOMweb {orthanc.dicomweb_url}, study 1.2.3.4: no such study"):
            fetch.on_fetch(" 1.2.3.4 ", CLINICIAN)
        stored = fetch.on_fetch(pydicom.dcmread(path).StudyInstanceUID, CLINICIAN)
    finally:
        orthanc.stop()
    h = served.handlers
    assert served.store.get_study(stored).patient_id == "PAT-FETCH"  # the served engine keeps ids (no deid)
    study, image, *_, info, _, _, _, _, _, _ = h.open_study(stored, "default", CLINICIAN)
    assert study.study_uid == stored and image is not None and "PAT-FETCH" in info
    assert len(h.on_similar(study, CLINICIAN)[0]) == 5 and h.on_draft(study, CLINICIAN)[1]
    (ingest,) = served.store.events(study_uid=stored, kind="ingest", limit=1)
    assert ingest["user"] == "dr.c"
    with pytest.raises(gr.Error, match="no PACS is configured"):
        FetchHandlers(served.engine, served.store, None).on_fetch("1.2.3", CLINICIAN)


def test_picking_a_similar_case_shows_it_beside_the_query(served, cases):
    h = served.handlers
    study = h.on_upload([_dev(cases, 22)], "default", CLINICIAN)[0]
    found = h.on_similar(study, VIEWER)[0]
    by_gallery = gr.SelectData(None, {"index": 2, "value": None})
    query, preview, report = h.on_case_select(found, study, "default", 0, 0, by_gallery, VIEWER)
    assert query is not None and preview is not None
    assert found[2].study_uid in report and "FINDINGS:" in report
    (opened,) = served.store.events(study_uid=found[2].study_uid, kind="view", limit=1)
    assert (opened["user"], opened["detail"]) == ("dr.v", {"screen": "similar case"})
    by_row = gr.SelectData(None, {"index": [0, 3], "value": "", "row_value": ["DX · …" + found[4].study_uid[-6:], 0.1, found[4].study_uid]})
    assert found[4].study_uid in h.on_case_select(found, study, "default", 0, 0, by_row, VIEWER)[2]


def test_select_handlers_keep_resolvable_type_hints():
    # Gradio injects gr.SelectData by resolving type hints; one unresolvable name would silently break picks.
    for name in ("on_case_select", "on_source_select", "on_worklist_select", "on_match_select"):
        assert typing.get_type_hints(getattr(Handlers, name))["evt"] is gr.SelectData
    assert typing.get_type_hints(PriorHandlers.on_prior_select)["evt"] is gr.SelectData


# ------------------------------------------------------------------ logins and roles
def test_without_a_login_the_page_and_the_api_are_refused(served):
    with urllib.request.urlopen(served.url, timeout=30) as response:  # the login page, not the app
        page = response.read().decode()
    # The login page states the product's disclaimer (issue 19); the app's own screens are not there.
    assert "auth_required" in page and "Draft findings" not in page and NOTICE not in page
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(served.url.rstrip("/") + "/config", timeout=30)
    assert info.value.code == 401
    with pytest.raises(Exception, match="(?i)login|auth|401"):
        gradio_client.Client(served.url, verbose=False, analytics_enabled=False)


def test_every_response_refuses_framing_and_the_api_schema_is_not_public(served):
    """Issue 18: no CSP or X-Frame-Options, and a public /openapi.json."""
    with urllib.request.urlopen(served.url, timeout=30) as response:
        headers = response.headers
    assert headers["X-Frame-Options"] == "DENY" and headers["Content-Security-Policy"] == "frame-ancestors 'none'"
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["Referrer-Policy"] == "no-referrer"
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(served.url.rstrip("/") + "/openapi.json", timeout=30)
    assert info.value.code == 404 and info.value.headers["X-Frame-Options"] == "DENY"


def test_logins_and_failed_logins_are_recorded(served):
    assert {e["user"] for e in served.store.events(kind="login")} >= {"dr.c", "dr.v"}
    with pytest.raises(Exception, match="(?i)incorrect|credentials|login"):
        _client(served.url, "dr.v", "not-the-password")
    with pytest.raises(Exception, match="(?i)incorrect|credentials|login"):
        _client(served.url, "nobody", "whatever-it-is")
    failed = served.store.events(kind="login_failed", limit=2)
    assert [(e["user"], e["detail"]) for e in failed] == [("nobody", {"ok": False}), ("dr.v", {"ok": False})]
    assert served.store.events(kind="login", user="dr.c")[0]["detail"] == {"ok": True}


def test_a_viewer_reads_but_cannot_upload_draft_or_sign_through_the_api(served, cases):
    study_uid = served.store.list_studies(status="signed")[-1].study_uid  # an archive case of the pool
    before = served.store.latest_report(study_uid)
    for args, api_name, action in [((gradio_client.handle_file(_dev(cases, 1)), 5), "/search", "upload studies"),
                                   ((gradio_client.handle_file(_dev(cases, 1)),), "/draft", "draft reports"),
                                   ((study_uid, "FINDINGS: Fine."), "/sign", "sign reports")]:
        with pytest.raises(gradio_client.exceptions.AppError, match=f"role viewer may not {action}") as info:
            served.viewer.predict(*args, api_name=api_name)
        assert "logged in as dr.v" in info.value.message and "\n" not in info.value.message
    assert served.store.latest_report(study_uid) == before
    assert not served.store.events(user="dr.v", kind="ingest")
    # Issue 18: a refused upload kept the identifiable original in Gradio's temporary folder.
    sent = Path(_dev(cases, 1)).read_bytes()
    kept = [p for p in Path(os.environ["GRADIO_TEMP_DIR"]).rglob("*") if p.is_file() and p.read_bytes() == sent]
    assert kept == []
    found = served.viewer.predict("Large round lesion, lower right.", 2, api_name="/search_text")
    assert len(found) == 2
    (search,) = served.store.events(user="dr.v", kind="view", limit=1)
    assert search["detail"] == {"screen": "api /search_text", "study_uids": [m["study_uid"] for m in found]}


def test_handlers_refuse_roles_their_action_does_not_allow(served, cases):
    h = served.handlers
    study = h.open_study(served.store.list_studies()[-1].study_uid, "default", VIEWER)[0]
    for call, action in [(lambda: h.on_upload([_dev(cases, 2)], "default", VIEWER), "upload studies"),
                         (lambda: h.on_draft(study, VIEWER), "draft reports"),
                         (lambda: h.on_save(study, "FINDINGS: x.", VIEWER), "edit reports"),
                         (lambda: h.on_sign(study, "FINDINGS: x.", [], VIEWER), "sign reports"),
                         (lambda: h.on_sign(study, "FINDINGS: x.", [], ADMIN), "sign reports"),
                         (lambda: h.ask_to_sign("FINDINGS: x.", VIEWER), "sign reports"),
                         (lambda: h.on_audit("", "", CLINICIAN), "see the audit trail"),
                         (lambda: h.on_audit("", "", VIEWER), "see the audit trail")]:
        with pytest.raises(gr.Error, match=f"may not {action}"):
            call()
    with pytest.raises(gr.Error, match="not logged in"):
        h.on_worklist(SimpleNamespace(username=None))
    with pytest.raises(gr.Error, match="disabled or unknown"):
        h.on_worklist(SimpleNamespace(username="nobody"))


def test_a_viewer_opening_a_study_reads_its_report_instead_of_drafting(served):
    h = served.handlers
    uid = served.store.list_studies(status="signed")[-1].study_uid
    study = h.open_study(uid, "default", VIEWER)[0]
    before = len(served.store.events(kind="draft"))
    sentences, text, _, marker = h.on_open_draft(study, VIEWER)
    assert sentences == [] and text == served.store.latest_report(uid).text and "read-only" in marker
    assert len(served.store.events(kind="draft")) == before


def test_the_page_shows_the_login_and_only_an_admin_the_audit_tab(served):
    h = served.handlers
    line, worklist, audit, upload, *buttons, report, section = h.on_load(CLINICIAN)
    assert "**dr.c** (clinician)" in line and len(worklist) >= N_POOL and audit.visible is False
    assert upload.visible is True and all(b.visible for b in buttons) and report.interactive is True
    assert section.visible is True and len(buttons) == 5  # draft again, save, sign, export, the question's
    line, _, audit, upload, *buttons, report, section = h.on_load(VIEWER)
    assert "(viewer)" in line and audit.visible is False
    assert upload.visible is False and not any(b.visible for b in buttons) and report.interactive is False
    assert section.visible is False
    admin = h.on_load(ADMIN)
    assert admin[2].visible is True and admin[-1].visible is False  # no empty "Save or sign" for an admin


def test_an_admin_sees_the_audit_trail_filtered_and_newest_first(served):
    h = served.handlers
    served.store.log_event("view", "dr.v", None, {"screen": "test"})
    events, users = h.on_audit("", "", ADMIN)
    assert list(events.columns) == ["time (UTC)", "kind", "user", "study uid", "detail"]
    assert tuple(events.iloc[0][["kind", "user"]]) == ("view", "dr.v") and len(events) > 10
    assert list(events["time (UTC)"]) == sorted(events["time (UTC)"], reverse=True)
    assert set(users["name"]) >= set(ACCOUNTS) and "password" not in " ".join(users.columns)
    logins, _ = h.on_audit("dr.c", "login", ADMIN)
    assert len(logins) >= 1 and set(logins["user"]) == {"dr.c"} and set(logins["kind"]) == {"login"}
    with pytest.raises(gr.Error, match="event kind"):
        h.on_audit("", "drop table", ADMIN)


def test_save_draft_records_an_edit_by_the_logged_in_clinician(served, cases):
    h = served.handlers
    study = h.on_upload([_dev(cases, 25)], "default", CLINICIAN)[0]
    message = h.on_save(study, "FINDINGS: Edited by hand.", CLINICIAN)
    worklist = h.on_worklist(CLINICIAN)
    assert message.startswith("Draft saved as version 1 by dr.c at ")
    latest = served.store.latest_report(study.study_uid)
    assert (latest.status, latest.source, latest.author, latest.text) == ("draft", "edit", "dr.c",
                                                                          "FINDINGS: Edited by hand.")
    (edit,) = served.store.events(study_uid=study.study_uid, kind="edit")
    assert edit["user"] == "dr.c"
    assert list(worklist[worklist["study uid"] == study.study_uid]["status"]) == ["drafted"]
    with pytest.raises(gr.Error, match="empty"):
        h.on_save(study, "  ", CLINICIAN)


def test_a_disabled_account_is_refused_at_once(served):
    served.store.add_user("gone", "viewer", "gone-password")
    client = _client(served.url, "gone", "gone-password")
    try:
        served.store.set_disabled("gone")
        with pytest.raises(gradio_client.exceptions.AppError, match="disabled or unknown"):
            client.predict("nodule", 1, api_name="/search_text")
        with pytest.raises(Exception, match="(?i)incorrect|credentials|login"):
            _client(served.url, "gone", "gone-password")
    finally:
        client.close()


def test_request_handlers_keep_resolvable_request_hints():
    # Gradio passes gr.Request to a parameter annotated with it; a handler without one could not know the user.
    from ui.api import Endpoints

    for owner, names in [(Handlers, ("on_load", "on_upload", "open_study", "render_view", "on_instance", "on_similar",
                                     "on_case_select", "on_draft", "on_open_draft", "on_source_select", "on_save",
                                     "on_sign", "ask_to_sign", "on_worklist", "on_worklist_select", "on_text_search",
                                     "on_match_select", "on_audit")),
                         (PriorHandlers, ("on_priors", "on_prior_select")), (FetchHandlers, ("on_load", "on_fetch")),
                         (Endpoints, ("search", "draft", "sign", "search_text"))]:
        for name in names:
            assert typing.get_type_hints(getattr(owner, name))["request"] is gr.Request, name


def test_a_volume_upload_scrolls_by_position_and_gets_cases_and_a_draft(served, tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dicom"))  # the series generator
    from test_volume import make_slice

    study_uid, series_uid = generate_uid(), generate_uid()
    upload = tmp_path / "ct-series.zip"
    with zipfile.ZipFile(upload, "w") as archive:
        for n, index in enumerate([5, 2, 7, 0, 3, 6, 1, 4]):  # file order is not position order
            ds = make_slice(index, series_uid)
            ds.StudyInstanceUID = study_uid
            archive.writestr(f"IM{n:03d}.dcm", _dataset_bytes(ds))
    h = served.handlers
    study = h.on_upload([str(upload)], "default", CLINICIAN)[0]
    (volume,) = study.images  # one scrollable entry for the whole series
    assert (volume.frames, len(volume.slices)) == (8, 8) and "CT volume · 8 slices" in volume.label
    means = [np.asarray(h.render_view(study, "default", 0, k, VIEWER), dtype=float).mean() for k in range(8)]
    assert means == sorted(means) and means[0] < means[-1]  # slice k is the k-th along the normal
    cases, _, _ = h.on_similar(study, CLINICIAN)
    _, text, _, marker = h.on_draft(study, CLINICIAN)
    assert len(cases) == 5 and study_uid not in {c.study_uid for c in cases} and all(c.weak for c in cases)
    # the archive holds DX chest radiographs only: a CT study gets no draft, and is told why
    assert text == "" and "This archive holds no CT studies." in marker
    assert served.store.latest_report(study_uid) is None


def _dataset_bytes(ds) -> bytes:
    import io

    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def test_a_volume_with_a_missing_slice_is_shown_with_a_warning_naming_the_series(served, tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dicom"))
    from test_volume import make_slice

    study_uid, series_uid = generate_uid(), generate_uid()
    folder = tmp_path / "gappy"
    folder.mkdir()
    for index in (0, 1, 2, 3, 5, 6):  # slice 4 is missing
        ds = make_slice(index, series_uid)
        ds.StudyInstanceUID = study_uid
        (folder / f"{index}.dcm").write_bytes(_dataset_bytes(ds))
    with pytest.warns(UserWarning, match="about 1 slice"):  # gr.Warning, outside a browser session
        outputs = served.handlers.on_upload([str(p) for p in sorted(folder.iterdir())], "default", CLINICIAN)
    study, info = outputs[0], outputs[4]
    (warning,) = study.warnings
    assert warning == ("series 1 (CT): gap of 5 mm after the slice at 7.5 mm, 2.0× the median spacing 2.5 mm: "
                       "about 1 slice(s) missing")
    assert "about 1 slice(s) missing" in info and study.images[0].frames == 6


def test_upload_then_similar_cases_then_draft_embeds_the_study_once(served, cases, monkeypatch):
    """Similar cases and the draft reuse the vectors ingest stored: one embedding pass, one image forward."""
    import medcm.engine.stored as stored

    engine, calls = served.engine, {"embed_visual": 0, "encode_image": 0, "read_stored": 0}

    def counting(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(engine, "embed_visual", counting("embed_visual", engine.embed_visual))
    model = engine.checkpoint.model
    monkeypatch.setattr(model, "encode_image", counting("encode_image", model.encode_image))
    monkeypatch.setattr(stored, "read_stored", counting("read_stored", stored.read_stored))  # the fallback's re-read
    h = served.handlers
    study = h.on_upload([_dev(cases, 28)], "default", CLINICIAN)[0]
    found, _, _ = h.on_similar(study, CLINICIAN)
    sentences, text, _, _ = h.on_draft(study, CLINICIAN)
    assert len(found) == 5 and sentences and text
    assert calls == {"embed_visual": 1, "encode_image": 1, "read_stored": 0}
    assert served.store.latest_report(study.study_uid).author == "medcm-draft"

    drafted = served.client.predict(gradio_client.handle_file(_dev(cases, 29)), api_name="/draft")  # the API
    served.client.predict(gradio_client.handle_file(_dev(cases, 29)), 3, api_name="/search")  # stored: not again
    assert drafted["text"] and calls == {"embed_visual": 2, "encode_image": 2, "read_stored": 0}
