"""`medcm fetch`: pull a study by StudyInstanceUID from a DICOMweb server into the case store (engine.dicomweb)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from typing import TYPE_CHECKING

from medcm.cli.options import add_deid_options, open_engine

if TYPE_CHECKING:
    from medcm.engine.dicomweb import DicomWebServer

__all__ = ["PASSWORD_ENV", "add_dicomweb_server_options", "add_fetch_parser", "dicomweb_server_from_args",
           "run_fetch"]

log = logging.getLogger(__name__)
PASSWORD_ENV = "MEDCM_DICOMWEB_PASSWORD"


def add_fetch_parser(sub: argparse._SubParsersAction) -> None:
    """Register `medcm fetch --from URL --study UID --db URL [--checkpoint CKPT] [--user NAME] ...`."""
    p = sub.add_parser("fetch", help="pull a study from a DICOMweb server (QIDO-RS, WADO-RS) into the case store",
                       description=(
        "Finds the study on the DICOMweb server (QIDO-RS), fetches its image series (WADO-RS) and ingests "
        "them like an upload: de-identified, and with --checkpoint embedded and drafted. Series without "
        "images (SR, key objects) are not fetched. Exits 1 with one error line when the server is "
        "unreachable, answers with an HTTP error, or has no such study."))
    p.add_argument("--from", dest="url", required=True, metavar="URL",
                   help="the server's DICOMweb root, e.g. http://pacs:8042/dicom-web")
    p.add_argument("--study", required=True, metavar="UID", help="the StudyInstanceUID to pull")
    p.add_argument("--db", required=True, help="database URL, or a file path for SQLite")
    p.add_argument("--checkpoint", help="model to embed and draft with (omit to store without embeddings or drafts)")
    p.add_argument("--no-draft", action="store_true", help="with --checkpoint: embed but do not draft")
    p.add_argument("--username", help=_username_help("the server"))
    p.add_argument("--user", default="cli", help="name recorded in the audit trail (default: cli)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (for --checkpoint)")
    add_deid_options(p)
    p.set_defaults(handler=run_fetch)


def _username_help(server: str) -> str:
    return f"HTTP Basic user name for {server}; the password is read from ${PASSWORD_ENV} (never from the command line)"


def add_dicomweb_server_options(p: argparse.ArgumentParser) -> None:
    """`--dicomweb URL` and `--dicomweb-user NAME` (password: $MEDCM_DICOMWEB_PASSWORD), e.g. for `medcm serve`."""
    p.add_argument("--dicomweb", metavar="URL",
                   help="a PACS's DICOMweb root (e.g. http://pacs:8042/dicom-web): clinicians can fetch a study "
                        "from it by StudyInstanceUID in the app")
    p.add_argument("--dicomweb-user", metavar="NAME", help=_username_help("--dicomweb"))


def dicomweb_server_from_args(args: argparse.Namespace) -> DicomWebServer | None:
    """The server of `add_dicomweb_server_options` (None without --dicomweb), its password from the environment.

    Raises:
        ValueError: --dicomweb is not an http(s) URL, or --dicomweb-user without --dicomweb.
    """
    from medcm.engine.dicomweb import DicomWebServer

    if not args.dicomweb:
        if args.dicomweb_user:
            raise ValueError(f"--dicomweb-user {args.dicomweb_user!r}: expected --dicomweb URL with it")
        return None
    return DicomWebServer(args.dicomweb, args.dicomweb_user, os.environ.get(PASSWORD_ENV))


def run_fetch(args: argparse.Namespace) -> int:
    """Run `medcm fetch`: 0 when the study was stored, 1 (one `error:` line) when the pull failed.

    Raises:
        ValueError: the UID is not a UID, or de-identification settings that cannot be used.
    """
    from medcm.engine.dicomweb import DicomWebError, check_uid, pull_study

    study_uid = check_uid(args.study, "--study")
    engine = open_engine(args, need_model=False)
    try:
        pulled = pull_study(engine, args.url, study_uid, draft=bool(args.checkpoint) and not args.no_draft,
                            user=args.user, username=args.username, password=os.environ.get(PASSWORD_ENV))
    except DicomWebError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        engine.store.close()
    received = pulled.received
    for uid in received.studies:
        print(f"stored study {uid} (from {study_uid} at {args.url}): {received.added_instances} new instance(s), "
              f"{received.skipped_instances} already stored, {len(received.errors)} not stored"
              + (f"; {received.drafts[uid]}" if uid in received.drafts else ""))
    for error in received.errors:
        print(f"  not stored: {error}")
    if pulled.skipped_series:
        print(f"  not fetched (no images): {', '.join(pulled.skipped_series)}")
    return 0 if received.studies else 1
