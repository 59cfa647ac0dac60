"""The review app: its scripting API over a real local server, and its handlers called directly."""

from __future__ import annotations

import shutil
import socket
import typing
import zipfile
from types import SimpleNamespace
from urllib.parse import urlparse

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from db.store import CaseStore  # noqa: E402
from medcm.dicom import write_image  # noqa: E402
from medcm.engine import Engine  # noqa: E402
from ui.app import DISCLAIMER, LAUNCH_OPTIONS, build_app  # noqa: E402
from ui.handlers import Handlers  # noqa: E402
from ui.study import ingest_upload, load_study  # noqa: E402

N_POOL = 40
NOTICE = "Demo data are synthetic drawings, not patients."


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def cases(synthetic_manifest):
    return synthetic_manifest.parent / "cases"


@pytest.fixture(scope="module")
def served(cases, trained_run, tmp_path_factory):
    """An engine over 40 synthetic training cases, and the app serving it on 127.0.0.1."""
    root = tmp_path_factory.mktemp("ui")
    pool = root / "pool"
    for i in range(N_POOL):
        shutil.copytree(cases / f"train-{i:05d}", pool / f"train-{i:05d}")
    store = CaseStore(f"sqlite:///{root / 'cases.db'}")
    engine = Engine(store, checkpoint=trained_run.best_dir.parent, device="cpu")
    assert engine.ingest([pool], user="tester").added_reports == N_POOL
    mp = pytest.MonkeyPatch()
    mp.setenv("GRADIO_TEMP_DIR", str(root / "gradio-tmp"))
    app = build_app(engine, store, upload_dir=root / "uploads", demo_notice=NOTICE)
    _, url, _ = app.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=_free_port(),
                           quiet=True, **LAUNCH_OPTIONS)
    client = gradio_client.Client(url, verbose=False, analytics_enabled=False, download_files=False)
    yield SimpleNamespace(app=app, url=url, engine=engine, store=store, client=client,
                          upload_dir=root / "uploads", handlers=Handlers(engine, store, root / "uploads"))
    client.close()
    app.close()
    mp.undo()
    store.close()


def _dev(cases, i: int) -> str:
    return str(cases / f"dev-{i:05d}" / "image.dcm")


def test_binds_to_localhost_and_shows_the_notices(served):
    assert urlparse(served.url).hostname == "127.0.0.1"
    config = served.app.get_config_file()
    texts = [c.get("props", {}).get("value") for c in config["components"]]
    assert any(NOTICE in str(t) for t in texts) and any(DISCLAIMER in str(t) for t in texts)


def test_api_page_lists_only_the_named_endpoints(served):
    endpoints = served.client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert set(endpoints) == {"/search", "/draft", "/sign", "/search_text"}
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
    assert served.client.predict(gradio_client.handle_file(_dev(cases, 4)), 3, api_name="/search")[0] == result[0]


def test_draft_is_unverified_and_every_sentence_names_stored_sources(served, cases):
    result = served.client.predict(gradio_client.handle_file(_dev(cases, 7)), api_name="/draft")
    assert result["verified"] is False and result["sentences"] and result["text"]
    stored = {s.study_uid for s in served.store.list_studies()}
    for sentence in result["sentences"]:
        assert sentence["section"] in ("FINDINGS", "IMPRESSION") and sentence["text"] in result["text"]
        assert sentence["sources"] and all(src["case_id"] in stored for src in sentence["sources"])
    assert served.store.get_study(result["study_uid"]).status == "drafted"


