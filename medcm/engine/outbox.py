"""Signed reports on their way to a PACS: a folder outbox, one item per destination, sent until delivered.

A destination is a C-STORE SCP ("AE@host:port", `Destination`) or a DICOMweb server taking STOW-RS
("http(s)://.../dicom-web", `StowDestination`).

An item is the SR's file `<folder>/pending/<destination>/<study>-v<version>.dcm` beside a JSON sidecar
(destination, study, version, attempts, last error, created). Both are written atomically, the sidecar
first, so a crash leaves either a whole item or nothing that is listed. A delivered item (C-STORE status
0x0000, or a STOW-RS answer listing the SR as stored) moves to `<folder>/sent/`; anything else keeps it
pending with one more attempt, the error and the time of its next try (`RetryPolicy`: exponential backoff,
capped): a report is never dropped, only retried (`medcm.engine.sender.OutboxSender` in the background,
`send_pending` and `medcm outbox --retry` at once). Sends are serialised per outbox folder, across
processes too (a lock file), so the app's sender and `medcm outbox --retry` never send one item twice at once.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Union
from urllib.parse import urlsplit, urlunsplit

import pydicom

from medcm.fileio import write_bytes_atomic

__all__ = ["DELIVERED", "QUEUED", "Destination", "Outbox", "PendingItem", "RetryPolicy", "SendOutcome",
           "StowDestination", "parse_destination"]

log = logging.getLogger(__name__)

DELIVERED = "delivered"
QUEUED = "queued"
_DESTINATION = re.compile(r"^([^@\\]{1,16})@(\[[0-9A-Fa-f:.]+\]|[^:@\s\[\]]+):(\d{1,5})$")
_UNSAFE = re.compile(r"[^A-Za-z0-9.@_-]")


@dataclass(frozen=True)
class Destination:
    """A C-STORE SCP to send reports to: its AE title, host and port."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"

    @property
    def slug(self) -> str:
        """A folder name for this destination's items."""
        return _UNSAFE.sub("_", f"{self.ae_title}@{self.host}_{self.port}")


PASSWORD_ENV = "MEDCM_DICOMWEB_PASSWORD"  # a STOW-RS destination's password (never in the URL or the outbox)


@dataclass(frozen=True)
class StowDestination:
    """A DICOMweb server to send reports to by STOW-RS: its root URL, and a user name for HTTP Basic.

    The password is read from the environment variable `PASSWORD_ENV` at every send.
    """

    url: str
    username: str | None = None

    def __str__(self) -> str:
        return self.url

    @property
    def slug(self) -> str:
        """A folder name for this destination's items."""
        return "stow_" + _UNSAFE.sub("_", self.url.split("://", 1)[-1])[:120]


AnyDestination = Union[Destination, StowDestination]


def parse_destination(text: str) -> AnyDestination:
    """A destination from "AE@host:port" (e.g. "PACS@10.0.0.5:104") or a DICOMweb URL (STOW-RS).

    A URL may name a user ("https://medcm@pacs/dicom-web"); the password comes from $MEDCM_DICOMWEB_PASSWORD.

    Raises:
        ValueError: neither AE@host:port (AE title of 1-16 characters, port 1-65535) nor an http(s) URL.
    """
    text = text.strip()
    if text.lower().startswith(("http://", "https://")):
        parts = urlsplit(text)
        if not parts.hostname or parts.password is not None:
            raise ValueError(f"--send-to: got a URL without a host or with a password; expected e.g. "
                             f"https://pacs.example.org/dicom-web (the password goes in ${PASSWORD_ENV})")
        netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        netloc += f":{parts.port}" if parts.port else ""
        url = urlunsplit((parts.scheme.lower(), netloc, parts.path.rstrip("/"), parts.query, ""))
        return StowDestination(url, parts.username)
    match = _DESTINATION.match(text)
    port = int(match.group(3)) if match else 0
    if not match or not match.group(1).strip() or not 0 < port < 65536:
        raise ValueError(f"--send-to: got {text!r}, expected AE@host:port (AE title of 1-16 characters, "
                         f"port 1-65535), e.g. PACS@10.0.0.5:104, or a DICOMweb URL for STOW-RS, e.g. "
                         f"http://pacs:8042/dicom-web")
    return Destination(match.group(1).strip(), match.group(2).strip("[]"), port)


