"""A clinician's path through the review app in a real browser: Playwright driving Debian's Chromium at 1440 × 900.

Log in on Gradio's login page, upload a DICOM study, wait for the similar cases and the draft, edit the
draft, sign it, then check the case store: the signer is the logged-in account. The study viewer
(Cornerstone3D, `ui/static/viewer.js`) is checked by its pixels: a CT series opens on its middle slice,
the wheel and the arrow keys change the slice shown, dragging changes the window, and a colour
ultrasound is shown in colour; the viewer and the draft are on screen together. A study of a patient with
an earlier signed study lists it as a prior, whose report and images one click shows; a prior MR opens
beside the current one and scrolls with it (by millimetres, across different slice spacings). Screenshots of each
state go to the test's temporary folder. Skips where Chromium or Playwright is missing (CI installs
both; Playwright never downloads a browser here).
"""

from __future__ import annotations

import io
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medcm.engine.ingest import read_images
from viewer_samples import colour_ultrasound, ct_series_zip  # tests/viewer_samples.py

CHROMIUM = Path("/usr/bin/chromium")
LOGIN = ("dr.browser", "browser-password")
SCREEN = {"width": 1440, "height": 900}
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]

playwright_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is in the test extras")


@pytest.fixture(scope="module")
def served(synthetic_manifest, trained_run, tmp_path_factory):
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    from db.store import CaseStore
    from medcm.engine.facade import Engine
    from ui.app import build_app, launch_options
    from ui.auth import make_auth

    root = tmp_path_factory.mktemp("browser")
    pool = root / "pool"
    for i in range(24):
        shutil.copytree(synthetic_manifest.parent / "cases" / f"train-{i:05d}", pool / f"train-{i:05d}")
    store = CaseStore(f"sqlite:///{root / 'cases.db'}")
    engine = Engine(store, checkpoint=trained_run.best_dir.parent, device="cpu")
    engine.ingest([pool])
    store.add_user(LOGIN[0], "clinician", LOGIN[1])
    app = build_app(engine, store, upload_dir=root / "uploads")
    app.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True,
               auth=make_auth(store), **launch_options())
    yield app, store, root, engine
    app.close()


def test_upload_review_edit_and_sign_in_chromium(served, synthetic_manifest):
    app, store, root, _engine = served
    query = synthetic_manifest.parent / "cases" / "dev-00004" / "image.dcm"  # a large circle, upper left
    study_uid = read_images([query])[0][0].meta.study_uid
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = _logged_in_page(browser, app.local_url)
            page.locator("#upload input[type=file]").set_input_files(str(query))
            draft = page.locator("#draft-text textarea")
            playwright_api.expect(draft).to_have_value(re.compile(r"^FINDINGS:"), timeout=120_000)
            _wait_rendered(page)
            assert _on_screen(page, "#medcm-viewport") and _on_screen(page, "#draft-text textarea")
            page.screenshot(path=str(root / "drafted.png"))
            page.keyboard.press("Alt+ArrowDown")  # the first sentence's sources (Keyboard shortcuts)
            playwright_api.expect(page.locator("#source-report")).to_contain_text("Sources of:", timeout=30_000)
            page.screenshot(path=str(root / "sentence-sources.png"))
            playwright_api.expect(page.locator("#similar-gallery button img")).to_have_count(5, timeout=30_000)
            page.get_by_role("button", name=re.compile("^Similar cases: scores")).click()  # the table is in an accordion
            playwright_api.expect(page.locator("#similar-table")).to_contain_text("FINDINGS", timeout=30_000)
            playwright_api.expect(page.locator("#draft-marker")).to_contain_text("UNVERIFIED")
            machine_text = draft.input_value()
            page.locator("#sign").click()  # asks first; the text is then emptied: the signature is refused
            playwright_api.expect(page.locator("#sign-question")).to_contain_text("Sign this report as", timeout=30_000)
            draft.fill("")
            page.locator("#sign-confirm").click()
            playwright_api.expect(page.get_by_text("the report is empty").first).to_be_visible(timeout=30_000)
            page.get_by_role("tab", name="Worklist").click()  # the refusal stays in its toast: the worklist is intact
            worklist = page.locator("#worklist")
            playwright_api.expect(worklist).to_contain_text(study_uid, timeout=30_000)
            playwright_api.expect(worklist).not_to_contain_text("Error")
            page.screenshot(path=str(root / "refused-sign-worklist.png"))
            page.get_by_role("tab", name="Review").click()
            edited = machine_text + " Reviewed against prior studies."
            draft.fill(edited)
            draft.press("Control+Enter")  # the shortcut for Sign: it asks first
            playwright_api.expect(page.locator("#sign-question")).to_contain_text("Sign this report as", timeout=30_000)
            page.screenshot(path=str(root / "sign-question.png"))
            page.locator("#sign-confirm").click()
            playwright_api.expect(page.locator("#signed-status")).to_contain_text("Signed", timeout=60_000)
            playwright_api.expect(page.locator("#draft-marker")).to_contain_text("✔ VERIFIED", timeout=30_000)
            playwright_api.expect(page.locator("#draft-marker")).not_to_contain_text("UNVERIFIED")
            playwright_api.expect(page.locator("#sign")).to_be_disabled()
            page.screenshot(path=str(root / "signed.png"), full_page=True)
            draft.press("End")
            draft.type(" Amended.")  # typing makes it a new text: Sign is active again
            playwright_api.expect(page.locator("#sign")).to_be_enabled(timeout=30_000)
        finally:
            browser.close()
    versions = store.report_versions(study_uid)
    machine = edited.removesuffix(" Reviewed against prior studies.")  # the model's draft stays its own version
    assert [(v.status, v.signed_by, v.text) for v in versions] == [("draft", None, machine), ("signed", LOGIN[0], edited)]
    assert store.get_study(study_uid).status == "signed"
    assert store.events(kind="login", user=LOGIN[0]) and store.events(kind="sign")[0]["user"] == LOGIN[0]


