"""`medcm import`: put a manifest's cases or a MedPix 2.0 folder into the case store (see `medcm.data.importer`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from medcm.cli.options import add_deid_options, db_url, folder_beside_db, open_engine

if TYPE_CHECKING:  # the real imports are inside functions: `medcm --help` must not load torch
    from medcm.data.manifest import ManifestRecord


def add_import_parser(sub: argparse._SubParsersAction) -> None:
    """Register `medcm import {manifest,medpix} PATH --db URL ...`."""
    p = sub.add_parser("import", help="put a manifest's cases or a MedPix 2.0 folder into the case store", description=(
        "Store every case's images and report. DICOM files are stored as they are; PNG/JPEG images are "
        "converted to DICOM under --files. Importing the same data again adds nothing."))
    p.add_argument("format", choices=["manifest", "medpix"], help="a JSONL/CSV manifest, or a MedPix 2.0 folder")
    p.add_argument("path", help="the manifest file or the MedPix folder")
    p.add_argument("--db", required=True, help="database URL, or a file path for SQLite")
    p.add_argument("--checkpoint", help="model to embed images and reports with (omit to store without embeddings)")
    p.add_argument("--files", help="folder for the stored images: de-identified copies, or converted PNG/JPEG "
                   "with --no-deid (default: beside a SQLite file, cases.db → cases.db.files/; required for "
                   "other databases)")
    p.add_argument("--split", help="import only the cases of this split (default: all)")
    p.add_argument("--user", default="import", help="name recorded in the audit trail (default: import)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (for --checkpoint)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_deid_options(p, files_option=False)  # --files above also holds the de-identified copies
    p.set_defaults(handler=run_import)


def run_import(args: argparse.Namespace) -> int:
    """Run `medcm import`: print errors on stderr and a one-line summary; 1 when no case was stored.

    Raises:
        ValueError: no --files for a database that is not a SQLite file, or an empty --split.
        FileNotFoundError: the manifest or folder does not exist.
    """
    from medcm.data.importer import import_records
    from medcm.data.manifest import read_dataset

    files_dir = files_dir_option(db_url(args.db), args.files)
    records = select_split(read_dataset(args.path, args.format), args.split)
    engine = open_engine(args, need_model=False)
    result = import_records(engine, records, files_dir, user=args.user, progress=not args.quiet)
    for error in result.errors:
        print(f"error: {error}", file=sys.stderr)
    print(f"imported {result.cases} of {len(records)} case(s) into {result.studies} study(ies): "
          f"{result.added_instances} new instance(s), {result.skipped_instances} already stored; "
          f"{result.added_reports} report(s); {result.added_embeddings} embedding(s); {len(result.errors)} error(s)")
    return 0 if result.cases else 1


def files_dir_option(url: str, files: str | None) -> Path:
    """`--files` if given, else `<db file>.files` beside a SQLite database file (`folder_beside_db`)."""
    return folder_beside_db(url, files, ".files", "--files", "the converted PNG/JPEG images")


def select_split(records: Sequence[ManifestRecord], split: str | None) -> list[ManifestRecord]:
    """The records of `split` (all of them for None).

    Raises:
        ValueError: the split has no records; the message lists the splits the data has.
    """
    chosen = [record for record in records if split is None or record.split == split]
    if not chosen:
        found = sorted({str(record.split) for record in records})
        raise ValueError(f"--split: got {split!r}, which has no cases; expected one of {found}")
    return chosen
