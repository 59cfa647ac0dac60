"""The `medcm` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from medcm import __version__


def _add_train(sub: argparse._SubParsersAction) -> None:
    from medcm.config import NAMED_CONFIGS

    p = sub.add_parser("train", help="train the image–report dual encoder", description=(
        "Train images and reports into one shared space. Writes OUT/best (best validation recall) "
        "and OUT/last (resumable)."))
    p.add_argument("--data", required=True, help="the data: a JSONL manifest for --format manifest")
    p.add_argument("--format", default="manifest", choices=["manifest"], help="data format (default: manifest)")
    p.add_argument("--config", default="cpu-small", choices=sorted(NAMED_CONFIGS), help="named config (default: cpu-small)")
    p.add_argument("--out", required=True, help="run folder for the checkpoints")
    p.add_argument("--split", help="train on records of this split (default: all)")
    p.add_argument("--val-split", help="validate on this split (default: hold out a share of training cases)")
    p.add_argument("--epochs", type=int, help="override the config's number of epochs")
    p.add_argument("--batch-size", type=int, help="override the config's batch size")
    p.add_argument("--lr", type=float, help="override the config's learning rate")
    p.add_argument("--seed", type=int, help="override the config's seed")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: CUDA when present)")
    p.add_argument("--resume", help="continue a run from its folder (or its 'last' checkpoint)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from medcm.config import get_config, with_overrides
    from medcm.data import read_manifest, split_records
    from medcm.train import train

    config = with_overrides(get_config(args.config), epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    records = read_manifest(args.data)
    train_records, val_records = split_records(records, args.split, args.val_split, config.train.val_fraction, config.train.seed)
    result = train(config, train_records, val_records, args.out, resume=args.resume, device=args.device, progress=not args.quiet)
    best = result.best_metrics
    print(f"best checkpoint: {result.best_dir} (epoch {best.get('epoch')}, score {best.get('score', float('nan')):.3f})")
    return 0


def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write a small synthetic paired data set (DICOM + manifest)")
    p.add_argument("--out", required=True, help="folder to write into")
    p.add_argument("--train", type=int, default=660, help="training cases (default: 660)")
    p.add_argument("--dev", type=int, default=99, help="dev cases (default: 99)")
    p.add_argument("--size", type=int, default=128, help="image side in pixels (default: 128)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_run_synth)


def _run_synth(args: argparse.Namespace) -> int:
    from medcm.synthetic import write_dataset

    manifest = write_dataset(args.out, args.train, args.dev, args.seed, args.size)
    print(f"wrote {args.train + args.dev} cases; manifest: {manifest}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="medcm", description="medcm: similar cases and draft findings for DICOM studies.")
    parser.add_argument("--version", action="version", version=f"medcm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_synth(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: run a subcommand; a domain error prints one `error:` line and exits 1."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