def _of_patient(source: Path, patient_id: str, study_date: str, path: Path) -> Path:
    """`source` as a new study of `patient_id` on `study_date` (a woman of 67), saved at `path`."""
    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(source)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID, ds.StudyDate, ds.PatientSex, ds.PatientAge = patient_id, study_date, "F", "067Y"
    ds.save_as(path)
    return path


def test_a_prior_study_of_the_same_patient_is_listed_and_compared_in_chromium(served, synthetic_manifest, tmp_path):
    app, store, root, engine = served
    cases = synthetic_manifest.parent / "cases"
    prior = _of_patient(cases / "dev-00006" / "image.dcm", "PAT-BROWSER", "20230412", tmp_path / "prior.dcm")
    (prior_uid,) = engine.ingest([prior], user="tester").studies
    engine.sign(prior_uid, "FINDINGS: Small right pleural effusion.\nIMPRESSION: Effusion.", LOGIN[0])
    current = _of_patient(cases / "dev-00007" / "image.dcm", "PAT-BROWSER", "20250301", tmp_path / "current.dcm")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = _logged_in_page(browser, app.local_url)
            page.locator("#upload input[type=file]").set_input_files(str(current))
            playwright_api.expect(page.locator("#draft-text textarea")).to_have_value(re.compile(r"^FINDINGS:"),
                                                                                        timeout=120_000)
            info = page.locator("#study-info")
            playwright_api.expect(info).to_contain_text("DX · 2025-03-01")
            playwright_api.expect(info).to_contain_text("PAT-BROWSER · 60–69 y · F")
            assert prior_uid not in info.inner_text()  # the UIDs are on hover, not spelled out
            assert page.locator("#study-info code").first.get_attribute("title").startswith("StudyInstanceUID ")
            panel = page.get_by_role("button", name=re.compile("^Priors: 1 other study of this patient"))
            playwright_api.expect(panel).to_be_visible(timeout=30_000)
            panel.click()
            table = page.locator("#prior-table")
            playwright_api.expect(table).to_contain_text("2023-04-12", timeout=30_000)
            playwright_api.expect(table).to_contain_text("signed")
            _wait_rendered(page)
            assert _on_screen(page, "#medcm-viewport") and _on_screen(page, "#draft-text textarea")
            page.screenshot(path=str(root / "priors-listed.png"))
            table.get_by_text("2023-04-12").last.click()  # the visible cell (a hidden copy comes first); one click: the signed report, and the prior beside this study
            report = page.locator("#prior-report")
            playwright_api.expect(report).to_contain_text("Small right pleural effusion", timeout=30_000)
            playwright_api.expect(report).to_contain_text("signed version 1 by dr.browser")
            page.wait_for_selector('#medcm-cmp-prior[data-index="0"]', timeout=60_000)  # drawn beside this study
            page.wait_for_selector('#medcm-cmp-current[data-index="0"]', timeout=30_000)
            page.wait_for_selector("#medcm-compare[data-src]", timeout=30_000)  # opened (and scrolled into view)
            playwright_api.expect(page.locator("#medcm-cmp-prior-label")).to_contain_text("Prior · 2023-04-12 · DX")
            page.evaluate("window.scrollTo(0, 0)")  # clicking a prior row below the fold scrolled the page down
            assert _on_screen(page, "#medcm-viewport") and _on_screen(page, "#draft-text textarea")
            page.screenshot(path=str(root / "priors.png"))
            page.locator("#medcm-compare").scroll_into_view_if_needed()
            page.screenshot(path=str(root / "prior-beside.png"))
            page.get_by_role("tab", name="Worklist").click()
            worklist = page.locator("#worklist")
            playwright_api.expect(worklist).to_contain_text("DX · 2023-04-12 · …" + prior_uid[-6:], timeout=30_000)
            playwright_api.expect(worklist).to_contain_text("60–69 y")
            playwright_api.expect(worklist).to_contain_text("FINDINGS: Small right pleural effusion.")
            page.screenshot(path=str(root / "worklist.png"))
        finally:
            browser.close()
    assert store.events(kind="view", study_uid=prior_uid)[0]["detail"] == {"screen": "prior"}


