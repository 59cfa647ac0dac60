"""Login throttling for the review app: a per-name lockout, a per-address rate limit, checks off the event loop.

`LoginGuard.check` is the `auth=` callable of `launch()`: Gradio awaits it (an `async def`) inside its
async `/login` route, so the password check (scrypt) and its audit write run in a worker thread and
the server keeps answering other requests meanwhile. Every counter lives in this server process, in
memory: a restart forgets failures, lockouts and sessions' login times (the store's schema is not
touched). `ui.session_guard.SessionGuard`, the ASGI middleware, applies the per-address limit and the
session rules around Gradio's own routes, with the numbers of the same `LoginPolicy`.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Container
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi import HTTPException

from db.store import CaseStore

# The client address of the login being checked, set by `SessionGuard` (Gradio gives `auth=` only the
# name and password); None outside a served request.
CLIENT_IP: ContextVar[str | None] = ContextVar("medcm_login_ip", default=None)
MAX_NAME = 128  # a login's name goes into the audit trail as typed, cut to this length
MAX_TRACKED = 10_000  # names or addresses held before idle ones are dropped (bounds memory under attack)


@dataclass(frozen=True)
class LoginPolicy:
    """How logins are limited; the defaults are the app's.

    Attributes:
        max_failures: failed logins of one account name within `failure_window_s` that lock the name (5).
        failure_window_s: how long a failure counts (15 minutes).
        lockout_s: how long a locked name is refused, without checking the password (15 minutes).
        ip_burst: login attempts one client address may make at once (10) ...
        ip_per_minute: ... and then per minute, as a token bucket (10).
        session_max_age_s: how long a login lasts: its cookie's Max-Age and the server's limit (12 hours).
        account_recheck_s: how long a session's account is trusted to be enabled before the store is
            asked again (2 seconds), so a page's many asset requests cost about one query.
        max_concurrent_checks: password checks (scrypt: 16 MiB and tens of ms of CPU each) run at
            once; more wait their turn without blocking anything else (4).
    """

    max_failures: int = 5
    failure_window_s: float = 15 * 60
    lockout_s: float = 15 * 60
    ip_burst: int = 10
    ip_per_minute: float = 10.0
    session_max_age_s: int = 12 * 3600
    account_recheck_s: float = 2.0
    max_concurrent_checks: int = 4

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not value > 0:
                raise ValueError(f"LoginPolicy.{name}: got {value!r}, expected a positive number")


def wait_words(seconds: float) -> str:
    """`seconds` as a person reads a wait: "40 seconds", "15 minutes"."""
    if seconds <= 60:
        return f"{math.ceil(seconds)} seconds"
    return f"{math.ceil(seconds / 60)} minutes"


def too_many(message: str, wait_s: float) -> HTTPException:
    """A 429 refusal with `Retry-After` (whole seconds)."""
    return HTTPException(status_code=429, detail=message, headers={"Retry-After": str(math.ceil(wait_s))})


def login_notice(policy: LoginPolicy) -> str:
    """The line on Gradio's login page that states the limits (the page shows no reason for a 429)."""
    return (f"After {policy.max_failures} failed logins within {wait_words(policy.failure_window_s)} an account "
            f"is locked for {wait_words(policy.lockout_s)}; an address may try {policy.ip_burst:g} logins "
            f"at once, then {policy.ip_per_minute:g} a minute. Logins last {policy.session_max_age_s // 3600} hours.")


