"""`medcm listen`: a DICOM receiver that ingests what a PACS sends like an upload (`medcm.engine.receiver`)."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path

from medcm.cli.options import add_deid_options, db_url, folder_beside_db, open_engine
from medcm.cli.outbox_command import add_send_to_option, attach_outbox

log = logging.getLogger(__name__)


def add_listen_parser(sub: argparse._SubParsersAction) -> None:
    """Register `medcm listen --db URL [--checkpoint CKPT] [--ae-title MEDCM] [--port 11112] ...`."""
    p = sub.add_parser("listen", help="receive studies from a PACS or modality (DICOM C-STORE) into the case store",
                       description=(
        "A DICOM storage SCP: accepts image storage SOP classes in the transfer syntaxes medcm decodes, and "
        "C-ECHO. Received instances are spooled, and a study that has been quiet for --quiet-seconds is "
        "de-identified and ingested like an upload (and, with --checkpoint, embedded and drafted). "
        "Runs until Ctrl+C or SIGTERM; studies still spooled are ingested at the next start."))
    p.add_argument("--db", required=True, help="database URL, or a file path for SQLite")
    p.add_argument("--checkpoint", help="model to embed and draft with (omit to store without embeddings or drafts)")
    p.add_argument("--ae-title", default="MEDCM", help="this receiver's AE title (default: MEDCM)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only; "
                   "0.0.0.0 for the network)")
    p.add_argument("--port", type=int, default=11112, help="TCP port (default: 11112)")
    p.add_argument("--allow-ae", action="append", default=[], metavar="AE",
                   help="accept associations only from this calling AE title (repeatable; default: any)")
    p.add_argument("--quiet-seconds", type=float, default=10.0,
                   help="ingest a study once nothing arrived for it for this long (default: 10)")
    p.add_argument("--spool", help="folder for received instances until ingested (default: beside a SQLite "
                   "database, cases.db → cases.db.spool/; required for other databases); holds patient data")
    p.add_argument("--no-draft", action="store_true", help="with --checkpoint: embed but do not draft (the app "
                   "drafts when a clinician opens the study); either way a study is 'new' in the worklist until a "
                   "clinician saves a draft")
    p.add_argument("--device", help="cpu, cuda or cuda:N (for --checkpoint)")
    add_deid_options(p)
    add_send_to_option(p)
    p.set_defaults(handler=run_listen)


def spool_option(url: str, spool: str | None) -> Path:
    """`--spool` if given, else `<db file>.spool` beside a SQLite database file (`folder_beside_db`)."""
    return folder_beside_db(url, spool, ".spool", "--spool", "the received instances")


def run_listen(args: argparse.Namespace) -> int:
    """Run `medcm listen` until SIGINT or SIGTERM.

    Raises:
        ValueError: a negative --quiet-seconds, an invalid AE title, or no --spool for a non-SQLite database.
        OSError: the port cannot be bound.
    """
    from medcm.engine.receiver import Receiver

    if args.quiet_seconds < 0:
        raise ValueError(f"--quiet-seconds: got {args.quiet_seconds}, expected a number of seconds >= 0")
    spool = spool_option(db_url(args.db), args.spool)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # it logs every association at INFO
    engine = open_engine(args, need_model=False)
    attach_outbox(engine, args, db_url(args.db))
    receiver = Receiver(engine, spool, ae_title=args.ae_title, host=args.host, port=args.port,
                        allowed_aes=args.allow_ae, quiet_seconds=args.quiet_seconds,
                        draft=bool(args.checkpoint) and not args.no_draft)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    receiver.start()
    engine.start_sending()  # with --send-to: delivers, in the background, what waits in the outbox
    allowed = ", ".join(args.allow_ae) if args.allow_ae else "any"
    log.info("medcm listen: AE %s on %s:%d (calling AEs: %s; spool %s); Ctrl+C stops it",
             args.ae_title, args.host, receiver.port, allowed, spool)
    try:
        while not stop.wait(1.0):  # a timed wait: the signal handlers run between waits
            pass
    finally:
        receiver.stop()
        engine.stop_sending()
        engine.store.close()
    log.info("medcm listen: stopped")
    return 0
