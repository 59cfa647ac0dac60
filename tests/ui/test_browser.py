"""A clinician's path through the review app in a real browser: Playwright driving Debian's Chromium.

Log in on Gradio's login page, upload a DICOM study, wait for the similar cases and the draft, edit the
draft, sign it, then check the case store: the signer is the logged-in account. Skips where Chromium or
Playwright is missing (CI installs both; Playwright never downloads a browser here).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from medcm.engine.ingest import read_images

CHROMIUM = Path("/usr/bin/chromium")
LOGIN = ("dr.browser", "browser-password")
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
    yield app, store, root
    app.close()


def test_upload_review_edit_and_sign_in_chromium(served, synthetic_manifest):
    app, store, root = served
    query = synthetic_manifest.parent / "cases" / "dev-00004" / "image.dcm"  # a large circle, upper left
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(app.local_url)
            page.get_by_label("Username").fill(LOGIN[0])
            page.get_by_label("Password").fill(LOGIN[1])
            page.get_by_role("button", name="Login").click()
            playwright_api.expect(page.locator("#login")).to_contain_text(f"Logged in as {LOGIN[0]}", timeout=60_000)
            page.locator("#upload input[type=file]").set_input_files(str(query))
            draft = page.locator("#draft-text textarea")
            playwright_api.expect(draft).to_have_value(re.compile(r"^FINDINGS:"), timeout=120_000)
            playwright_api.expect(page.locator("#similar-table")).to_contain_text("FINDINGS", timeout=30_000)
            playwright_api.expect(page.locator("#draft-marker")).to_contain_text("UNVERIFIED")
            edited = draft.input_value() + " Reviewed against prior studies."
            draft.fill(edited)
            page.locator("#sign").click()
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
    study_uid = read_images([query])[0][0].meta.study_uid
    versions = store.report_versions(study_uid)
    machine = edited.removesuffix(" Reviewed against prior studies.")  # the model's draft stays its own version
    assert [(v.status, v.signed_by, v.text) for v in versions] == [("draft", None, machine), ("signed", LOGIN[0], edited)]
    assert store.get_study(study_uid).status == "signed"
    assert store.events(kind="login", user=LOGIN[0]) and store.events(kind="sign")[0]["user"] == LOGIN[0]