def test_a_prior_mr_opens_beside_this_study_and_scrolls_with_it_in_chromium(served, tmp_path):
    app, _store, root, engine = served
    shots = root / "compare"
    shots.mkdir(exist_ok=True)
    # MR: the shared archive gets no CT from this test (the CT viewer test expects a CT to find none to draft from).
    linked = {"patient_id": "PAT-LINKED", "modality": "MR"}
    prior = ct_series_zip(tmp_path / "prior.zip", slices=13, spacing=2.5, study_date="20240610", **linked)
    engine.ingest([prior], user="tester")
    current = ct_series_zip(tmp_path / "now.zip", slices=7, spacing=5.0, study_date="20251120", **linked)
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = _logged_in_page(browser, app.local_url)
            page.locator("#upload input[type=file]").set_input_files(str(current))
            _wait_rendered(page, 3)
            panel = page.get_by_role("button", name=re.compile("^Priors: 1 other study of this patient"))
            playwright_api.expect(panel).to_be_visible(timeout=60_000)
            panel.click()
            table = page.locator("#prior-table")
            playwright_api.expect(table).to_contain_text("2024-06-10", timeout=30_000)
            time.sleep(0.5)  # the accordion's opening
            page.screenshot(path=str(shots / "0-priors-listed.png"))
            table.get_by_text("2024-06-10").last.click()
            # Both open on their middle slice, z = 15 mm: slice 4 of 7 (5 mm apart) and 7 of 13 (2.5 mm apart).
            page.wait_for_selector('#medcm-cmp-current[data-index="3"]', timeout=60_000)
            page.wait_for_selector('#medcm-cmp-prior[data-index="6"]', timeout=30_000)
            playwright_api.expect(page.locator("#medcm-cmp-prior-frame")).to_have_text("Slice 7 / 13 · 2.5 mm")
            page.locator("#medcm-compare").scroll_into_view_if_needed()
            time.sleep(0.5)
            page.screenshot(path=str(shots / "0-opened.png"))
            opened = _pane(page, "prior", shots / "1-prior-opened.png")
            assert _differs(_pane(page, "current", shots / "1-current-opened.png"), opened) < 3.0  # the same level

            box = page.locator("#medcm-cmp-current").bounding_box()
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            page.mouse.wheel(0, 120)  # this study one slice on (5 mm): the prior follows two of its slices
            page.wait_for_selector('#medcm-cmp-current[data-index="4"]', timeout=30_000)
            page.wait_for_selector('#medcm-cmp-prior[data-index="8"]', timeout=30_000)
            time.sleep(0.5)
            followed = _pane(page, "prior", shots / "2-prior-followed.png")
            assert _differs(followed, opened) > 1.0  # another slice drawn, not only a new index
            assert _differs(_pane(page, "current", shots / "2-current-wheeled.png"), followed) < 3.0
            page.keyboard.press("ArrowDown")  # the keys scroll the pane last used, the other follows
            page.wait_for_selector('#medcm-cmp-prior[data-index="10"]', timeout=30_000)
            page.screenshot(path=str(shots / "3-linked-arrow.png"))

            page.locator("#medcm-link").uncheck()  # unlinked: each pane scrolls alone
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            page.mouse.wheel(0, -120)
            page.wait_for_selector('#medcm-cmp-current[data-index="4"]', timeout=30_000)
            time.sleep(1.0)
            assert page.locator("#medcm-cmp-prior").get_attribute("data-index") == "10"
            page.screenshot(path=str(shots / "4-unlinked.png"))
        finally:
            browser.close()


