"""The query verbs of `medcm`: `search` (similar cases, similar images, text search) and `draft` (an
unverified draft of a study's findings, kept in the store with `--save`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from medcm.cli.options import (
    add_deid_options,
    add_draft_option,
    add_query_options,
    open_engine,
)

__all__ = ["add_draft", "add_search"]


def add_search(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="find similar cases for a DICOM study, or images matching a phrase")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--image", help="a DICOM file, folder or zip: find similar cases")
    what.add_argument("--text", help='a phrase such as "pleural effusion": find matching images')
    p.add_argument("--mode", choices=["reports", "images"], default="reports",
                   help="with --image: similar cases by their reports (default) or by their images")
    p.add_argument("-k", type=int, default=5, help="number of results (default: 5)")
    add_query_options(p)
    p.set_defaults(handler=_run_search)


def _query_images(engine, path: str) -> list:
    from medcm.engine.ingest import read_images

    images, errors = read_images([path])
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    if not images:
        raise ValueError(f"{path}: no readable DICOM image to search with")
    return images


def _run_search(args: argparse.Namespace) -> int:
    engine = open_engine(args)
    filters = {"modality": args.modality, "body_part": args.body_part}
    if args.text:
        results = engine.search_text(args.text, args.k, filters)
    elif args.mode == "images":
        results = engine.similar_images(_query_images(engine, args.image), args.k, filters)
    else:
        results = engine.similar_cases(_query_images(engine, args.image), args.k, filters)
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in results], indent=2))
        return 0
    for rank, result in enumerate(results, start=1):
        print(f"{rank}. study {result.study_uid}  score {result.score:.3f}{_calibrated(result)}  "
              f"{result.modality} {result.body_part}".rstrip())
        report = getattr(result, "report", None)
        if report is None:  # an image match: show the report of its study, if it has one
            latest = engine.store.latest_report(result.study_uid)
            report = latest.text if latest else ""
        if report:
            print("   " + " ".join(report.split())[:300])
    if not results:
        print("no matching cases in the store")
    return 0


def add_draft(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("draft", help="draft findings for a DICOM study from similar cases (unverified)", description=(
        "Draft the findings of a study from the reports of its most similar stored cases. The draft is "
        "unverified: a clinician reviews, edits and signs it. Without --save nothing is stored: a file, folder "
        "or zip is read and searched with as it is. With --save the draft is kept in the store as the review "
        "app keeps it: the input is first ingested like an upload (de-identified unless --no-deid; a report.txt "
        "beside it is stored too), and the draft is saved over nothing or over an earlier machine draft only, "
        "never over a person's edit or a signed report. A stored study can be named by its StudyInstanceUID "
        "(as the review app's worklist shows it) instead of a path: it is drafted from the vectors stored "
        "at ingest (its stored files are read again only if it has none of this checkpoint)."))
    p.add_argument("study", metavar="STUDY", help="a DICOM file, folder or zip; or the StudyInstanceUID of a stored "
                   "study as the store holds it (de-identified studies get a new UID; --save prints it)")
    p.add_argument("--save", action="store_true", help="keep the draft in the store (ingesting a file, folder or "
                   "zip first); the worklist then shows the study as drafted")
    p.add_argument("--user", default="cli", help="with --save: name recorded in the audit trail (default: cli)")
    add_draft_option(p, "similarity")
    add_query_options(p)
    add_deid_options(p)
    p.set_defaults(handler=_run_draft)


def _run_draft(args: argparse.Namespace) -> int:
    from medcm.engine.reports import DRAFT_AUTHOR, save_machine_draft

    if not args.save:  # nothing is stored: no de-identification, so no key file is read or created
        del args.no_deid
    engine = open_engine(args)
    filters = {"modality": args.modality, "body_part": args.body_part}
    study_uid = _stored_study(engine, args.study)
    if study_uid is None and args.save:
        study_uid = _ingest_to_draft(engine, args.study, args.user)
    if study_uid is None:
        draft = engine.draft(_query_images(engine, args.study), filters)
    else:
        draft = engine.draft_for_study(study_uid, filters)
    saved = save_machine_draft(engine.store, study_uid, draft.text(), args.user) if args.save else None
    if args.json:
        out = dataclasses.asdict(draft)
        if args.save:
            out.update(study_uid=study_uid, saved_version=saved.version if saved else None)
        print(json.dumps(out, indent=2))
        return 0
    if draft.abstention is not None and draft.abstention.abstained:
        print(f"NO DRAFT: {draft.abstention.reason}.")
        print(f"  similar cases (weak matches): {', '.join(draft.source_cases) or 'none'}")
    else:
        print("DRAFT — UNVERIFIED: to be reviewed, edited and signed by a clinician.")
        print(draft.text() or "(no draft: the store has no similar case with a report)")
    for sentence in draft.sentences:
        sources = ", ".join(f"{s.case_id} ({s.sentence_score:.2f})" for s in sentence.sources)
        print(f"  [{sentence.section}] {sentence.text} <- {sources}")
    if saved is not None:
        print(f"saved as draft version {saved.version} of study {study_uid} (author {DRAFT_AUTHOR}, asked by "
              f"{args.user})")
    elif args.save:
        latest = engine.store.latest_report(study_uid)
        if not draft.text():
            reason = "there is no draft" if draft.abstention and draft.abstention.abstained else "the draft is empty"
        else:
            who = f"signed by {latest.signed_by}" if latest.status == "signed" else f"a draft by {latest.author}"
            reason = f"its report version {latest.version} is {who}, which a machine draft never replaces"
        print(f"not saved: study {study_uid}: {reason}")
    return 0


def _calibrated(result) -> str:
    """"  percentile 45, weak match": a similar case's calibrated score and mark, where it has them; else ""."""
    percentile = getattr(result, "percentile", None)
    parts = ([] if percentile is None else [f"percentile {percentile:.0f}"]) + (
        ["weak match"] if getattr(result, "weak", False) else [])
    return "  " + ", ".join(parts) if parts else ""


def _stored_study(engine, study: str) -> str | None:
    """`study` when it is no path on disk but the StudyInstanceUID of a stored study; else None."""
    if Path(study).exists():
        return None
    try:
        engine.store.get_study(study)
    except ValueError:  # StoreError: not stored
        return None
    return study


def _ingest_to_draft(engine, path: str, user: str) -> str:
    """Ingest `path` as an upload is ingested; the (stored) UID of its first study."""
    result = engine.ingest([path], user=user)
    for error in result.errors:
        print(f"error: {error}", file=sys.stderr)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if not result.studies:
        raise ValueError(f"{path}: no readable DICOM image to draft from")
    if len(result.studies) > 1:
        print(f"note: {path} holds {len(result.studies)} studies, all stored; drafting the first, "
              f"{result.studies[0]}", file=sys.stderr)
    return result.studies[0]
