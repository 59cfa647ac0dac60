"""Signed reports leave in the background: signing queues an SR (`queue_signed`), an `OutboxSender` delivers it.

Signing never waits for the network: `queue_signed` writes the SR into the outbox (durably, before the
signature returns) and nothing more. An `OutboxSender` thread (started by `medcm serve` and `medcm listen`
when `--send-to` names destinations) delivers the pending items one at a time per destination, oldest
first: a destination whose oldest item failed is left alone until that item's next try
(`medcm.engine.outbox.RetryPolicy`: exponential backoff, capped), so a PACS that is down costs one
attempt per backoff step, not one per queued report. Every attempt is recorded in the audit trail as a
"send" event by the signer. A crash between queueing and sending loses nothing: the item stays pending
on disk and the next sender (or `medcm outbox --retry`) sends it. `send_status` says where a study's
reports stand, for the app to show.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from medcm.dicom.sr import export_report
from medcm.engine.outbox import DELIVERED, Outbox, PendingItem, SendOutcome

__all__ = ["FAILED", "PENDING", "SENT", "OutboxSender", "SendStatus", "audit_outcome", "queue_signed",
           "send_status"]

log = logging.getLogger(__name__)

PENDING, FAILED, SENT = "pending", "failed", "sent"
SENDER_USER = "medcm-outbox"  # names a send in the audit trail when the item does not say who signed it


@dataclass(frozen=True)
class SendStatus:
    """Where one report version's SR stands with one destination.

    `state` is "pending" (queued, not tried yet), "failed" (tried and not delivered: it is retried at
    `next_try`, ISO time, with `last_error` the last attempt's error) or "sent" (delivered).
    """

    destination: str
    version: int
    state: str
    attempts: int
    last_error: str | None
    next_try: str | None


def queue_signed(store: Any, outbox: Outbox, study_uid: str, report: Any, user: str) -> bool:
    """Queue a signed version's SR in `outbox` for every destination; nothing is sent here.

    Args:
        store: the case store (`get_study`).
        outbox: where it goes.
        study_uid: the signed study.
        report: the signed version (`db.store.ReportView`).
        user: the signer, named in the audit trail's "send" events.

    Returns:
        Whether it was queued. Never raises: the signature is already stored; a failure (e.g. a full
        disk) is logged, and `medcm export` can still write the SR.
    """
    try:
        outbox.enqueue(export_report(store.get_study(study_uid), report, "sr"), study_uid, report.version, user)
    except Exception as err:  # noqa: BLE001 - the signature stands whatever happens to its copy
        log.error("signed report of study %s v%s not queued for sending: %s: %s", study_uid, report.version,
                  type(err).__name__, err)
        return False
    return True


def audit_outcome(store: Any, outcome: SendOutcome, user: str) -> None:
    """Record one send attempt as a "send" event (destination, version, status, and the error if any)."""
    detail: dict[str, Any] = {"destination": str(outcome.destination), "version": outcome.version,
                              "status": outcome.status}
    if outcome.error:
        detail["error"] = outcome.error
    store.log_event("send", user, outcome.study_uid, detail)


def send_status(outbox: Outbox | None, study_uid: str) -> list[SendStatus]:
    """Where the SRs of a study's signed reports stand, newest version first, then by destination.

    Empty when there is no outbox or nothing of the study was queued.
    """
    if outbox is None:
        return []
    found = [_status(item, FAILED if item.attempts else PENDING) for item in outbox.pending()
             if item.study_uid == study_uid]
    found += [_status(item, SENT) for item in outbox.sent(study_uid) if item.study_uid == study_uid]
    return sorted(found, key=lambda status: (-status.version, status.destination))


def _status(item: PendingItem, state: str) -> SendStatus:
    return SendStatus(str(item.destination), item.version, state, item.attempts, item.last_error,
                      item.next_try if state == FAILED else None)


class OutboxSender:
    """A background thread delivering an outbox's pending items, with backoff, auditing every attempt.

    Args:
        outbox: the outbox to send from (all its pending items, whatever destination they were queued for).
        store: the case store the "send" events go to (`log_event`).
        max_wait_s: the longest the thread sleeps between passes when not woken (`wake`), so items
            queued by another process are picked up too.
    """

    def __init__(self, outbox: Outbox, store: Any, max_wait_s: float = 30.0) -> None:
        if max_wait_s <= 0:
            raise ValueError(f"OutboxSender max_wait_s: got {max_wait_s}, expected a number of seconds > 0")
        self.outbox, self.store, self.max_wait_s = outbox, store, max_wait_s
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """Whether the thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> OutboxSender:
        """Start the thread (once); returns self."""
        if self._thread is not None:
            raise RuntimeError("OutboxSender.start: already started; expected one start per sender")
        self._thread = threading.Thread(target=self._loop, name="medcm-outbox-sender", daemon=True)
        self._thread.start()
        return self

    def wake(self) -> None:
        """Send now what is due (e.g. a report just queued) instead of at the next pass."""
        self._wake.set()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the thread: an attempt in progress finishes (at most the outbox's timeout per DICOM
        message), nothing further is tried; what is pending stays queued on disk."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run_once(self, now: datetime | None = None) -> list[SendOutcome]:
        """One pass: per destination, its due items oldest first, until one is not delivered.

        A destination whose oldest item is not due yet (backing off) is skipped whole, so items keep
        their order and a down destination gets one attempt per backoff step.
        """
        now = now or datetime.now(timezone.utc)
        outcomes = []
        for items in _by_destination(self.outbox.pending()):
            for item in items:
                if self._stop.is_set() or not item.due(now):
                    break
                outcome = self.outbox.send_item(item)
                if outcome is None:  # delivered meanwhile by another sender
                    continue
                outcomes.append(outcome)
                try:
                    audit_outcome(self.store, outcome, item.user or SENDER_USER)
                except Exception as err:  # noqa: BLE001 - e.g. the database is down: the send itself stands
                    log.error("send of study %s v%d to %s (%s) not recorded in the audit trail: %s",
                              outcome.study_uid, outcome.version, outcome.destination, outcome.status, err)
                if outcome.status != DELIVERED:
                    break
        return outcomes

    def _seconds_to_next(self) -> float:
        """Until the earliest next try of a destination's oldest item (at most `max_wait_s`)."""
        now = datetime.now(timezone.utc)
        waits = [items[0].seconds_to_next_try(now) for items in _by_destination(self.outbox.pending())]
        return min([max(wait, 0.0) for wait in waits] + [self.max_wait_s])

    def _loop(self) -> None:
        while not self._stop.is_set():
            wait = self.max_wait_s
            try:
                self.run_once()
                wait = self._seconds_to_next()
            except Exception:  # noqa: BLE001 - the thread must outlive one bad pass; the items stay queued
                log.exception("outbox sender: a send pass failed; retrying in %.0f s", wait)
            self._wake.wait(wait)
            self._wake.clear()


def _by_destination(items: Sequence[PendingItem]) -> list[list[PendingItem]]:
    """Pending items grouped by destination, each group oldest first (as `Outbox.pending` lists them)."""
    groups: dict[Any, list[PendingItem]] = {}
    for item in items:
        groups.setdefault(item.destination, []).append(item)
    return list(groups.values())