def _sidecar_destination(dest: AnyDestination) -> dict[str, Any]:
    if isinstance(dest, StowDestination):
        return {"destination": str(dest), "url": dest.url, "username": dest.username}
    return {"destination": str(dest), "ae_title": dest.ae_title, "host": dest.host, "port": dest.port}


@dataclass(frozen=True)
class RetryPolicy:
    """When a failed item is tried again: `first_delay_s` after the first failure, doubling (`factor`) after
    each further one, never more than `max_delay_s` apart."""

    first_delay_s: float = 10.0
    max_delay_s: float = 600.0
    factor: float = 2.0

    def __post_init__(self) -> None:
        if not (0 <= self.first_delay_s <= self.max_delay_s) or self.factor < 1:
            raise ValueError(f"RetryPolicy: got first_delay_s={self.first_delay_s}, max_delay_s={self.max_delay_s}, "
                             f"factor={self.factor}; expected 0 <= first_delay_s <= max_delay_s and factor >= 1")

    def delay(self, attempts: int) -> float:
        """Seconds to wait after the `attempts`-th failed attempt (1 for the first)."""
        exponent = max(attempts - 1, 0)
        if exponent > 64:  # factor ** exponent would overflow long after reaching the cap
            return self.max_delay_s
        return min(self.first_delay_s * self.factor ** exponent, self.max_delay_s)


@dataclass(frozen=True)
class PendingItem:
    """An SR waiting for its destination (`next_try`: ISO time of the next background try, None: at once;
    `user`: who signed it, named in the audit trail's "send" events)."""

    path: Path
    destination: AnyDestination
    study_uid: str
    version: int
    attempts: int
    last_error: str | None
    created: str
    next_try: str | None = None
    user: str | None = None

    def due(self, now: datetime) -> bool:
        """Whether the background sender may try it at `now` (aware UTC); an unreadable next try is due."""
        return self.seconds_to_next_try(now) <= 0

    def seconds_to_next_try(self, now: datetime) -> float:
        """Seconds from `now` (aware UTC) to its next try: 0 or less when due (no or an unreadable next try)."""
        try:
            when = datetime.fromisoformat(self.next_try) if self.next_try else None
        except (TypeError, ValueError):  # a sidecar edited by hand: try it rather than stall its destination
            return 0.0
        return 0.0 if when is None or when.tzinfo is None else (when - now).total_seconds()


@dataclass(frozen=True)
class SendOutcome:
    """What one send attempt did: `DELIVERED` (moved to sent/) or `QUEUED` (still pending, with the error)."""

    destination: AnyDestination
    study_uid: str
    version: int
    status: str
    error: str | None
    path: Path