def _pane(page, pane: str, path: Path) -> np.ndarray:
    """One comparison pane's pixels as shown (also saved to `path`), RGB [H, W, 3]."""
    png = page.screenshot(clip=page.locator(f"#medcm-cmp-{pane}").bounding_box(), path=str(path))
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)


def _logged_in_page(browser, url: str):
    page = browser.new_page(viewport=SCREEN)
    page.goto(url)
    page.get_by_label("Username").fill(LOGIN[0])
    page.get_by_label("Password").fill(LOGIN[1])
    page.get_by_role("button", name="Login").click()
    playwright_api.expect(page.locator("#login")).to_contain_text(f"Logged in as {LOGIN[0]}", timeout=60_000)
    page.wait_for_selector("#medcm-viewer[data-ready]", timeout=30_000)
    return page


def _on_screen(page, selector: str) -> bool:
    """Whether the element's box lies wholly inside the 1440 × 900 viewport (no scrolling needed)."""
    box = page.locator(selector).bounding_box()
    return (box is not None and box["width"] > 0 and box["height"] > 0 and box["x"] >= 0 and box["y"] >= 0
            and box["x"] + box["width"] <= SCREEN["width"] and box["y"] + box["height"] <= SCREEN["height"])


def _wait_rendered(page, index: int | None = None) -> None:
    """Wait until the viewer has drawn (slice or frame `index`, when given) and settled."""
    selector = "#medcm-viewer[data-rendered]" if index is None else f'#medcm-viewer[data-index="{index}"]'
    page.wait_for_selector(selector, timeout=60_000)
    time.sleep(0.5)


def _canvas(page, path: Path) -> np.ndarray:
    """The viewer's pixels as shown (a screenshot of its canvas area, also saved to `path`), RGB [H, W, 3]."""
    png = page.screenshot(clip=page.locator("#medcm-viewport").bounding_box(), path=str(path))
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)


