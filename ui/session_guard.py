"""ASGI middleware for Gradio's own routes: login rate limit and cookie, disabled accounts, no API schema before login.

What it works around, in Gradio 6 (`gradio/routes.py`): `POST /login` keeps a login as a random token
in two cookies, `access-token-<id>` (SameSite=None; Secure) and `access-token-unsecure-<id>` (for plain
HTTP), neither with an expiry, and maps the token to the name in `app.tokens` for good; its routes
(`/config`, `/gradio_api/file=`, uploads, the queue) check only that the token is known, never the
account behind it; and the login page (`/`) embeds the API schema (`window.gradio_api_info`) for anyone.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import anyio
from starlette.requests import HTTPConnection

from ui.auth import allowed, disabled_line
from ui.login_guard import CLIENT_IP, MAX_NAME, LoginGuard, wait_words

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

SESSION_COOKIE = b"access-token-"
PLAIN_HTTP_COOKIE = b"access-token-unsecure-"
LOGIN_PATHS = frozenset({"/login", "/login/"})
# Routes that run the app's events: their handlers re-check the account (`ui.auth.require`) and refuse
# with the app's one-line message, which clients show (gradio_client raises it as AppError, the page as
# a toast), where a bare 403 would read as a broken connection. Logging out stays open to anyone.
EVENT_PREFIXES = ("/gradio_api/queue/", "/gradio_api/call/", "/gradio_api/run/", "/gradio_api/api/")
OPEN_PATHS = frozenset({"/logout", "/logout/"})
API_INFO = re.compile(rb"window\.gradio_api_info = .*?;</script>", re.S)  # Gradio escapes "<" inside the JSON
NO_API_INFO = b"window.gradio_api_info = null;</script>"  # the page then asks /gradio_api/info (login needed)
MAX_FORM = 16 * 1024  # bytes of a refused login's body read to audit the name it tried
# A file the app exported (`ui.api.export_study`: a fresh "export-" folder in Gradio's cache), as Gradio
# serves it: /gradio_api/file=<path>; group 1 is the file's name.
EXPORT_FILE = re.compile(r"/file=.*/export-[^/]+/([^/]+)$")
_FORM_NAME = re.compile(rb'name="username"(?:\r\n[^\r\n]*)*?\r\n\r\n(.*?)\r\n', re.S)  # a multipart field


def find_guard(app: Any) -> LoginGuard | None:
    """The `LoginGuard` whose `check` the Gradio `app` was launched with as `auth=`, else None."""
    guard = getattr(getattr(app, "auth", None), "__self__", None)
    return guard if isinstance(guard, LoginGuard) else None


def session_cookie(header: bytes, https: bool, max_age: int) -> tuple[bytes, str | None]:
    """A Set-Cookie value with Gradio's session cookie given the app's attributes, and the token it holds.

    The session cookies become `<name>=<token>; Max-Age=<max_age>; Path=/; HttpOnly; SameSite=Lax`, with
    `; Secure` over HTTPS and always on Gradio's HTTPS-only cookie. Any other cookie is left as it is
    (token None).
    """
    pair = header.split(b";", 1)[0].strip()
    name, _, token = pair.partition(b"=")
    if not name.startswith(SESSION_COOKIE):
        return header, None
    secure = https or not name.startswith(PLAIN_HTTP_COOKIE)
    attributes = f"; Max-Age={max_age}; Path=/; HttpOnly; SameSite=Lax{'; Secure' if secure else ''}"
    return pair + attributes.encode("ascii"), token.decode("latin-1")


class SessionGuard:
    """ASGI middleware applying the `LoginGuard` behind the app's `auth=` (`ui.auth.make_auth`) to every
    HTTP request; without one (no `auth`, or a plain list of accounts) it passes everything through.

    - `POST /login`: one attempt from the client address's token bucket (429 with Retry-After when it is
      empty; the first refusal in a row is audited as "login_throttled" with the name tried and the
      address), the address handed to the check, and the session cookies rewritten (`session_cookie`).
    - A session older than `session_max_age_s` is ended (Gradio then treats the browser as logged out).
    - A session whose account is disabled or unknown gets 403 and one line, on every route but logout and
      the event routes (`EVENT_PREFIXES`).
    - A report export (`EXPORT_FILE`) is served only to roles that may export, and every download (or
      refusal) is an audit event, "download" or "download_refused", naming the file.
    - Without a live session, an HTML page's embedded API schema is replaced by null.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        gradio_app = scope.get("app")
        guard = find_guard(gradio_app) if scope["type"] == "http" else None
        if guard is None:
            await self.app(scope, receive, send)
            return
        path = route(scope)
        if scope["method"] == "POST" and path in LOGIN_PATHS:
            await self._login(guard, gradio_app, scope, receive, send)
            return
        token = _session_token(gradio_app, scope)
        if token is not None and guard.session_expired(token):
            gradio_app.tokens.pop(token, None)  # as Gradio's /logout does
            token = None
        if token is None:
            await self.app(scope, receive, _without_api_info(send) if scope["method"] == "GET" else send)
            return
        user = gradio_app.tokens[token]
        if not (path in OPEN_PATHS or path.startswith(EVENT_PREFIXES) or await guard.account_enabled(user)):
            await refuse(send, 403, disabled_line(user))
            return
        export = EXPORT_FILE.search(path)
        if export is not None:  # a report export: for the roles that may export, and audited
            role = await anyio.to_thread.run_sync(guard.store.user_role, user)
            if role is None or not allowed(role, "export"):
                await guard.audit("download_refused", user, {"file": export.group(1)})
                await refuse(send, 403, f"{user}: your role may not download report exports")
                return
            await guard.audit("download", user, {"file": export.group(1)})
        await self.app(scope, receive, send)

    async def _login(self, guard: LoginGuard, gradio_app: Any, scope: dict[str, Any], receive: Receive,
                     send: Send) -> None:
        client = scope.get("client")
        ip = client[0] if client else "unknown"
        wait, first = guard.take_attempt(ip)
        if wait > 0:
            if first:
                name = await _form_name(receive)
                await guard.audit("login_throttled", name, {"ip": ip, "retry_after_s": math.ceil(wait)})
            await refuse(send, 429, f"too many login attempts from {ip}: try again in {wait_words(wait)}", wait)
            return
        https, max_age = scope.get("scheme") == "https", guard.policy.session_max_age_s

        async def send_cookies(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 200:
                headers = []
                for key, value in message.get("headers", []):
                    if key.lower() == b"set-cookie":
                        value, token = session_cookie(value, https, max_age)
                        if token:
                            guard.session_started(token)
                    headers.append((key, value))
                message = {**message, "headers": headers}
            await send(message)

        context = CLIENT_IP.set(ip)
        try:
            await self.app(scope, receive, send_cookies)
        finally:
            CLIENT_IP.reset(context)
        guard.forget_sessions(gradio_app.tokens)  # sessions logged out since


def route(scope: dict[str, Any]) -> str:
    """The request's path below the app's root path."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


def session_user(gradio_app: Any, scope: dict[str, Any]) -> str | None:
    """The account name of the request's live session (as `SessionGuard` checks it), None without one."""
    token = _session_token(gradio_app, scope)
    return None if token is None else gradio_app.tokens[token]


def _session_token(gradio_app: Any, scope: dict[str, Any]) -> str | None:
    """The request's live session token, read from its cookies as Gradio's `get_current_user` does."""
    cookies = HTTPConnection(scope).cookies
    token = (cookies.get(f"access-token-{gradio_app.cookie_id}")
             or cookies.get(f"access-token-unsecure-{gradio_app.cookie_id}"))
    return token if token and token in gradio_app.tokens else None


async def refuse(send: Send, status: int, line: str, retry_after_s: float | None = None) -> None:
    """Answer `{"detail": line}` with `status` (the shape of Gradio's own refusals)."""
    body = json.dumps({"detail": line}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if retry_after_s is not None:
        headers.append((b"retry-after", str(math.ceil(retry_after_s)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _form_name(receive: Receive) -> str:
    """The username of a login form (URL-encoded or multipart), from at most about `MAX_FORM` bytes of it."""
    body = b""
    while len(body) < MAX_FORM:
        message = await receive()
        body += message.get("body", b"")
        if message["type"] != "http.request" or not message.get("more_body"):
            break
    found = _FORM_NAME.search(body)
    name = (found.group(1).decode("utf-8", "replace") if found
            else parse_qs(body.decode("utf-8", "replace")).get("username", [""])[0])
    return name.strip()[:MAX_NAME] or "(empty)"


def _without_api_info(send: Send) -> Send:
    """`send`, with an HTML response's embedded API schema replaced by null (the body is held until complete)."""
    start: Message | None = None
    chunks: list[bytes] = []

    async def send_page(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            content_type = dict(message.get("headers", [])).get(b"content-type", b"")
            if content_type.startswith(b"text/html"):
                start = message
                return
        if start is None or message["type"] != "http.response.body":
            await send(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body"):
            return
        page = API_INFO.sub(NO_API_INFO, b"".join(chunks))
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        await send({**start, "headers": headers + [(b"content-length", str(len(page)).encode())]})
        await send({"type": "http.response.body", "body": page})

    return send_page