class Outbox:
    """Pending and sent report SRs under `folder`, for `destinations`, sent with `calling_ae` as the calling AE.

    Args:
        folder: the outbox folder (created when needed); it holds pseudonymous reports.
        destinations: where `enqueue` queues each report; `send_pending` sends every pending item to the
            destination it was queued for, configured now or not.
        calling_ae: this sender's AE title.
        timeout: seconds for connecting and for each DICOM message.
        retry: when a failed item is tried again by the background sender (`RetryPolicy`).
    """

    def __init__(self, folder: str | os.PathLike, destinations: Sequence[AnyDestination], calling_ae: str = "MEDCM",
                 timeout: float = 10.0, retry: RetryPolicy = RetryPolicy()) -> None:
        self.folder = Path(folder)
        self.destinations = tuple(destinations)
        self.calling_ae = calling_ae
        self.timeout = timeout
        self.retry = retry
        self._lock = threading.Lock()  # the sender thread and `send_pending`: one send at a time

    def enqueue(self, sr_bytes: bytes, study_uid: str, version: int, user: str | None = None) -> list[Path]:
        """Queue one SR for every destination, durably (synced files); an item already pending or sent is kept,
        not duplicated. Nothing is sent here (`medcm.engine.sender`, `send_pending` send).

        Args:
            sr_bytes: the DICOM SR file.
            study_uid: its study.
            version: the report version it holds.
            user: who signed it, named in the audit trail's "send" events.

        Returns:
            Each destination's item: the pending file, or the sent one when it was delivered before.
        """
        paths = []
        name = f"{_UNSAFE.sub('_', study_uid)}-v{int(version)}.dcm"
        for dest in self.destinations:
            pending, sent = self._pending_dir(dest) / name, self.folder / "sent" / dest.slug / name
            if sent.exists() or pending.exists():
                paths.append(sent if sent.exists() else pending)
                continue
            pending.parent.mkdir(parents=True, exist_ok=True)
            sidecar = {**_sidecar_destination(dest), "study_uid": study_uid, "version": int(version), "attempts": 0,
                       "last_error": None, "next_try": None, "user": user, "created": _now()}
            write_bytes_atomic(pending.with_suffix(".json"), json.dumps(sidecar, indent=2).encode("utf-8"))
            write_bytes_atomic(pending, sr_bytes)
            paths.append(pending)
        return paths

    def pending(self, destinations: Sequence[AnyDestination] | None = None) -> list[PendingItem]:
        """The items waiting to be sent (only to `destinations` when given), oldest first."""
        paths = sorted((self.folder / "pending").glob("*/*.dcm"))
        items = [_item(path) for path in paths if not path.name.startswith(".")]  # not a half-written temp
        if destinations is not None:
            items = [item for item in items if item.destination in set(destinations)]
        return sorted(items, key=lambda item: (item.created, str(item.path)))

    def sent(self, study_uid: str | None = None) -> list[PendingItem]:
        """The delivered items (only those of `study_uid` when given), oldest first; `attempts` counts the last."""
        pattern = "*/*.dcm" if study_uid is None else f"*/{_UNSAFE.sub('_', study_uid)}-v*.dcm"
        items = [_item(path) for path in sorted((self.folder / "sent").glob(pattern)) if not path.name.startswith(".")]
        return sorted(items, key=lambda item: (item.created, str(item.path)))

    def send_pending(self, destinations: Sequence[AnyDestination] | None = None) -> list[SendOutcome]:
        """Try every pending item once now, whatever its next try (only those to `destinations` when given);
        never raises for a failed send."""
        outcomes = [self.send_item(item) for item in self.pending(destinations)]
        return [outcome for outcome in outcomes if outcome is not None]

    def send_item(self, item: PendingItem) -> SendOutcome | None:
        """Try one pending item now: delivered, or kept pending with its error and next try.

        Returns:
            What the attempt did; None when the item is no longer pending (another sender delivered it).
        """
        with self._lock, _folder_lock(self.folder):
            if not item.path.is_file():
                return None
            return self._send(_item(item.path))  # read again: another process may have tried it meanwhile

    def _pending_dir(self, dest: AnyDestination) -> Path:
        return self.folder / "pending" / dest.slug

    def _send(self, item: PendingItem) -> SendOutcome:
        error = self._store(item)
        sidecar_path = item.path.with_suffix(".json")
        sidecar = _read_sidecar(item)
        sidecar["attempts"] = item.attempts + 1
        sidecar["last_attempt"] = _now()
        sidecar["last_error"] = error
        wait = self.retry.delay(item.attempts + 1)
        sidecar["next_try"] = None if error is None else _later(wait)
        if error is None:
            sent = self.folder / "sent" / item.path.parent.name / item.path.name
            sent.parent.mkdir(parents=True, exist_ok=True)
            os.replace(item.path, sent)  # the SR first: a crash now leaves a stale sidecar, never a resend loop
            write_bytes_atomic(sent.with_suffix(".json"), json.dumps(sidecar, indent=2).encode("utf-8"))
            sidecar_path.unlink(missing_ok=True)
            return SendOutcome(item.destination, item.study_uid, item.version, DELIVERED, None, sent)
        write_bytes_atomic(sidecar_path, json.dumps(sidecar, indent=2).encode("utf-8"))
        log.warning("report of study %s v%d not delivered to %s (attempt %d, next in %.0f s): %s", item.study_uid,
                    item.version, item.destination, item.attempts + 1, wait, error)
        return SendOutcome(item.destination, item.study_uid, item.version, QUEUED, error, item.path)

    def _store(self, item: PendingItem) -> str | None:
        """Send the item's SR (C-STORE, or STOW-RS to a URL): None when delivered, else the error in one line."""
        from pynetdicom import AE

        dest = item.destination
        if isinstance(dest, StowDestination):
            return self._stow(item.path, dest)
        try:
            ds = pydicom.dcmread(item.path)
            ae = AE(ae_title=self.calling_ae)
            ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
            ae.connection_timeout = self.timeout
            ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
            assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
            if not assoc.is_established:
                why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "no connection"
                return f"association with {dest} not established ({why})"
            try:
                status = assoc.send_c_store(ds)
            finally:
                assoc.release()
        except Exception as err:  # noqa: BLE001 — a send never raises: the item stays pending with the reason
            return f"{type(err).__name__}: {err}"
        if "Status" not in status:
            return f"no C-STORE response from {dest} (connection lost or timed out)"
        code = int(status.Status)
        return None if code == 0x0000 else f"C-STORE status 0x{code:04X} from {dest}"


    def _stow(self, path: Path, dest: StowDestination) -> str | None:
        """STOW-RS the SR at `path` to `dest`: None when the answer lists it as stored, else the error in one line."""
        import requests

        from medcm.dicom.web import dicomweb_client

        try:
            ds = pydicom.dcmread(path)
            client = dicomweb_client(dest.url, dest.username, os.environ.get(PASSWORD_ENV), self.timeout)
            answer = client.store_instances([ds])
        except requests.exceptions.HTTPError as err:
            status = err.response.status_code if err.response is not None else "?"
            return f"STOW-RS to {dest}: HTTP {status}"
        except Exception as err:  # noqa: BLE001 — a send never raises: the item stays pending with the reason
            return f"STOW-RS to {dest}: {type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
        stored = {str(ref.ReferencedSOPInstanceUID) for ref in answer.get("ReferencedSOPSequence", [])}
        if ds.SOPInstanceUID in stored:
            return None
        reasons = [f"0x{int(ref.FailureReason):04X}" for ref in answer.get("FailedSOPSequence", [])
                   if "FailureReason" in ref]
        return f"STOW-RS to {dest}: not stored (failure reason {', '.join(reasons) or 'not given'})"