def test_sign_stores_the_report_and_refuses_empty_text(served, cases):
    study_uid = served.client.predict(gradio_client.handle_file(_dev(cases, 10)), api_name="/draft")["study_uid"]
    text = "FINDINGS: Small square opacity in the lower left zone.\nIMPRESSION: Square lesion, lower left."
    signed = served.client.predict(study_uid, text, "dr.test", api_name="/sign")
    assert (signed["study_uid"], signed["signed_by"], signed["status"]) == (study_uid, "dr.test", "signed")
    latest = served.store.latest_report(study_uid)
    assert (latest.id, latest.text, latest.signed_by, latest.status) == (signed["report_id"], text, "dr.test", "signed")
    assert served.store.get_study(study_uid).status == "signed"
    assert study_uid in served.engine.index("report").keys  # joins the retrieval pool at once
    with pytest.raises(gradio_client.exceptions.AppError, match="the report is empty"):
        served.client.predict(study_uid, "   ", "dr.test", api_name="/sign")


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
    default = np.asarray(h.render_view(study, "default", 0, 0))
    lung = np.asarray(h.render_view(study, "lung", 0, 0))
    assert default.shape == lung.shape and not np.array_equal(default, lung)
    with pytest.raises(gr.Error, match="unknown window preset"):
        h.render_view(study, "retina", 0, 0)


def test_upload_of_a_multiframe_study_offers_frames(served, tmp_path):
    frames = np.stack([np.full((32, 32), v) for v in (0.1, 0.5, 0.9)])
    path = write_image(tmp_path / "cine.dcm", frames, modality="XA")
    h = served.handlers
    study, image, selector, slider, info, *_ = h.on_upload([str(path)], "dr.test", "default")
    assert len(study.images) == 1 and study.images[0].frames == 3
    assert slider.visible is True and slider.maximum == 2 and selector.visible is False
    last = np.asarray(h.render_view(study, "default", 0, 2))
    assert abs(float(np.asarray(image).mean()) - 0.1 * 255) < 2 and abs(float(last.mean()) - 0.9 * 255) < 2
    assert served.store.get_study(study.study_uid).status == "new" and study.study_uid in info


def test_handlers_draft_then_sign_updates_the_worklist(served, cases):
    h = served.handlers
    study = h.on_upload([_dev(cases, 16)], "dr.ui", "default")[0]
    cases_found, gallery, table = h.on_similar(study)
    assert len(cases_found) == len(gallery) == len(table) == 5
    sentences, text, provenance, marker = h.on_draft(study)
    assert "UNVERIFIED DRAFT" in marker and len(provenance) == len(sentences) and text
    with pytest.raises(gr.Error, match="signer"):
        h.on_sign(study, text, "  ")
    message, worklist = h.on_sign(study, text + " Edited.", "dr.ui")
    assert message.startswith("Signed version ") and " by dr.ui at " in message
    row = worklist[worklist["study uid"] == study.study_uid]
    assert list(row["status"]) == ["signed"]
    assert served.store.latest_report(study.study_uid).source == "edit"  # the signer changed the draft


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
    study, image, selector, slider, *_ = h.on_upload([str(tmp_path / "study.zip")], "dr.test", "default")
    assert len(study.images) == 2 and all(".zip:study/" in ref.path for ref in study.images)
    assert selector.visible is True and len(selector.choices) == 2 and slider.visible is False
    _, other = h.on_instance(study, 1, "default")
    assert not np.array_equal(np.asarray(image), np.asarray(other))


def test_picking_a_similar_case_shows_it_beside_the_query(served, cases):
    h = served.handlers
    study = h.on_upload([_dev(cases, 22)], "dr.test", "default")[0]
    found = h.on_similar(study)[0]
    by_gallery = gr.SelectData(None, {"index": 2, "value": None})
    query, preview, report = h.on_case_select(found, study, "default", 0, 0, by_gallery)
    assert query is not None and preview is not None
    assert found[2].study_uid in report and "FINDINGS:" in report
    by_row = gr.SelectData(None, {"index": [0, 3], "value": "", "row_value": [found[4].study_uid, 0.1]})
    assert found[4].study_uid in h.on_case_select(found, study, "default", 0, 0, by_row)[2]


def test_select_handlers_keep_resolvable_type_hints():
    # Gradio injects gr.SelectData by resolving type hints; one unresolvable name would silently break picks.
    for name in ("on_case_select", "on_source_select", "on_worklist_select", "on_match_select"):
        assert typing.get_type_hints(getattr(Handlers, name))["evt"] is gr.SelectData
