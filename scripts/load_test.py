"""A bounded load test of a running review app: N `gradio_client` users upload, draft and sign at once.

Each simulated clinician logs in with its own client and, until the time is up, repeats: write a new
one-image DICOM study, send it to `/draft` (which stores and drafts it), and sign the draft with
`/sign`. Every few rounds it also sends an earlier file again to `/search`, as a retrying client
would. `check_store` then proves that every accepted upload and every signature is in the store
exactly once. Used by `scripts/bench_load.py` (minutes, against the demo) and tested by
`tests/ui/test_served_store.py` (3 users for 12 seconds against an in-process app).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medcm.dicom.write import write_image

RESEND_EVERY = 4  # every 4th round re-sends an earlier upload (it must not be stored twice)


@dataclass
class UserLog:
    """What one simulated user did: latencies (seconds) per endpoint, accepted studies and signatures."""

    name: str
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"draft": [], "sign": [], "search": []})
    uploads: dict[str, str] = field(default_factory=dict)  # StudyInstanceUID sent → stored study UID
    signatures: list[dict[str, Any]] = field(default_factory=list)  # /sign results
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class LoadResult:
    """The whole run: per-user logs and the wall time."""

    users: list[UserLog]
    seconds: float

    def requests(self) -> int:
        return sum(len(v) for user in self.users for v in user.latencies.values())

    def percentile(self, q: float, endpoint: str | None = None) -> float:
        """The q-th percentile (0-100) latency in seconds, over all endpoints or one."""
        values = [x for u in self.users for name, v in u.latencies.items() if endpoint in (None, name) for x in v]
        return float(np.percentile(values, q)) if values else float("nan")

    def summary(self) -> dict[str, Any]:
        """Users, duration, requests, p50/p95 latency (overall and per endpoint), errors."""
        per = {name: {"n": sum(len(u.latencies[name]) for u in self.users),
                      "p50_s": self.percentile(50, name), "p95_s": self.percentile(95, name)}
               for name in ("draft", "sign", "search")}
        return {"users": len(self.users), "seconds": round(self.seconds, 1), "requests": self.requests(),
                "p50_s": self.percentile(50), "p95_s": self.percentile(95), "per_endpoint": per,
                "uploads": sum(len(u.uploads) for u in self.users),
                "signatures": sum(len(u.signatures) for u in self.users),
                "errors": [e for u in self.users for e in u.errors]}


def new_study_file(folder: Path, user: str, n: int, size: int = 64) -> tuple[Path, str]:
    """A fresh one-image study (random pixels, new UIDs, an identifying-looking patient id)."""
    study_uid = f"2.25.{uuid.uuid4().int}"
    rng = np.random.default_rng(abs(hash((user, n))) % 2**32)
    path = folder / f"{user}-{n}.dcm"
    write_image(path, rng.random((size, size)), patient_id=f"LOAD-{user}-{n}", modality="CR",
                body_part="CHEST", study_uid=study_uid)
    return path, study_uid


def run_load(url: str, logins: Sequence[tuple[str, str]], seconds: float, folder: str | Path) -> LoadResult:
    """Run one user per login against the app at `url` for `seconds`, then return what each did.

    Requests in flight when the time is up are finished (their results count).
    """
    from gradio_client import Client

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    clients = [Client(url, auth=login, verbose=False, analytics_enabled=False, download_files=False)
               for login in logins]
    logs = [UserLog(name) for name, _ in logins]
    start = time.perf_counter()
    deadline = start + seconds
    threads = [threading.Thread(target=_user_loop, args=(c, log, folder, deadline), daemon=True)
               for c, log in zip(clients, logs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    for client in clients:
        client.close()
    return LoadResult(logs, elapsed)


def _user_loop(client: Any, log: UserLog, folder: Path, deadline: float) -> None:
    from gradio_client import handle_file

    sent: list[Path] = []
    n = 0
    while time.perf_counter() < deadline:
        n += 1
        try:
            if sent and n % RESEND_EVERY == 0:
                _timed(log, "search", client.predict, handle_file(str(sent[0])), 1, api_name="/search")
                continue
            path, original_uid = new_study_file(folder, log.name, n)
            draft = _timed(log, "draft", client.predict, handle_file(str(path)), api_name="/draft")
            log.uploads[original_uid] = draft["study_uid"]
            sent.append(path)
            text = draft["text"] or "FINDINGS: No acute abnormality.\nIMPRESSION: Normal study."
            log.signatures.append(_timed(log, "sign", client.predict, draft["study_uid"], text, api_name="/sign"))
        except Exception as err:  # noqa: BLE001 - a refused request is a result to report, not a crash
            log.errors.append(f"{log.name} round {n}: {type(err).__name__}: {err}")


def _timed(log: UserLog, endpoint: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    begin = time.perf_counter()
    result = fn(*args, **kwargs)
    log.latencies[endpoint].append(time.perf_counter() - begin)
    return result


def check_store(store: Any, result: LoadResult, studies_before: int, signs_before: int = 0) -> list[str]:
    """Problems found in the store after a run (empty when every accepted write is there exactly once).

    Checks: one stored study per accepted upload (re-sends added none); each signature is a signed
    version of its study, with the id, version and signer the client was told, and is the only
    signed version of that study; the audit trail has one "sign" event per signature.
    """
    problems = []
    accepted = {stored for user in result.users for stored in user.uploads.values()}
    uploads = sum(len(user.uploads) for user in result.users)
    if len(accepted) != uploads:
        problems.append(f"{uploads} accepted uploads map to {len(accepted)} stored studies; expected one each")
    total = len(store.list_studies(limit=1_000_000))
    if total != studies_before + len(accepted):
        problems.append(f"the store holds {total} studies; expected {studies_before} + {len(accepted)} uploads")
    signatures = [(user.name, sig) for user in result.users for sig in user.signatures]
    for name, sig in signatures:
        signed = [v for v in store.report_versions(sig["study_uid"]) if v.status == "signed"]
        match = [v for v in signed if v.id == sig["report_id"] and v.version == sig["version"] and v.signed_by == name]
        if len(signed) != 1 or len(match) != 1:
            problems.append(f"study {sig['study_uid']}: {len(signed)} signed versions, {len(match)} matching "
                            f"report {sig['report_id']} by {name}; expected exactly one")
    sign_events = len(store.events(kind="sign", limit=1_000_000)) - signs_before
    if sign_events != len(signatures):
        problems.append(f"{sign_events} sign events for {len(signatures)} signatures; expected one each")
    return problems


def format_summary(summary: dict[str, Any]) -> str:
    """One Markdown table row per endpoint and a total, for BENCHMARKS.md."""
    lines = ["| endpoint | requests | p50 (s) | p95 (s) |", "|---|---|---|---|"]
    for name, row in summary["per_endpoint"].items():
        lines.append(f"| /{name} | {row['n']} | {row['p50_s']:.2f} | {row['p95_s']:.2f} |")
    lines.append(f"| all | {summary['requests']} | {summary['p50_s']:.2f} | {summary['p95_s']:.2f} |")
    return "\n".join(lines)

