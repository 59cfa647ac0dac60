"""Logins over a served app (a small one, launched as the review app is): the password check off the event
loop, lockouts and the address limit, the session cookie, disabled accounts' sessions, no API schema before login."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

gr = pytest.importorskip("gradio")
httpx = pytest.importorskip("httpx")

from db.store import CaseStore  # noqa: E402
from ui.app import launch_options  # noqa: E402
from ui.auth import make_auth  # noqa: E402
from ui.login_guard import LoginPolicy  # noqa: E402

POLICY = LoginPolicy(max_failures=3, ip_burst=6, ip_per_minute=6)  # small numbers: fewer slow (scrypt) logins
PASSWORD = "dr.a-password"


class Clock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class SlowStore:
    """The store, whose password check can be made slow (`delay` seconds) and counted."""

    def __init__(self, store: CaseStore) -> None:
        self.store, self.delay, self.checks, self.checking = store, 0.0, 0, threading.Event()

    def authenticate(self, name: str, password: str) -> str | None:
        self.checks += 1
        self.checking.set()
        time.sleep(self.delay)
        return self.store.authenticate(name, password)

    def __getattr__(self, name: str):
        return getattr(self.store, name)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    store = CaseStore(f"sqlite:///{tmp_path_factory.mktemp('auth') / 'cases.db'}")
    store.add_user("dr.a", "clinician", PASSWORD)
    store.add_user("viewer1", "viewer", PASSWORD)
    slow, clock = SlowStore(store), Clock()
    with gr.Blocks(analytics_enabled=False) as app:
        text, result = gr.Textbox(), gr.Textbox()
        gr.Button("echo").click(lambda value: value, text, result, api_name="echo")
    _, url, _ = app.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=_free_port(), quiet=True,
                           auth=make_auth(slow, POLICY, clock), **launch_options())
    yield SimpleNamespace(app=app, url=url.rstrip("/"), store=store, slow=slow, clock=clock)
    app.close()
    store.close()


@pytest.fixture(autouse=True)
def fresh(served):
    """A day later: every bucket full, every lockout and session over; the password check quick again."""
    served.clock.now += 24 * 3600
    served.slow.delay = 0.0
    yield


def _login(served, password: str = PASSWORD, name: str = "dr.a") -> tuple[httpx.Response, httpx.Client]:
    client = httpx.Client(base_url=served.url, timeout=30)
    return client.post("/login", data={"username": name, "password": password}), client


def _events(served, kind: str) -> list[dict]:
    return served.store.events(kind=kind, limit=100)


def test_a_login_being_checked_does_not_hold_up_other_requests(served):
    served.slow.delay, served.slow.checking = 1.0, threading.Event()
    answers: list[tuple[httpx.Response, float]] = []

    def log_in() -> None:
        started = time.monotonic()
        answers.append((_login(served)[0], time.monotonic() - started))

    login = threading.Thread(target=log_in)
    login.start()
    assert served.slow.checking.wait(10)
    started = time.monotonic()
    other = httpx.get(served.url + "/gradio_api/app_id", timeout=30)
    waited = time.monotonic() - started
    login.join(30)
    (response, took), = answers
    assert other.status_code == 200 and waited < 0.5 and took >= 1.0 and response.status_code == 200


def test_the_session_cookie_is_lax_http_only_and_expires_after_twelve_hours(served):
    response, client = _login(served)
    cookies = response.headers.get_list("set-cookie")
    assert len(cookies) == 2 and all(c.startswith("access-token-") for c in cookies)
    for cookie in cookies:
        assert cookie.endswith("; Max-Age=43200; Path=/; HttpOnly; SameSite=Lax" +
                               ("" if cookie.startswith("access-token-unsecure-") else "; Secure"))
    assert client.get("/config").status_code == 200
    served.clock.now += 12 * 3600
    token = response.cookies[cookies[0].split("=", 1)[0]]
    assert token in served.app.server_app.tokens
    assert client.get("/config").status_code == 401 and token not in served.app.server_app.tokens


def test_a_disabled_accounts_open_session_is_refused_on_gradios_own_routes(served):
    _, client = _login(served)
    assert client.get("/config").status_code == 200 and client.get("/gradio_api/info").status_code == 200
    served.store.set_disabled("dr.a")
    try:
        served.clock.now += POLICY.account_recheck_s
        refused = [client.get("/config"), client.get("/gradio_api/info"), client.get("/"),
                   client.get("/gradio_api/file=/etc/hostname"),
                   client.post("/gradio_api/upload", files={"files": b"x"})]
        for response in refused:
            assert response.status_code == 403 and response.text.count("\n") == 0
            assert response.json() == {"detail": "account 'dr.a' is disabled or unknown: ask an admin to enable it"}
        assert refused[0].headers["X-Frame-Options"] == "DENY"
    finally:
        served.store.set_disabled("dr.a", False)
    served.clock.now += POLICY.account_recheck_s
    assert client.get("/config").status_code == 200


def test_the_login_page_names_the_product_and_says_a_clinician_signs(served):
    page = httpx.get(served.url + "/", timeout=30).text
    assert "medcm review" in page and "a clinician reviews, edits and signs every report" in page
    assert "failed logins within" in page


def test_the_login_page_does_not_embed_the_api_schema(served):
    page = httpx.get(served.url + "/", timeout=30).text
    assert "auth_required" in page and "window.gradio_api_info = null;" in page and "/echo" not in page
    assert "failed logins" in page  # the login page states the limits
    assert httpx.get(served.url + "/config").status_code == 401
    assert httpx.get(served.url + "/gradio_api/info").status_code == 401
    _, client = _login(served)
    assert '"named_endpoints":{"/echo"' in client.get("/").text


def test_repeated_failures_lock_the_name_without_checking_the_password(served):
    assert [_login(served, "wrong-password")[0].status_code for _ in range(3)] == [400] * 3
    checks = served.slow.checks
    locked = _login(served)[0]
    assert locked.status_code == 429 and locked.headers["Retry-After"] == "900"
    assert locked.json()["detail"] == "too many failed logins for this account: try again in 15 minutes"
    assert served.slow.checks == checks
    assert _events(served, "login_lockout")[0]["detail"] == {"ip": "127.0.0.1", "failures": 3, "lockout_s": 900.0}
    (event,) = _events(served, "login_locked")
    assert (event["user"], event["detail"]) == ("dr.a", {"ip": "127.0.0.1", "retry_after_s": 900})
    served.clock.now += POLICY.lockout_s
    assert _login(served)[0].status_code == 200


def test_an_address_is_throttled_and_the_first_refusal_audited(served):
    assert [_login(served, "guess", f"guess{i}")[0].status_code for i in range(6)] == [400] * 6
    client = httpx.Client(base_url=served.url, timeout=30)
    multipart = {"username": (None, "guess6"), "password": (None, "guess")}  # as the login page sends it
    throttled = [client.post("/login", files=multipart), _login(served, "guess", "guess7")[0]]
    assert [r.status_code for r in throttled] == [429, 429] and throttled[0].headers["Retry-After"] == "10"
    assert throttled[0].json()["detail"] == "too many login attempts from 127.0.0.1: try again in 10 seconds"
    (event,) = _events(served, "login_throttled")
    assert (event["user"], event["detail"]) == ("guess6", {"ip": "127.0.0.1", "retry_after_s": 10})
    served.clock.now += 10
    assert _login(served)[0].status_code == 200
    assert json.loads(_login(served)[0].text)["detail"].startswith("too many login attempts")


def test_an_export_is_served_to_roles_that_may_export_and_every_download_is_audited(served):
    from gradio import utils as gradio_utils

    folder = Path(gradio_utils.get_upload_folder()) / "export-test123"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.txt").write_text("FINDINGS: Clear.", encoding="utf-8")
    route = f"/gradio_api/file={folder / 'report.txt'}"
    _, viewer = _login(served, name="viewer1")
    refused = viewer.get(route)
    assert refused.status_code == 403 and "may not download report exports" in refused.json()["detail"]
    _, clinician = _login(served)
    fetched = clinician.get(route)
    assert fetched.status_code == 200 and fetched.text == "FINDINGS: Clear."
    assert [(e["user"], e["detail"]["file"]) for e in _events(served, "download_refused")][:1] == [("viewer1", "report.txt")]
    assert [(e["user"], e["detail"]["file"]) for e in _events(served, "download")][:1] == [("dr.a", "report.txt")]
