"""The `medcm` command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from medcm import __version__
from medcm.data.importer import add_import_parser


def _add_train(sub: argparse._SubParsersAction) -> None:
    from medcm.config import NAMED_CONFIGS

    p = sub.add_parser("train", help="train the image–report dual encoder", description=(
        "Train images and reports into one shared space. Writes OUT/best (best validation recall) "
        "and OUT/last (resumable). For several GPUs or machines launch it with "
        "`torchrun --nproc_per_node N -m medcm train ...`: --batch-size stays the global batch."))
    p.add_argument("--data", required=True,
                   help="a JSONL/CSV manifest (--format manifest) or a MedPix 2.0 folder (--format medpix)")
    p.add_argument("--format", default="manifest", choices=["manifest", "medpix"], help="data format (default: manifest)")
    p.add_argument("--config", default="cpu-small", choices=sorted(NAMED_CONFIGS), help="named config (default: cpu-small)")
    p.add_argument("--out", required=True, help="run folder for the checkpoints")
    p.add_argument("--split", help="train on records of this split (default: all)")
    p.add_argument("--val-split", help="validate on this split (default: hold out a share of training cases)")
    p.add_argument("--epochs", type=int, help="override the config's number of epochs")
    p.add_argument("--batch-size", type=int, help="override the config's batch size")
    p.add_argument("--accum-steps", type=int, metavar="N",
                   help="split each batch into N micro-batches: the same contrastive batch and gradients "
                        "at the memory of batch-size/N pairs (default: the config's, 1)")
    p.add_argument("--lr", type=float, help="override the config's learning rate")
    p.add_argument("--seed", type=int, help="override the config's seed")
    p.add_argument("--volume-encoder", choices=["3d", "2.5d", "none"],
                   help="how CT/MR/PT series are encoded: a 3D network, the 2D tower over sampled slices with "
                        "attention, or slice by slice as 2D images (default: the config's, 3d)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: CUDA when present)")
    p.add_argument("--resume", help="continue a run from its folder (or its 'last' checkpoint)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from medcm.config import get_config, with_overrides, with_volume_kind
    from medcm.data.manifest import read_dataset, split_records
    from medcm.model.distributed import context_from_env
    from medcm.model.train import train

    config = with_overrides(get_config(args.config), epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                            seed=args.seed, accum_steps=args.accum_steps)
    if args.volume_encoder:
        config = with_volume_kind(config, args.volume_encoder)
    records = read_dataset(args.data, args.format)
    train_records, val_records = split_records(records, args.split, args.val_split, config.train.val_fraction,
                                               config.train.seed)
    result = train(config, train_records, val_records, args.out, resume=args.resume, device=args.device,
                   progress=not args.quiet)
    if not context_from_env().is_main:  # under torchrun only rank 0 reports
        return 0
    best = result.best_metrics
    if "image_to_text" in best:
        print(f"best checkpoint: {result.best_dir} (epoch {best.get('epoch')}, validation mean recall {best['score']:.3f})")
    else:
        print(f"checkpoint: {result.best_dir} (epoch {best.get('epoch')}; no validation cases, so the last epoch)")
    return 0


def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write a small synthetic paired data set (DICOM + manifest)")
    p.add_argument("--out", required=True, help="folder to write into")
    p.add_argument("--train", type=int, default=660, help="training cases (default: 660)")
    p.add_argument("--dev", type=int, default=99, help="dev cases (default: 99)")
    p.add_argument("--size", type=int, default=128, help="image side in pixels (default: 128)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--volumes", type=int, metavar="DEPTH",
                   help="write chest CT series of DEPTH slices (nodule, effusion, rib fracture or normal) instead of "
                        "single images")
    p.set_defaults(handler=_run_synth)


def _run_synth(args: argparse.Namespace) -> int:
    from medcm.data.synthetic_radiographs import write_dataset
    from medcm.data.synthetic_ct import write_volume_dataset

    if args.volumes:
        manifest = write_volume_dataset(args.out, args.train, args.dev, args.seed, depth=args.volumes, size=args.size)
    else:
        manifest = write_dataset(args.out, args.train, args.dev, args.seed, args.size)
    print(f"wrote {args.train + args.dev} cases; manifest: {manifest}")
    return 0


def _db_url(value: str) -> str:
    """A SQLAlchemy URL as given, or a plain file path as a SQLite URL."""
    return value if "://" in value else f"sqlite:///{Path(value).expanduser().resolve()}"


def _open_engine(args: argparse.Namespace, need_model: bool = True):
    # The command line is a composition root: it alone wires the library to the case store.
    from db.store import CaseStore
    from medcm.dicom.deid_copies import deid_config_from_args
    from medcm.engine.facade import Engine

    checkpoint = getattr(args, "checkpoint", None)
    if need_model and not checkpoint:
        raise ValueError("--checkpoint CKPT_DIR is required (a folder written by medcm train)")
    url = _db_url(args.db)
    deid = deid_config_from_args(args, url) if hasattr(args, "no_deid") else None  # commands that store files
    return Engine(CaseStore(url), checkpoint=checkpoint, device=getattr(args, "device", None),
                  draft_config=_draft_config(getattr(args, "draft", None)), deid=deid,
                  files_dir=getattr(args, "files", None), index_backend=getattr(args, "index_backend", "exact"))


DRAFT_CHOICES = ("similarity", "consensus")


def _add_draft_option(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--draft", choices=DRAFT_CHOICES, default=default, help=(
        f"drafting preset (default: {default}): 'similarity' keeps the few sentences of the 5 nearest cases "
        "that best match the image; 'consensus' composes what most of the 40 nearest cases agree on"))


def _draft_config(name: str | None):
    from medcm.report.draft import DRAFT_PRESETS

    return DRAFT_PRESETS[name or "similarity"]


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
    _add_deid_options(p)
    p.set_defaults(handler=_run_ingest)


def _add_deid_options(p: argparse.ArgumentParser, files_option: bool = True) -> None:
    from medcm.dicom.deid_copies import add_deid_options

    add_deid_options(p, files_option)


def _run_ingest(args: argparse.Namespace) -> int:
    reports, default_report = _read_report_option(args.report)
    engine = _open_engine(args, need_model=False)
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
    engine = _open_engine(args)
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


def _add_query_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", required=True, help="database URL, or a file path for SQLite")
    p.add_argument("--checkpoint", required=True, help="the model the store was embedded with")
    p.add_argument("--modality", help="only cases of this modality (e.g. CT)")
    p.add_argument("--body-part", help="only cases of this body part (e.g. CHEST)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--device", help="cpu, cuda or cuda:N")
    _add_index_option(p)


def _add_index_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index-backend", choices=["exact", "faiss", "pgvector"], default="exact", help=(
        "vector search: 'exact' (default; chunked, bounded memory), 'faiss' (an IndexFlatIP built in memory "
        "from the saved index, the same answers; needs pip install 'medcm[faiss]') or 'pgvector' (a PostgreSQL "
        "--db with the pgvector extension searches its own vectors; enabled on first use)"))


def _add_search(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="find similar cases for a DICOM study, or images matching a phrase")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--image", help="a DICOM file, folder or zip: find similar cases")
    what.add_argument("--text", help='a phrase such as "pleural effusion": find matching images')
    p.add_argument("--mode", choices=["reports", "images"], default="reports",
                   help="with --image: similar cases by their reports (default) or by their images")
    p.add_argument("-k", type=int, default=5, help="number of results (default: 5)")
    _add_query_options(p)
    p.set_defaults(handler=_run_search)


def _query_images(engine, path: str) -> list:
    from medcm.engine.facade import read_images

    images, errors = read_images([path])
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    if not images:
        raise ValueError(f"{path}: no readable DICOM image to search with")
    return images


def _run_search(args: argparse.Namespace) -> int:
    engine = _open_engine(args)
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
        line = f"{rank}. study {result.study_uid}  score {result.score:.3f}  {result.modality} {result.body_part}".rstrip()
        print(line)
        report = getattr(result, "report", None)
        if report is None:  # an image match: show the report of its study, if it has one
            latest = engine.store.latest_report(result.study_uid)
            report = latest.text if latest else ""
        if report:
            print("   " + " ".join(report.split())[:300])
    if not results:
        print("no matching cases in the store")
    return 0


def _add_draft(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("draft", help="draft findings for a DICOM study from similar cases (unverified)")
    p.add_argument("dicom_path", help="a DICOM file, folder or zip")
    _add_draft_option(p, "similarity")
    _add_query_options(p)
    p.set_defaults(handler=_run_draft)


def _run_draft(args: argparse.Namespace) -> int:
    engine = _open_engine(args)
    draft = engine.draft(_query_images(engine, args.dicom_path), {"modality": args.modality, "body_part": args.body_part})
    if args.json:
        print(json.dumps(dataclasses.asdict(draft), indent=2))
        return 0
    print("DRAFT — UNVERIFIED: to be reviewed, edited and signed by a clinician.")
    print(draft.text() or "(no draft: the store has no similar case with a report)")
    for sentence in draft.sentences:
        sources = ", ".join(f"{s.case_id} ({s.sentence_score:.2f})" for s in sentence.sources)
        print(f"  [{sentence.section}] {sentence.text} <- {sources}")
    return 0


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="open the review app in the browser")
    p.add_argument("--db", required=True, help="database URL, or a file path for SQLite")
    p.add_argument("--checkpoint", required=True, help="the model the store was embedded with")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    _add_draft_option(p, "similarity")
    p.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    p.add_argument("--device", help="cpu, cuda or cuda:N")
    _add_index_option(p)
    _add_deid_options(p)
    p.set_defaults(handler=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from medcm.cli.serve import serve

    print(f"medcm review app: http://{args.host}:{args.port}  (Ctrl+C stops it)")
    from medcm.dicom.deid_copies import deid_config_from_args

    url = _db_url(args.db)
    serve(url, args.checkpoint, args.host, args.port, device=args.device, draft_config=_draft_config(args.draft),
          deid=deid_config_from_args(args, url), files_dir=args.files, index_backend=args.index_backend)
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
    name, password, login_file = demo_login(args.dir, db_url)
    print(f"medcm demo (synthetic data): http://127.0.0.1:{args.port}  (Ctrl+C stops it)")
    print(f"log in as {name} with password {password} (kept in {login_file})")
    print(f"try uploading a held-out study, e.g. {example}")
    serve(db_url, run, "127.0.0.1", args.port, demo_notice=DEMO_NOTICE.format(example=example),
          deid=demo_deid(args.dir))
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="measure retrieval and draft quality against baselines", description=(
        "Index the pool cases, run every query case, and write FILE.json, FILE.md and PNG plots beside it."))
    p.add_argument("--checkpoint", required=True, help="checkpoint or run folder (from medcm train)")
    p.add_argument("--pool-data", required=True, help="the remembered cases: a manifest or a MedPix folder")
    p.add_argument("--pool-split", help="use only this split of the pool data")
    p.add_argument("--query-data", required=True, help="the new cases: a manifest or a MedPix folder")
    p.add_argument("--query-split", help="use only this split of the query data")
    p.add_argument("--format", choices=["manifest", "medpix"],
                   help="data format (default: medpix for a folder, manifest for a file)")
    p.add_argument("--out", required=True, help="the JSON file to write (the .md and .png go beside it)")
    _add_draft_option(p, "consensus")
    p.add_argument("--top-k-cases", type=int, help="cases a draft reads (default: the preset's)")
    p.add_argument("--max-findings", type=int, help="most FINDINGS sentences in a draft")
    p.add_argument("--seed", type=int, default=0, help="seed of the random baselines (default: 0)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: CUDA when present)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_run_eval)


def _eval_records(path: str, data_format: str | None, split: str | None, option: str) -> list:
    from medcm.data.manifest import read_dataset

    data_format = data_format or ("medpix" if Path(path).is_dir() else "manifest")
    records = read_dataset(path, data_format)
    if split is None:
        return records
    chosen = [r for r in records if r.split == split]
    if not chosen:
        found = sorted({str(r.split) for r in records})
        raise ValueError(f"{option} {split!r}: no cases of that split in {path}; it has splits {found}")
    return chosen


def _run_eval(args: argparse.Namespace) -> int:
    from medcm.checkpoint import load_checkpoint
    from medcm.eval.evaluate import evaluate
    from medcm.eval.report import write_results
    from medcm.runtime import select_device

    pool = _eval_records(args.pool_data, args.format, args.pool_split, "--pool-split")
    queries = _eval_records(args.query_data, args.format, args.query_split, "--query-split")
    overrides = {k: v for k, v in {"top_k_cases": args.top_k_cases, "max_findings": args.max_findings}.items()
                 if v is not None}
    device = select_device(args.device)
    checkpoint = load_checkpoint(args.checkpoint, device)
    results = evaluate(checkpoint, pool, queries, draft_config=dataclasses.replace(_draft_config(args.draft), **overrides),
                       device=device, seed=args.seed, progress=not args.quiet)
    for error in results["errors"]:
        print(f"error: {error}", file=sys.stderr)
    paths = write_results(results, args.out)
    i2r, draft = results["retrieval"]["image_to_report"], results["draft"]
    print(f"image→report R@1/5/10 {i2r['R@1']:.3f}/{i2r['R@5']:.3f}/{i2r['R@10']:.3f}; "
          f"region P@1 {_fmt_optional(results['retrieval']['region_P@1'])}; "
          f"draft BLEU-4 {draft['BLEU-4']:.4f} ROUGE-L {draft['ROUGE-L']:.4f}")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _fmt_optional(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


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
    from medcm.dicom.sr import export_report, pick_report, save_export

    with CaseStore(_db_url(args.db)) as store:
        study = store.get_study(args.study_uid)
        report = pick_report(args.study_uid, store.report_versions(args.study_uid), args.version, args.signed_only)
        path = save_export(export_report(study, report, args.format), args.out)
        store.log_event("export", args.user, args.study_uid,
                        {"format": args.format, "version": report.version, "report_id": report.id})
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

    with CaseStore(_db_url(args.db)) as store:
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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="medcm", description="medcm: similar cases and draft findings for DICOM studies.")
    parser.add_argument("--version", action="version", version=f"medcm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_synth(sub)
    _add_ingest(sub)
    _add_embed(sub)
    add_import_parser(sub)
    _add_search(sub)
    _add_draft(sub)
    _add_serve(sub)
    _add_demo(sub)
    _add_eval(sub)
    _add_users(sub)
    _add_export(sub)
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
