"""STOW-RS on the app's server: ASGI middleware answering `POST /dicomweb/studies` for accounts that may upload.

A thin adapter around `medcm.engine.stow`: it checks HTTP Basic credentials with the same `LoginGuard`
as the login page (`ui.auth.make_auth`: throttled, locked after repeated failures, every attempt
audited), requires a role that may upload (`ui.auth.allowed(role, "ingest")`), reads at most
`UploadLimits.max_upload_bytes` of body, and hands the parts to `store_parts`, one request at a time
(off the event loop). Every other request passes through to the app.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from fastapi import HTTPException

from medcm.dicom.limits import UploadLimits
from medcm.engine.facade import Engine
from medcm.engine.stow import StowRefused, split_multipart, store_parts
from ui.auth import ACTION_WORDS, allowed
from ui.login_guard import CLIENT_IP
from ui.session_guard import find_guard

Message = dict[str, Any]
STOW_PATHS = frozenset({"/dicomweb/studies", "/dicomweb/studies/"})
REALM = b'Basic realm="medcm STOW-RS", charset="UTF-8"'


class StowRS:
    """ASGI middleware: STOW-RS at `POST /dicomweb/studies`, ingesting into `engine` (and drafting with `draft`).

    Args:
        app: the wrapped ASGI app (Gradio's).
        engine: the engine uploads go to.
        draft: draft each stored study and save the draft (needs the engine's checkpoint).
        limits: the upload limits a request is held to.
    """

    def __init__(self, app: Any, engine: Engine, draft: bool = False, limits: UploadLimits = UploadLimits()) -> None:
        self.app, self.engine, self.draft, self.limits = app, engine, draft, limits
        self._one_at_a_time = threading.Lock()

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] != "http" or scope.get("path", "") not in STOW_PATHS:
            await self.app(scope, receive, send)
            return
        if scope["method"] != "POST":
            await _answer(send, 405, {"detail": "STOW-RS: only POST is served here"}, [(b"allow", b"POST")])
            return
        name, refusal = await self._login(scope)
        if refusal is not None:
            await _answer(send, *refusal)
            return
        body = await _read_body(receive, self.limits.max_upload_bytes)
        if body is None:
            await _answer(send, 413, {"detail": f"the request is over {self.limits.max_upload_bytes} bytes, the most "
                                                "one upload may hold; send the study in several requests"})
            return
        content_type = dict(scope.get("headers", [])).get(b"content-type", b"").decode("latin-1")
        try:
            parts = split_multipart(body, content_type)
            del body
            response = await anyio.to_thread.run_sync(self._store, parts, name)
        except StowRefused as err:
            await _answer(send, err.status, {"detail": str(err)})
            return
        await _answer(send, response.status, response.body, content_type=b"application/dicom+json")

    def _store(self, parts: list[bytes], name: str) -> Any:
        with self._one_at_a_time:
            return store_parts(self.engine, parts, f"stow:{name}", draft=self.draft, limits=self.limits)

    async def _login(self, scope: dict[str, Any]) -> tuple[str, tuple | None]:
        """The account behind the request's Basic credentials, or the refusal (status, body, headers) to send."""
        guard = find_guard(scope.get("app"))
        if guard is None:
            return "", (503, {"detail": "STOW-RS needs the app launched with auth=ui.auth.make_auth(store)"})
        header = dict(scope.get("headers", [])).get(b"authorization", b"")
        scheme, _, encoded = header.partition(b" ")
        try:
            name, sep, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            sep = ""
        if scheme.lower() != b"basic" or not sep:
            return "", (401, {"detail": "STOW-RS needs HTTP Basic credentials of a medcm account"},
                        [(b"www-authenticate", REALM)])
        client = scope.get("client")
        ip = client[0] if client else "unknown"
        wait, _ = guard.take_attempt(ip)
        if wait > 0:
            retry = [(b"retry-after", str(int(wait) + 1).encode())]
            return "", (429, {"detail": f"too many login attempts from {ip}"}, retry)
        context = CLIENT_IP.set(ip)
        try:
            ok = await guard.check(name, password)
        except HTTPException as err:  # the name is locked after repeated failures
            return "", (err.status_code, {"detail": err.detail}, list((err.headers or {}).items()))
        finally:
            CLIENT_IP.reset(context)
        if not ok:
            return "", (401, {"detail": f"account {name!r}: wrong name or password, or disabled"},
                        [(b"www-authenticate", REALM)])
        role = await anyio.to_thread.run_sync(guard.store.user_role, name)
        if role is None or not allowed(role, "ingest"):
            return "", (403, {"detail": f"role {role} may not {ACTION_WORDS['ingest']} (logged in as {name}); "
                                        "that needs the clinician role"})
        return name, None


async def _read_body(receive: Callable[[], Awaitable[Message]], most: int) -> bytes | None:
    """The request body, or None once it is over `most` bytes."""
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > most:
            return None
        chunks.append(chunk)
        more = message.get("more_body", False) and message["type"] == "http.request"
    return b"".join(chunks)


async def _answer(send: Callable[[Message], Awaitable[None]], status: int, body: dict,
                  headers: list | None = None, content_type: bytes = b"application/json") -> None:
    data = json.dumps(body).encode()
    head = [(b"content-type", content_type), (b"content-length", str(len(data)).encode())]
    head += [(k.encode() if isinstance(k, str) else k, v.encode() if isinstance(v, str) else v)
             for k, v in headers or []]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": data})
