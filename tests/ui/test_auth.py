"""Logins and roles: the `launch(auth=...)` check and its throttling, and the per-request guards every handler calls."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

gr = pytest.importorskip("gradio")

from fastapi import HTTPException  # noqa: E402

from db.store import CaseStore  # noqa: E402
from ui.auth import ROLE_ACTIONS, allowed, current_login, log_view, make_auth, require  # noqa: E402
from ui.login_guard import LoginGuard, LoginPolicy  # noqa: E402
from ui.session_guard import session_cookie  # noqa: E402


@pytest.fixture
def store():
    with CaseStore("sqlite://") as opened:
        for name, role in (("dr.c", "clinician"), ("dr.v", "viewer"), ("boss", "admin")):
            opened.add_user(name, role, f"{name}-password")
        yield opened


def as_user(name: str | None) -> SimpleNamespace:
    return SimpleNamespace(username=name)  # what handlers read of a gr.Request


def test_the_login_check_accepts_only_enabled_accounts_and_records_every_try(store):
    check = make_auth(store)
    assert asyncio.run(check("dr.c", "dr.c-password")) is True
    assert asyncio.run(check("dr.c", "wrong-password")) is False
    assert asyncio.run(check("nobody", "dr.c-password")) is False
    store.set_disabled("boss")
    assert asyncio.run(check("boss", "boss-password")) is False
    assert asyncio.run(check("", "")) is False
    trail = [(e["kind"], e["user"], e["detail"]) for e in store.events() if e["kind"].startswith("login")]
    assert trail == [("login_failed", "(empty)", {"ok": False}), ("login_failed", "boss", {"ok": False}),
                         ("login_failed", "nobody", {"ok": False}), ("login_failed", "dr.c", {"ok": False}),
                         ("login", "dr.c", {"ok": True})]


@pytest.mark.parametrize(("role", "may", "may_not"), [
    ("viewer", {"read"}, {"ingest", "draft", "edit", "sign", "export", "audit"}),
    ("clinician", {"read", "ingest", "draft", "edit", "sign", "export"}, {"audit"}),
    ("admin", {"read", "audit"}, {"ingest", "draft", "edit", "sign", "export"}),
])
def test_roles_allow_their_actions_only(role, may, may_not):
    assert all(allowed(role, a) for a in may) and not any(allowed(role, a) for a in may_not)
    assert set(ROLE_ACTIONS[role]) == may
    assert not allowed("root", "read")


def test_require_names_the_role_the_action_and_the_role_needed(store):
    assert require(store, as_user("dr.c"), "sign").name == "dr.c"
    with pytest.raises(gr.Error) as info:
        require(store, as_user("boss"), "sign")
    assert info.value.message == ("role admin may not sign reports (logged in as boss); "
                                  "that needs the clinician role")
    with pytest.raises(gr.Error, match="may not see the audit trail"):
        require(store, as_user("dr.c"), "audit")
    with pytest.raises(ValueError, match="action 'fly'"):
        require(store, as_user("dr.c"), "fly")


@pytest.mark.parametrize("request_", [None, as_user(None), as_user(""), SimpleNamespace()])
def test_no_login_is_refused(store, request_):
    with pytest.raises(gr.Error, match="not logged in"):
        current_login(store, request_)


def test_a_disabled_or_changed_account_takes_effect_on_the_next_request(store):
    assert current_login(store, as_user("dr.v")).role == "viewer"
    store.set_role("dr.v", "clinician")
    assert require(store, as_user("dr.v"), "sign").role == "clinician"
    store.set_disabled("dr.v")
    with pytest.raises(gr.Error, match="disabled or unknown"):
        current_login(store, as_user("dr.v"))


def test_log_view_records_one_event_with_the_studies_shown(store):
    login = current_login(store, as_user("dr.v"))
    log_view(store, login, "1.2.3", "text search", ["9.1", "9.2", "9.1"])
    (event,) = store.events(kind="view")
    assert (event["user"], event["study_uid"]) == ("dr.v", "1.2.3")
    assert event["detail"] == {"screen": "text search", "study_uids": ["9.1", "9.2"]}


# ------------------------------------------------------------------ throttling (no server; a fake clock)
class Clock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Accounts:
    """The store methods a `LoginGuard` uses, without scrypt: counts password checks, keeps the events."""

    def __init__(self) -> None:
        self.checks, self.events = 0, []

    def authenticate(self, name: str, password: str) -> str | None:
        self.checks += 1
        return "viewer" if (name, password) == ("dr.v", "right-password") else None

    def log_event(self, kind: str, user: str, study_uid: str | None = None, detail: dict | None = None) -> None:
        self.events.append((kind, user, detail))

    def user_role(self, name: str | None) -> str | None:
        return "viewer" if name == "dr.v" else None


def _try(guard: LoginGuard, password: str, name: str = "dr.v") -> bool | int:
    """The check's answer, or the status of its refusal."""
    try:
        return asyncio.run(guard.check(name, password))
    except HTTPException as refused:
        return refused.status_code


