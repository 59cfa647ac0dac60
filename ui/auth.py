"""Who is logged in and what their role allows: the login check for `launch(auth=...)`, per-request guards.

Gradio keeps the login (a cookie naming the user) and hands every event its `gr.Request`, whose
`username` is the logged-in name, or None when the app was launched without `auth`. Handlers never
trust a name typed into the page: they call `require(store, request, action)`, which looks the
account up in the store on every call, so a disabled account or a changed role takes effect at once,
even for a browser that logged in earlier. The login itself is throttled (`ui.login_guard`), and
Gradio's own routes are held to the same accounts by `ui.session_guard.SessionGuard`.

Roles: a viewer reads (worklist, studies, similar cases, text search, reports); a clinician also
uploads, drafts, edits, signs and exports; an admin reads, sees the audit trail and the accounts
(accounts are managed with `medcm users`). Signing is clinical: an admin cannot sign.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from db.store import CaseStore
from ui.errors import user_error
from ui.login_guard import LoginGuard, LoginPolicy

ROLE_ACTIONS: dict[str, frozenset[str]] = {
    "viewer": frozenset({"read"}),
    "clinician": frozenset({"read", "ingest", "draft", "edit", "sign", "export"}),
    "admin": frozenset({"read", "audit"}),
}
ACTION_WORDS = {
    "read": "read studies and reports", "ingest": "upload studies", "draft": "draft reports",
    "edit": "edit reports", "sign": "sign reports", "export": "export reports", "audit": "see the audit trail",
}
NOT_LOGGED_IN = "not logged in: open the app's page and log in with your medcm account"


@dataclass(frozen=True)
class Login:
    """The account behind a request."""

    name: str
    role: str


def make_auth(store: CaseStore, policy: LoginPolicy | None = None,
              clock: Callable[[], float] = time.monotonic) -> Callable[[str, str], Awaitable[bool]]:
    """The `auth=` callable for `launch()`: checks the store, off the event loop, and records the attempt.

    Every attempt becomes an audit event: "login" (detail `{"ok": true}`) or "login_failed"
    (`{"ok": false}`, with the name as typed). Disabled accounts cannot log in. After
    `policy.max_failures` failures a name is locked (a 429, see `ui.login_guard.LoginGuard.check`).
    Launch with `launch_options()` too: its middleware finds this guard and applies the rest of
    `policy` (the per-address limit, the session cookie and lifetime, disabled accounts' sessions).

    Args:
        store: the case store holding the accounts.
        policy: the limits (default `LoginPolicy()`: 5 failures in 15 minutes lock a name for 15 minutes).
        clock: monotonic seconds (tests pass a fake one).
    """
    return LoginGuard(store, policy, clock).check


def allowed(role: str, action: str) -> bool:
    """Whether `role` may do `action` (a key of `ACTION_WORDS`)."""
    return action in ROLE_ACTIONS.get(role, frozenset())


def disabled_line(name: str) -> str:
    """The refusal for a login whose account is disabled or unknown."""
    return f"account {name!r} is disabled or unknown: ask an admin to enable it"


def current_login(store: CaseStore, request: Any) -> Login:
    """The enabled account that made `request` (a `gr.Request`, or anything with `.username`).

    Raises:
        gr.Error: no login (the app runs without `auth`), or the account is unknown or disabled.
    """
    name = getattr(request, "username", None)
    if not name:
        raise user_error(NOT_LOGGED_IN)
    role = store.user_role(name)
    if role is None:
        raise user_error(disabled_line(name))
    return Login(name, role)


def require(store: CaseStore, request: Any, action: str) -> Login:
    """The request's login, if its role may do `action`.

    Raises:
        gr.Error: not logged in, or e.g. "role viewer may not sign reports (logged in as dr.v);
            that needs the clinician role".
    """
    if action not in ACTION_WORDS:
        raise ValueError(f"action {action!r}: expected one of {', '.join(ACTION_WORDS)}")
    login = current_login(store, request)
    if not allowed(login.role, action):
        needed = " or ".join(role for role, actions in ROLE_ACTIONS.items() if action in actions)
        raise user_error(f"role {login.role} may not {ACTION_WORDS[action]} (logged in as {login.name}); "
                         f"that needs the {needed} role")
    return login


def log_view(store: CaseStore, login: Login, study_uid: str | None, screen: str,
             study_uids: Iterable[str] | None = None) -> None:
    """Record that `login` opened a study (or a list of studies: search results) for reading."""
    detail: dict[str, Any] = {"screen": screen}
    if study_uids is not None:
        detail["study_uids"] = list(dict.fromkeys(study_uids))
    store.log_event("view", login.name, study_uid, detail)