def _differs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def test_viewer_scrolls_windows_and_shows_colour_in_chromium(served, tmp_path):
    app, _store, root, _engine = served
    shots = root / "viewer"
    shots.mkdir(exist_ok=True)
    series = ct_series_zip(tmp_path / "ct.zip", slices=7)
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = _logged_in_page(browser, app.local_url)
            page.locator("#upload input[type=file]").set_input_files(str(series))
            _wait_rendered(page, 3)  # 7 slices: opens on the middle one
            playwright_api.expect(page.locator("#medcm-ov-frame")).to_have_text("Slice 4 / 7")
            sides = [page.locator(f"#medcm-ov-{side}").inner_text() for side in ("left", "right", "top", "bottom")]
            assert sides == ["R", "L", "A", "P"]  # an axial slice as radiologists read it
            playwright_api.expect(page.locator("#draft-marker")).to_contain_text("No draft", timeout=120_000)
            assert _on_screen(page, "#medcm-viewport") and _on_screen(page, "#draft-text textarea")
            assert page.locator("#medcm-presets button").all_inner_texts() == [
                "0 default", "1 lung", "2 mediastinum", "3 bone", "4 brain", "5 abdomen"]  # CT: the HU presets
            middle = _canvas(page, shots / "1-middle-slice.png")
            page.screenshot(path=str(shots / "0-page.png"))

            box = page.locator("#medcm-viewport").bounding_box()
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            page.mouse.wheel(0, 120)
            _wait_rendered(page, 4)
            wheeled = _canvas(page, shots / "2-after-wheel.png")
            assert _differs(middle, wheeled) > 1.0
            assert page.evaluate("window.scrollY") == 0  # the wheel scrolled the slices, not the page

            page.keyboard.press("ArrowUp")
            page.keyboard.press("ArrowUp")
            _wait_rendered(page, 2)
            arrowed = _canvas(page, shots / "3-after-arrow-up.png")
            assert _differs(arrowed, wheeled) > 1.0 and _differs(arrowed, middle) > 1.0
            page.keyboard.press("ArrowDown")
            _wait_rendered(page, 3)
            assert _differs(_canvas(page, shots / "4-after-arrow-down.png"), middle) < 1.0  # back on the middle

            before = page.locator("#medcm-ov-wl").inner_text()
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            page.mouse.down()
            page.mouse.move(box["x"] + box["width"] / 2 + 120, box["y"] + box["height"] / 2 + 80, steps=10)
            page.mouse.up()
            time.sleep(0.5)
            assert page.locator("#medcm-ov-wl").inner_text() != before
            assert _differs(_canvas(page, shots / "5-after-window-drag.png"), middle) > 1.0
            page.keyboard.press("1")  # the lung preset
            time.sleep(0.5)
            playwright_api.expect(page.locator("#medcm-ov-wl")).to_have_text("W 1500 L -600")
            lung = _canvas(page, shots / "6-lung-preset.png")
            page.keyboard.down("Shift")  # Shift + drag (or the right button) zooms
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            page.mouse.down()
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2 - 150, steps=10)
            page.mouse.up()
            page.keyboard.up("Shift")
            time.sleep(0.5)
            assert page.locator("#medcm-ov-zoom").inner_text() != "zoom 1.00"
            assert page.locator("#medcm-ov-wl").inner_text() == "W 1500 L -600"  # zooming leaves the window
            assert _differs(_canvas(page, shots / "6b-zoomed.png"), lung) > 1.0

            page.close()  # a fresh page for the next study (the upload box still lists the last one)
            page = _logged_in_page(browser, app.local_url)
            page.locator("#upload input[type=file]").set_input_files(str(colour_ultrasound(tmp_path / "us.dcm")))
            playwright_api.expect(page.locator("#medcm-ov-series")).to_contain_text("US", timeout=120_000)
            _wait_rendered(page, 1)  # 4 frames: opens on the 2nd
            colour = _canvas(page, shots / "7-colour-ultrasound.png")
            spread = np.abs(colour[..., 0] - colour[..., 1]).max(), np.abs(colour[..., 2] - colour[..., 1]).max()
            assert min(spread) > 100  # the red and the blue Doppler blobs are shown in colour
            assert page.locator("#medcm-presets button").all_inner_texts() == ["0 default"]  # no CT presets for US
            page.screenshot(path=str(shots / "8-page-colour.png"))
            page.locator("#medcm-cine").click()  # cine: the frames play by themselves
            page.wait_for_selector('#medcm-viewer:not([data-index="1"])', timeout=10_000)
            page.locator("#medcm-cine").click()
            playwright_api.expect(page.locator("#medcm-cine")).to_have_text("▶ cine")
        finally:
            browser.close()


def test_viewer_data_needs_a_login_and_a_stored_study(served):
    app, store, _root, _engine = served
    study_uid = next(s.study_uid for s in store.list_studies() if list(s.modalities) == ["DX"])
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            anonymous = browser.new_context().request
            for path in (f"/medcm/viewer/{study_uid}/0", f"/medcm/viewer/{study_uid}/0/0", "/medcm/static/viewer.js"):
                refused = anonymous.get(app.local_url.rstrip("/") + path)
                assert refused.status == 401 and "not logged in" in refused.text()
            page = _logged_in_page(browser, app.local_url)
            base = app.local_url.rstrip("/")
            script = page.request.get(f"{base}/medcm/static/viewer.js")
            assert script.status == 200 and script.headers["content-encoding"] == "gzip"
            assert b"medcmViewer" in script.body() and script.headers["etag"]
            info = page.request.get(f"{base}/medcm/viewer/{study_uid}/0").json()
            assert info["frames"] == 1 and info["start"] == 0 and info["presets"] == {}  # a radiograph: no HU presets
            frame = page.request.get(f"{base}/medcm/viewer/{study_uid}/0/0")
            assert frame.status == 200 and frame.headers["content-type"] == "application/octet-stream"
            assert b"DICM" not in frame.body()  # pixels and a small header, never the stored file
            assert page.request.get(f"{base}/medcm/viewer/{study_uid}/0/1").status == 404
            assert page.request.get(f"{base}/medcm/viewer/1.2.3.999/0").status == 404
            assert page.request.get(f"{base}/medcm/viewer/..%2F..%2Fetc/0").status == 404
        finally:
            browser.close()
