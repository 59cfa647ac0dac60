"""Logins and roles: the `launch(auth=...)` check, and the per-request guards every handler calls."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

gr = pytest.importorskip("gradio")

from db.store import CaseStore  # noqa: E402
from ui.auth import ROLE_ACTIONS, allowed, current_login, log_view, make_auth, require  # noqa: E402


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
    assert check("dr.c", "dr.c-password") is True
    assert check("dr.c", "wrong-password") is False
    assert check("nobody", "dr.c-password") is False
    store.set_disabled("boss")
    assert check("boss", "boss-password") is False
    assert check("", "") is False
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
