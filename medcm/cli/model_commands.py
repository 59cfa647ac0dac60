"""The `medcm` verbs that work on data sets and checkpoints rather than the case store: synth, train, eval."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from medcm.cli.options import abstention_config, add_draft_option, draft_config
from medcm.config import QuestionConfig  # plain dataclasses: no torch


def add_train(sub: argparse._SubParsersAction) -> None:
    """Register `medcm train`: train the image–report dual encoder on a manifest or MedPix."""
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


def add_synth(sub: argparse._SubParsersAction) -> None:
    """Register `medcm synth`: write a synthetic paired data set."""
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


def add_eval(sub: argparse._SubParsersAction) -> None:
    """Register `medcm eval`: retrieval and draft quality against baselines."""
    p = sub.add_parser("eval", help="measure retrieval and draft quality against baselines", description=(
        "Index the pool cases, run every query case, and write FILE.json, FILE.md, FILE.samples.md (drafts "
        "beside their references, to read) and PNG plots beside it."))
    p.add_argument("--checkpoint", required=True, help="checkpoint or run folder (from medcm train)")
    p.add_argument("--pool-data", required=True, help="the remembered cases: a manifest or a MedPix folder")
    p.add_argument("--pool-split", help="use only this split of the pool data")
    p.add_argument("--query-data", required=True, help="the new cases: a manifest or a MedPix folder")
    p.add_argument("--query-split", help="use only this split of the query data")
    p.add_argument("--format", choices=["manifest", "medpix"],
                   help="data format (default: medpix for a folder, manifest for a file)")
    p.add_argument("--out", required=True, help="the JSON file to write (the .md, .samples.md and .png go beside it)")
    add_draft_option(p, "consensus")
    p.add_argument("--top-k-cases", type=int, help="cases a draft reads (default: the preset's)")
    p.add_argument("--max-findings", type=int, help="most FINDINGS sentences in a draft")
    p.add_argument("--anatomy-prior", choices=["checkpoint", "off"], default="checkpoint", help=(
        "rank image queries' candidates with the checkpoint's anatomy prior (modality and body region "
        "agreement; its config's anatomy_prior) or by cosine alone (default: checkpoint)"))
    p.add_argument("--modality-weight", type=float, help="override the prior's modality weight")
    p.add_argument("--region-weight", type=float, help="override the prior's region weight")
    p.add_argument("--question-weight", type=float, default=QuestionConfig.weight, metavar="W", help=(
        "where the query cases carry a History (MedPix), also measure retrieval and draft with it blended into "
        "the image query at this weight, 0 to 1 (default: %(default)s, the product's)"))
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
    prior = None
    if args.anatomy_prior == "checkpoint":
        weights = {k: v for k, v in {"modality_weight": args.modality_weight,
                                     "region_weight": args.region_weight}.items() if v is not None}
        prior = dataclasses.replace(checkpoint.config.anatomy_prior, **weights)
    results = evaluate(checkpoint, pool, queries, draft_config=dataclasses.replace(draft_config(args.draft), **overrides),
                       device=device, seed=args.seed, progress=not args.quiet, prior=prior,
                       abstention=abstention_config(args), question=QuestionConfig(weight=args.question_weight))
    for error in results["errors"]:
        print(f"error: {error}", file=sys.stderr)
    paths = write_results(results, args.out)
    i2r, draft = results["retrieval"]["image_to_report"], results["draft"]
    print(f"image→report R@1/5/10 {i2r['R@1']:.3f}/{i2r['R@5']:.3f}/{i2r['R@10']:.3f}; "
          f"region P@1 {_fmt_optional(results['retrieval']['region_P@1'])}; "
          f"draft BLEU-4 {draft['BLEU-4']:.4f} ROUGE-L {draft['ROUGE-L']:.4f}")
    if "history" in results:
        print(history_summary(results["history"]))
    if "abstention" in results["trust"]:
        print(abstention_summary(results["trust"]["abstention"]))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def history_summary(block: dict) -> str:
    """One line of `medcm.eval.history`'s block: i→r R@1/R@10 and draft BLEU-4 / ROUGE-L without and with History."""

    def arm(name: str) -> str:
        a = block[name]
        return (f"R@1/R@10 {a['image_to_report']['R@1']:.3f}/{a['image_to_report']['R@10']:.3f}, "
                f"BLEU-4 {a['draft']['BLEU-4']:.4f}, ROUGE-L {a['draft']['ROUGE-L']:.4f}")
    return (f"History ({block['queries_with_history']}/{block['queries']} queries, weight {block['weight']:g}): "
            f"without {arm('without')}; with {arm('with')}")


def abstention_summary(block: dict) -> str:
    """One line of `medcm.eval.abstention`'s block: abstained queries in distribution and leave-one-region-out."""
    inside, outside = block["in_distribution"], block.get("out_of_distribution")
    line = f"abstained: in distribution {inside['abstained']}/{inside['n']}"
    if not inside["calibrated"]:
        line += f" (pool too small to calibrate: {inside['calibrated_studies']} studies)"
    if outside is None:
        return line + "; leave one region out not measured (no region metadata)"
    return line + f"; leave one region out {outside['abstained']}/{outside['n']}"


def _fmt_optional(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