class LoginGuard:
    """Counters and checks for one served app and its store; thread-safe (one lock, held briefly).

    Args:
        store: the case store whose accounts are checked and whose audit trail records logins.
        policy: the limits (default `LoginPolicy()`).
        clock: seconds from any fixed point (default `time.monotonic`; tests pass a fake one).
    """

    def __init__(self, store: CaseStore, policy: LoginPolicy | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store, self.policy, self.clock = store, policy or LoginPolicy(), clock
        self._lock = threading.Lock()
        self._failures: dict[str, list[float]] = {}  # name -> times of its recent failed logins
        self._locked: dict[str, float] = {}  # name -> when its lockout ends
        self._buckets: dict[str, tuple[float, float, bool]] = {}  # address -> (tokens, when, refusing)
        self._sessions: dict[str, float] = {}  # Gradio's session token -> when it logged in
        self._accounts: dict[str, tuple[float, bool]] = {}  # name -> (when checked, enabled)
        self._checking: dict[str, tuple[asyncio.Lock, int]] = {}  # name -> (its lock, checks holding it)
        self._limiter = anyio.CapacityLimiter(self.policy.max_concurrent_checks)

    # ------------------------------------------------------------------ logins
    async def check(self, username: str, password: str) -> bool:
        """The `auth=` callable: whether `username` is an enabled account with this password.

        Every attempt is audited: "login" (`{"ok": true}`) or "login_failed" (`{"ok": false}`, the
        name as typed), and the failure that locks a name also "login_lockout". Checks of one name
        run one at a time, so parallel guesses cannot overtake the count.

        Raises:
            HTTPException: 429 while the name is locked (audited as "login_locked", with the address;
                the password is not checked).
        """
        name = (username or "").strip()[:MAX_NAME] or "(empty)"
        ip = CLIENT_IP.get()
        async with self._one_check_at_a_time(name):
            wait = self.locked_for(name)
            if wait > 0:
                await self.audit("login_locked", name, {"ip": ip, "retry_after_s": math.ceil(wait)})
                raise too_many(f"too many failed logins for this account: try again in {wait_words(wait)}", wait)
            return await anyio.to_thread.run_sync(self._verify, username, password, name, ip, limiter=self._limiter)

    def _verify(self, username: str, password: str, name: str, ip: str | None) -> bool:
        # In a worker thread: one scrypt computation and one or two audit writes.
        ok = self.store.authenticate(username, password) is not None
        locks = self._count(name, ok)
        self.store.log_event("login" if ok else "login_failed", name, None, {"ok": ok})
        if locks:
            self.store.log_event("login_lockout", name, None, {"ip": ip, "failures": self.policy.max_failures,
                                                                "lockout_s": self.policy.lockout_s})
        return ok

    def _count(self, name: str, ok: bool) -> bool:
        """Record a login's outcome; True when this failure locks the name."""
        now, policy = self.clock(), self.policy
        with self._lock:
            if ok:
                self._failures.pop(name, None)
                return False
            recent = [t for t in self._failures.get(name, []) if now - t < policy.failure_window_s] + [now]
            if len(recent) < policy.max_failures:
                self._failures[name] = recent
                self._prune(now)
                return False
            self._failures.pop(name, None)
            self._locked[name] = now + policy.lockout_s
            return True

    def locked_for(self, name: str) -> float:
        """Seconds until `name`'s lockout ends; 0 when it is not locked."""
        now = self.clock()
        with self._lock:
            until = self._locked.get(name, now)
            if until <= now:
                self._locked.pop(name, None)
                return 0.0
            return until - now

    @asynccontextmanager
    async def _one_check_at_a_time(self, name: str) -> AsyncIterator[None]:
        lock, users = self._checking.get(name, (None, 0))
        lock = lock or asyncio.Lock()
        self._checking[name] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._checking[name]
            if users == 1:
                del self._checking[name]
            else:
                self._checking[name] = (lock, users - 1)

    def take_attempt(self, ip: str) -> tuple[float, bool]:
        """Take one login attempt from `ip`'s token bucket.

        Returns:
            (0, False) when the attempt may go ahead; else the seconds until the next one may, and
            whether this is the first refusal since the address's last allowed attempt (the one to audit).
        """
        now, policy = self.clock(), self.policy
        rate = policy.ip_per_minute / 60
        with self._lock:
            tokens, then, refusing = self._buckets.get(ip, (float(policy.ip_burst), now, False))
            tokens = min(float(policy.ip_burst), tokens + (now - then) * rate)
            if tokens >= 1:
                self._buckets[ip] = (tokens - 1, now, False)
                self._prune(now)
                return 0.0, False
            self._buckets[ip] = (tokens, now, True)
            return (1 - tokens) / rate, not refusing

    def _prune(self, now: float) -> None:
        # With the lock held: forget what no longer limits anyone, once a table grows large.
        policy = self.policy
        if len(self._failures) > MAX_TRACKED:
            self._failures = {n: t for n, t in self._failures.items() if now - t[-1] < policy.failure_window_s}
        if len(self._locked) > MAX_TRACKED:
            self._locked = {n: until for n, until in self._locked.items() if until > now}
        if len(self._buckets) > MAX_TRACKED:
            full = policy.ip_burst / (policy.ip_per_minute / 60)  # seconds for an empty bucket to refill
            self._buckets = {ip: b for ip, b in self._buckets.items() if now - b[1] < full}
        if len(self._accounts) > MAX_TRACKED:
            self._accounts.clear()

    # ---------------------------------------------------------------- sessions
    def session_started(self, token: str) -> None:
        """Note that Gradio issued session `token` now (seen in the login's Set-Cookie)."""
        with self._lock:
            self._sessions[token] = self.clock()

    def session_expired(self, token: str) -> bool:
        """Whether session `token` is older than `session_max_age_s` (a token not seen before starts now)."""
        now = self.clock()
        with self._lock:
            return now - self._sessions.setdefault(token, now) >= self.policy.session_max_age_s

    def forget_sessions(self, live: Container[str]) -> None:
        """Drop the login times of sessions Gradio no longer holds (`live`: its `app.tokens`)."""
        with self._lock:
            self._sessions = {t: when for t, when in self._sessions.items() if t in live}

    async def account_enabled(self, name: str) -> bool:
        """Whether `name` is an enabled account (asked in a worker thread; trusted `account_recheck_s`)."""
        now = self.clock()
        with self._lock:
            checked, enabled = self._accounts.get(name, (-math.inf, False))
        if now - checked < self.policy.account_recheck_s:
            return enabled
        enabled = (await anyio.to_thread.run_sync(self.store.user_role, name)) is not None
        with self._lock:
            self._accounts[name] = (now, enabled)
            self._prune(now)
        return enabled

    async def audit(self, kind: str, name: str, detail: dict[str, Any]) -> None:
        """Append an audit event (in a worker thread: the write may wait on the database)."""
        await anyio.to_thread.run_sync(self.store.log_event, kind, name[:MAX_NAME] or "(empty)", None, detail)
