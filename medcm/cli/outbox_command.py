"""`medcm outbox`: list and retry the signed reports waiting to be sent to a PACS; `--send-to` for serve and listen."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from medcm.cli.options import db_url, folder_beside_db
from medcm.engine.outbox import DELIVERED, Outbox, RetryPolicy, SendOutcome, parse_destination
from medcm.engine.sender import audit_outcome

__all__ = ["add_outbox_parser", "add_send_to_option", "attach_outbox", "outbox_folder", "outbox_from_args",
           "parse_backoff", "run_outbox"]


def add_send_to_option(p: argparse.ArgumentParser, outbox_option: bool = True) -> None:
    """Add `--send-to AE@host:port|URL` (repeatable) and, unless the verb has its own, `--outbox DIR`."""
    p.add_argument("--send-to", action="append", default=[], metavar="AE@HOST:PORT|URL",
                   help="send every signed report as DICOM SR to this PACS (repeatable): by C-STORE to AE@host:port, "
                   "or by STOW-RS to a DICOMweb URL (a user in the URL, its password in $MEDCM_DICOMWEB_PASSWORD); "
                   "signing only queues the report: it is sent in the background, and a failed send stays in the "
                   "outbox and is retried with backoff (--send-backoff; medcm outbox --retry tries at once)")
    p.add_argument("--send-backoff", default="10,600", metavar="FIRST,MAX",
                   help="seconds before a failed send is retried the first time, and the most between retries "
                   "(doubling in between; default: 10,600)")
    if outbox_option:
        p.add_argument("--outbox", help="folder for reports waiting to be sent (default: beside a SQLite database, "
                       "cases.db → cases.db.outbox/; required for other databases)")


def outbox_folder(url: str, given: str | None) -> Path:
    """`--outbox` if given, else `<db file>.outbox` beside a SQLite database file (`folder_beside_db`)."""
    return folder_beside_db(url, given, ".outbox", "--outbox", "the reports waiting to be sent")


def outbox_from_args(args: argparse.Namespace, url: str) -> Outbox | None:
    """The outbox for `--send-to`'s destinations, or None when none is given (reports are not sent).

    Raises:
        ValueError: a `--send-to` that is neither AE@host:port nor a URL, or no `--outbox` for a non-SQLite database.
    """
    destinations = [parse_destination(text) for text in getattr(args, "send_to", None) or []]
    if not destinations:
        return None
    retry = parse_backoff(getattr(args, "send_backoff", None) or "10,600")
    return Outbox(outbox_folder(url, getattr(args, "outbox", None)), destinations, retry=retry)


def parse_backoff(text: str) -> RetryPolicy:
    """`--send-backoff FIRST,MAX` (seconds) as a `RetryPolicy`.

    Raises:
        ValueError: not two numbers with 0 <= FIRST <= MAX.
    """
    parts = text.split(",")
    try:
        if len(parts) != 2:
            raise ValueError(f"{len(parts)} value(s)")
        return RetryPolicy(first_delay_s=float(parts[0]), max_delay_s=float(parts[1]))
    except ValueError:
        raise ValueError(f"--send-backoff: got {text!r}; expected FIRST,MAX in seconds with 0 <= FIRST <= MAX, "
                         "e.g. 10,600") from None


def attach_outbox(engine: Any, args: argparse.Namespace, url: str) -> None:
    """Give `engine` the outbox of `outbox_from_args` (none: left as it is)."""
    outbox = outbox_from_args(args, url)
    if outbox is not None:
        engine.outbox = outbox


def add_outbox_parser(sub: argparse._SubParsersAction) -> None:
    """Register `medcm outbox --db URL [--outbox DIR] [--send-to AE@host:port ...] [--retry]`."""
    p = sub.add_parser("outbox", help="list (and with --retry, send) the signed reports waiting to go to a PACS",
                       description=(
        "Signed reports that serve or listen (with --send-to) have not delivered yet wait in the outbox folder "
        "and are never dropped; serve and listen retry them in the background with backoff. Lists them "
        "(attempts, last error, next try); --retry sends each now to the destination it was queued for. "
        "Exits 1 when anything is still pending."))
    p.add_argument("--db", required=True, help="database URL, or a file path for SQLite")
    p.add_argument("--outbox", help="the outbox folder (default: beside a SQLite database, cases.db → cases.db.outbox/)")
    p.add_argument("--send-to", action="append", default=[], metavar="AE@HOST:PORT|URL",
                   help="only the items for this destination (repeatable; default: all)")
    p.add_argument("--retry", action="store_true", help="try to send the pending items now and print the outcomes")
    p.add_argument("--user", default="cli", help="name recorded in the audit trail for each retried send")
    p.set_defaults(handler=run_outbox)


def run_outbox(args: argparse.Namespace) -> int:
    """Run `medcm outbox`: 0 when nothing (of the chosen destinations) is left pending, else 1.

    Raises:
        ValueError: a `--send-to` that is neither AE@host:port nor a URL, or no `--outbox` for a non-SQLite database.
    """
    only = [parse_destination(text) for text in args.send_to] or None
    outbox = Outbox(outbox_folder(db_url(args.db), args.outbox), only or [])
    items = outbox.pending(only)
    print(f"{len(items)} pending in {outbox.folder}")
    for item in items:
        print(f"  {item.destination}  study {item.study_uid}  v{item.version}  attempts {item.attempts}"
              + (f"  last error: {item.last_error}" if item.last_error else "")
              + (f"  next try: {item.next_try}" if item.next_try else ""))
    if not args.retry:
        return 1 if items else 0
    outcomes = outbox.send_pending(only)
    _audit(args.db, outcomes, args.user)
    for outcome in outcomes:
        print(f"{outcome.status}: {outcome.destination}  study {outcome.study_uid}  v{outcome.version}"
              + (f"  ({outcome.error})" if outcome.error else ""))
    left = [outcome for outcome in outcomes if outcome.status != DELIVERED]
    return 1 if left else 0


def _audit(url: str, outcomes: list[SendOutcome], user: str) -> None:
    """One "send" event per outcome, as the background sender records them (`medcm.engine.sender`)."""
    from db.store import CaseStore  # the command line is the composition root: it alone opens the store

    store = CaseStore(db_url(url))
    try:
        for outcome in outcomes:
            audit_outcome(store, outcome, user)
    finally:
        store.close()