def _item(path: Path) -> PendingItem:
    sidecar = _read_sidecar_file(path.with_suffix(".json"))
    study, _, version = path.stem.rpartition("-v")
    if "url" in sidecar:
        dest: AnyDestination = StowDestination(sidecar["url"], sidecar.get("username"))
    elif "ae_title" in sidecar:
        dest = Destination(sidecar["ae_title"], sidecar["host"], int(sidecar["port"]))
    else:  # no readable sidecar: recover the destination from the folder name rather than lose the item
        ae, _, rest = path.parent.name.partition("@")
        host, _, port = rest.rpartition("_")
        dest = Destination(ae, host, int(port) if port.isdigit() else 0)
    return PendingItem(path, dest, sidecar.get("study_uid", study), int(sidecar.get("version", version or 0)),
                       int(sidecar.get("attempts", 0)), sidecar.get("last_error"), sidecar.get("created", ""),
                       sidecar.get("next_try"), sidecar.get("user"))


def _read_sidecar(item: PendingItem) -> dict:
    sidecar = _read_sidecar_file(item.path.with_suffix(".json"))
    dest = item.destination
    sidecar.update(**_sidecar_destination(dest), study_uid=item.study_uid, version=item.version,
                   created=item.created or _now(), user=item.user)
    return sidecar


def _read_sidecar_file(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")  # orders items queued in one second


def _later(seconds: float) -> str:
    return (datetime.now(timezone.utc) + timedelta(seconds=seconds)).isoformat(timespec="milliseconds")


@contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """Hold `<folder>/.send.lock` exclusively (POSIX `flock`; on other systems, this process's lock only)."""
    try:
        import fcntl
    except ImportError:  # Windows: no cross-process lock
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".send.lock", "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
