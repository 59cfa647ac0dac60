"""The `medcm` command line: `build_parser`, `main` and the verbs over the case store.

Here: ingest, embed, search, draft, serve, demo, export, users, audit. The verbs on data sets and
checkpoints (synth, train, eval) are in `medcm.cli.model_commands`, `medcm import` in
`medcm.cli.import_command`, `medcm listen` (the DICOM receiver) in `medcm.cli.listen_command`, `medcm fetch`
(a DICOMweb pull) in `medcm.cli.fetch_command`, and the options several verbs share (and opening an engine
from them) in `medcm.cli.options`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from medcm import __version__
from medcm.cli.import_command import add_import_parser
from medcm.cli.fetch_command import add_dicomweb_server_options, add_fetch_parser, dicomweb_server_from_args
from medcm.cli.listen_command import add_listen_parser
from medcm.cli.model_commands import add_eval, add_synth, add_train
from medcm.cli.outbox_command import add_outbox_parser, add_send_to_option, outbox_from_args
from medcm.cli.query_commands import add_draft, add_search
from medcm.cli.options import (
    abstention_config,
    add_deid_options,
    add_draft_option,
    add_index_option,
    db_url,
    deid_config_from_args,
    draft_config,
    open_engine,
)


def _read_report_option(path: str | None) -> tuple[dict[str, str], str | None]:
    """--report: a .jsonl manifest of {"study_uid", "report"} lines, or one text file for every study."""
    if path is None:
        return {}, None
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{file}: report file not found")
    if file.suffix.lower() != ".jsonl":
        return {}, file.read_text(encoding="utf-8")
    reports = {}
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            reports[str(item["study_uid"])] = str(item["report"])
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{file}:{number}: expected {{\"study_uid\": ..., \"report\": ...}} ({err})") from err
    return reports, None


def _add_ingest(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ingest", help="store DICOM studies (and their reports) in the case store")
    p.add_argument("paths", nargs="+", help="DICOM files, folders or .zip archives")
    p.add_argument("--db", required=True, help="database URL, or a file path for SQLite")
    p.add_argument("--checkpoint", help="model to embed images and reports with (omit to store without embeddings)")
    p.add_argument("--report", help="a report text file for the study, or a .jsonl manifest of study_uid/report lines "
                   "(default: a report.txt beside each study's files)")
    p.add_argument("--user", default="cli", help="name recorded in the audit trail")
    p.add_argument("--device", help="cpu, cuda or cuda:N")
    add_deid_options(p)
    p.set_defaults(handler=_run_ingest)


def _run_ingest(args: argparse.Namespace) -> int:
    reports, default_report = _read_report_option(args.report)
    engine = open_engine(args, need_model=False)
    result = engine.ingest(args.paths, reports, default_report, user=args.user)
    for error in result.errors:
        print(f"error: {error}", file=sys.stderr)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"stored {result.added_instances} new instance(s) in {len(result.studies)} study(ies); "
          f"{result.skipped_instances} already stored; {result.added_reports} report(s); "
          f"{result.added_embeddings} embedding(s); {len(result.errors)} file(s) failed")
    if result.burned_in:
        print(f"review: {len(result.burned_in)} stored image(s) declare burned-in annotation (flagged)")
    return 1 if result.errors else 0


def _add_embed(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="embed the stored studies that lack vectors of a checkpoint (resumable)", description=(
        "Embed the case store's studies in batches with a checkpoint; each batch is one transaction, so a rerun "
        "after an interruption goes on where it stopped. A new checkpoint embeds everything again under its own "
        "model id. For several GPUs: `torchrun --nproc_per_node N -m medcm embed ...` (each rank takes a share)."))
    p.add_argument("--db", required=True, help="database URL, or a file path for SQLite")
    p.add_argument("--checkpoint", required=True, help="the model to embed with (a folder written by medcm train)")
    p.add_argument("--batch-studies", type=int, default=32, help="studies per batch and transaction (default: 32)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: CUDA when present; cuda:LOCAL_RANK under torchrun)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--pgvector-hnsw", action="store_true", help=(
        "PostgreSQL with pgvector: then build HNSW indexes over this model's vectors, so that "
        "--index-backend pgvector searches them approximately (fast on millions) instead of exactly"))
    p.set_defaults(handler=_run_embed)


def _run_embed(args: argparse.Namespace) -> int:
    from medcm.model.distributed import context_from_env

    ctx = context_from_env()
    if ctx.enabled:  # under torchrun: one GPU per rank, no process group (ranks never talk)
        from medcm.model.distributed import rank_device
        from medcm.runtime import select_device

        args.device = str(rank_device(select_device(args.device), ctx))
    engine = open_engine(args)
    if args.pgvector_hnsw:
        engine.store.enable_pgvector()  # before embedding: fails at once on SQLite or without the extension
    summary = engine.embed_archive(args.batch_studies, ctx.rank, ctx.world_size, progress=not args.quiet)
    for line in summary.failed:
        print(f"error: {line}", file=sys.stderr)
    if ctx.is_main or summary.failed:
        rank = f" (rank {ctx.rank} of {ctx.world_size})" if ctx.enabled else ""
        print(f"embedded {summary.studies} study(ies){rank} with model {summary.model_id}: "
              f"{summary.image_embeddings} image and {summary.report_embeddings} report embedding(s) in "
              f"{summary.seconds:.1f} s; {len(summary.failed)} study(ies) failed")
    if args.pgvector_hnsw and ctx.is_main:  # the other ranks' later writes join the index as they come
        for kind in ("image", "report"):
            if engine.store.count_embeddings(kind, summary.model_id):
                dim = engine.store.create_pgvector_hnsw(kind, summary.model_id)
                print(f"HNSW index over the {kind} vectors of model {summary.model_id} (dimension {dim})")
    return 1 if summary.failed else 0


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="open the review app in the browser")
    p.add_argument("--db", required=True, help="database URL, or a file path for SQLite")
    p.add_argument("--checkpoint", required=True, help="the model the store was embedded with")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    add_draft_option(p, "similarity")
    p.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    p.add_argument("--device", help="cpu, cuda or cuda:N")
    add_index_option(p)
    add_deid_options(p)
    add_send_to_option(p)
    add_dicomweb_server_options(p)
    p.set_defaults(handler=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from medcm.cli.serve import serve

    print(f"medcm review app: http://{args.host}:{args.port}  (Ctrl+C stops it)")
    url = db_url(args.db)
    serve(url, args.checkpoint, args.host, args.port, device=args.device, draft_config=draft_config(args.draft),
          deid=deid_config_from_args(args, url), files_dir=args.files, index_backend=args.index_backend,
          abstention=abstention_config(args), outbox=outbox_from_args(args, url),
          dicomweb=dicomweb_server_from_args(args))
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="build the synthetic demo once (a few minutes), then open the review app")
    p.add_argument("--dir", default=".medcm-demo", help="where the demo is built and cached (default: .medcm-demo)")
    p.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    p.add_argument("--rebuild", action="store_true", help="rebuild the demo even if a cached one exists")
    p.add_argument("--build-only", action="store_true", help="build (or check) the demo without serving it")
    p.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from medcm.cli.serve import (
        DEMO_NOTICE,
        demo_deid,
        demo_held_out,
        demo_login,
        prepare_demo,
        serve,
    )

    db_url, run = prepare_demo(args.dir, rebuild=args.rebuild)
    if args.build_only:
        print(f"demo ready: --db {db_url} --checkpoint {run}")
        return 0
    example = demo_held_out(args.dir)[0]
    name, _, login_file = demo_login(args.dir, db_url)
    print(f"medcm demo (synthetic data): http://127.0.0.1:{args.port}  (Ctrl+C stops it)")
    # Not the password itself: the console is often a server log that others read (issue 18).
    print(f"log in as {name}; the password is in {login_file} (readable by you only)")
    print(f"try uploading a held-out study, e.g. {example}")
    serve(db_url, run, "127.0.0.1", args.port, demo_notice=DEMO_NOTICE.format(example=example),
          deid=demo_deid(args.dir))
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    from medcm.dicom.sr import EXPORT_FORMATS

    p = sub.add_parser("export", help="export a study's report as DICOM SR, text or JSON", description=(
        "Write a report version of a stored study to a file: a DICOM Basic Text SR in the study "
        "(VERIFIED when signed, UNVERIFIED for a draft), plain text or JSON. Records an audit event."))
    p.add_argument("study_uid", help="StudyInstanceUID of a stored study")
    p.add_argument("--db", required=True, help="database URL, or a file path for SQLite")
    p.add_argument("--format", required=True, choices=EXPORT_FORMATS, help="sr (DICOM), txt or json")
    p.add_argument("--out", required=True, help="file to write (replaced atomically)")
    p.add_argument("--version", type=int, help="report version to export (default: the newest)")
    p.add_argument("--signed-only", action="store_true", help="export only a signed version (default: any)")
    p.add_argument("--user", default="cli", help="name recorded in the audit trail")
    p.set_defaults(handler=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from db.store import CaseStore
    from medcm.engine.reports import export_study_report

    with CaseStore(db_url(args.db)) as store:
        export = export_study_report(store, args.study_uid, args.format, args.user, out=args.out,
                                     version=args.version, signed_only=args.signed_only)
    path, report = export.path, export.report
    state = f"signed by {report.signed_by}" if report.status == "signed" else "UNVERIFIED draft"
    print(f"wrote {path} ({args.format}; study {args.study_uid}, report version {report.version}, {state})")
    return 0


def _add_users(sub: argparse._SubParsersAction) -> None:
    from db.models import USER_ROLES

    p = sub.add_parser("users", help="manage the review app's accounts (passwords are read from stdin)",
                       description="Accounts of the review app. Roles: viewer (reads), clinician (also drafts, "
                       "edits, signs), admin (reads, sees the audit trail). Accounts are disabled, never deleted.")
    actions = p.add_subparsers(dest="action", required=True)
    for action, text in (("add", "create an account"), ("list", "list the accounts"),
                         ("passwd", "set a new password"), ("role", "change an account's role"),
                         ("disable", "stop an account from logging in"), ("enable", "let it log in again")):
        a = actions.add_parser(action, help=text)
        if action != "list":
            a.add_argument("name", help="account name: letters, digits, '.', '_', '@' or '-'")
        if action in ("add", "role"):
            a.add_argument("--role", required=True, choices=USER_ROLES)
        a.add_argument("--db", required=True, help="database URL, or a file path for SQLite")
    p.set_defaults(handler=_run_users)


def _read_password(confirm: bool = True) -> str:
    """A password from stdin: typed twice (hidden) on a terminal, else the first line of the input."""
    import getpass

    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if confirm and getpass.getpass("again: ") != password:
            raise ValueError("password: the two entries differ; expected the same password twice")
        return password
    return sys.stdin.readline().rstrip("\r\n")


def _run_users(args: argparse.Namespace) -> int:
    from db.store import CaseStore

    with CaseStore(db_url(args.db)) as store:
        if args.action == "list":
            for user in store.users():
                state = "  (disabled)" if user.disabled else ""
                print(f"{user.name}\t{user.role}\t{user.created_at:%Y-%m-%d %H:%M} UTC{state}")
            return 0
        if args.action == "add":
            store.add_user(args.name, args.role, _read_password(), actor="cli")
        elif args.action == "passwd":
            store.set_password(args.name, _read_password(), actor="cli")
        elif args.action == "role":
            store.set_role(args.name, args.role, actor="cli")
        else:
            store.set_disabled(args.name, args.action == "disable", actor="cli")
    print(f"user {args.name}: {args.action} done")
    return 0


def _add_audit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="check the audit trail", description="The audit trail's hash chain: "
                       "`verify` checks every event's hash and link, the chain's head and the database triggers.")
    actions = p.add_subparsers(dest="action", required=True)
    a = actions.add_parser("verify", help="check that no audit event was changed, inserted or deleted (exit 1 if so)")
    a.add_argument("--db", required=True, help="database URL, or a file path for SQLite")
    a.add_argument("--audit-key", help="the trail's key file (default: beside a SQLite database, cases.db → "
                   "cases.db.audit-key; other databases without one have an unkeyed chain)")
    p.set_defaults(handler=_run_audit)


def _run_audit(args: argparse.Namespace) -> int:
    from db.store import CaseStore
    from medcm.paths import sqlite_file

    url = db_url(args.db)
    file = sqlite_file(url)
    if file is not None and not file.is_file():  # opening would create an empty store, "intact" and misleading
        raise FileNotFoundError(f"{file}: no case store there; expected an existing database")
    with CaseStore(url, audit_key_file=args.audit_key) as store:
        report = store.verify_audit()
    if report.intact:
        print(report.summary())
        return 0
    for problem in report.problems:
        print(problem)
    return 1


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="medcm", description="medcm: similar cases and draft findings for DICOM studies.")
    parser.add_argument("--version", action="version", version=f"medcm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train(sub)
    add_synth(sub)
    _add_ingest(sub)
    _add_embed(sub)
    add_import_parser(sub)
    add_search(sub)
    add_draft(sub)
    _add_serve(sub)
    add_listen_parser(sub)
    add_outbox_parser(sub)
    add_fetch_parser(sub)
    _add_demo(sub)
    add_eval(sub)
    _add_users(sub)
    _add_export(sub)
    _add_audit(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: run a subcommand; a domain error prints one `error:` line and exits 1."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("httpx", "httpcore", "urllib3"):  # Gradio's self-checks log every local request
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