def test_five_failures_lock_the_name_for_fifteen_minutes_without_checking_passwords():
    accounts, clock = Accounts(), Clock()
    guard = LoginGuard(accounts, clock=clock)
    assert [_try(guard, "wrong") for _ in range(5)] == [False] * 5
    with pytest.raises(HTTPException) as info:
        asyncio.run(guard.check("dr.v", "right-password"))
    assert info.value.status_code == 429 and info.value.headers == {"Retry-After": "900"}
    assert info.value.detail == "too many failed logins for this account: try again in 15 minutes"
    assert accounts.checks == 5 and _try(guard, "wrong", "dr.other") is False  # other names are not locked
    kinds = [(kind, user) for kind, user, _ in accounts.events]
    assert kinds[4:7] == [("login_failed", "dr.v"), ("login_lockout", "dr.v"), ("login_locked", "dr.v")]
    assert accounts.events[5][2] == {"ip": None, "failures": 5, "lockout_s": 900.0}
    clock.now += 899
    assert _try(guard, "right-password") == 429 and accounts.events[-1][2] == {"ip": None, "retry_after_s": 1}
    clock.now += 1
    assert _try(guard, "right-password") is True and accounts.checks == 7


def test_a_success_resets_the_count_and_old_failures_expire():
    clock = Clock()
    guard = LoginGuard(Accounts(), LoginPolicy(max_failures=3, failure_window_s=60), clock)
    answers = [_try(guard, p) for p in ("wrong", "wrong", "right-password", "wrong", "wrong")]
    assert answers == [False, False, True, False, False] and guard.locked_for("dr.v") == 0
    clock.now += 60  # the two failures leave the window
    assert [_try(guard, "wrong") for _ in range(2)] == [False, False] and guard.locked_for("dr.v") == 0
    assert _try(guard, "wrong") is False and guard.locked_for("dr.v") == 15 * 60
    assert _try(guard, "right-password") == 429


def test_parallel_guesses_at_one_name_are_checked_one_at_a_time():
    accounts = Accounts()
    guard = LoginGuard(accounts, clock=Clock())

    async def guess_many() -> list[object]:
        return await asyncio.gather(*(guard.check("dr.v", f"guess-{i}") for i in range(8)), return_exceptions=True)

    answers = asyncio.run(guess_many())
    assert answers[:5] == [False] * 5 and all(getattr(a, "status_code", None) == 429 for a in answers[5:])
    assert accounts.checks == 5


def test_an_address_gets_ten_attempts_at_once_then_ten_a_minute():
    clock = Clock()
    guard = LoginGuard(Accounts(), clock=clock)
    assert [guard.take_attempt("10.0.0.1") for _ in range(10)] == [(0.0, False)] * 10
    assert guard.take_attempt("10.0.0.1") == (6.0, True)  # the first refusal: the one audited
    assert guard.take_attempt("10.0.0.1") == (6.0, False) and guard.take_attempt("10.0.0.2") == (0.0, False)
    clock.now += 6
    assert guard.take_attempt("10.0.0.1") == (0.0, False)
    assert guard.take_attempt("10.0.0.1") == (6.0, True)


def test_sessions_last_twelve_hours_and_account_checks_are_cached_briefly():
    accounts, clock = Accounts(), Clock()
    guard = LoginGuard(accounts, clock=clock)
    guard.session_started("token")
    clock.now += 12 * 3600 - 1
    assert not guard.session_expired("token") and not guard.session_expired("unseen")  # unseen: starts now
    clock.now += 1
    assert guard.session_expired("token")
    guard.forget_sessions({"unseen"})
    assert not guard.session_expired("token")  # forgotten, so seen anew
    assert asyncio.run(guard.account_enabled("dr.v")) and not asyncio.run(guard.account_enabled("gone"))
    accounts.user_role = lambda name: None  # disabled meanwhile
    assert asyncio.run(guard.account_enabled("dr.v"))  # trusted for 2 seconds
    clock.now += 2
    assert not asyncio.run(guard.account_enabled("dr.v"))


def test_the_policy_refuses_nonsense():
    with pytest.raises(ValueError, match="LoginPolicy.max_failures: got 0"):
        LoginPolicy(max_failures=0)


def test_the_session_cookie_is_lax_expiring_http_only_and_secure_over_https():
    plain = b"access-token-unsecure-ID=tok; HttpOnly; Path=/; SameSite=lax"
    tls = b"access-token-ID=tok; HttpOnly; Path=/; SameSite=none; Secure"
    assert session_cookie(plain, False, 43200) == (
        b"access-token-unsecure-ID=tok; Max-Age=43200; Path=/; HttpOnly; SameSite=Lax", "tok")
    assert session_cookie(plain, True, 60)[0].endswith(b"; Max-Age=60; Path=/; HttpOnly; SameSite=Lax; Secure")
    assert session_cookie(tls, False, 60)[0] == (
        b"access-token-ID=tok; Max-Age=60; Path=/; HttpOnly; SameSite=Lax; Secure")
    assert session_cookie(b"other=1; SameSite=none", True, 60) == (b"other=1; SameSite=none", None)
