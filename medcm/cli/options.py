"""Options shared by several `medcm` verbs, how they are read, and how they open an engine over the store."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from medcm.config import AbstentionConfig  # plain dataclasses: no torch

if TYPE_CHECKING:  # the real imports are inside functions: `medcm --help` must not load torch
    from medcm.dicom.deid import DeidConfig
    from medcm.engine.facade import Engine
    from medcm.report.draft import DraftConfig

log = logging.getLogger(__name__)

DRAFT_CHOICES = ("similarity", "consensus")


def db_url(value: str) -> str:
    """A SQLAlchemy URL as given, or a plain file path as a SQLite URL."""
    return value if "://" in value else f"sqlite:///{Path(value).expanduser().resolve()}"


def open_engine(args: argparse.Namespace, need_model: bool = True) -> Engine:
    """The engine over the `--db` store that a verb's parsed options ask for.

    Reads `--db` and, where the verb has them, `--checkpoint`, `--device`, `--draft`, `--abstain-below`, `--files`,
    `--index-backend`, `--anatomy-prior` and the de-identification options (`add_deid_options`).

    Args:
        args: the parsed command line.
        need_model: the verb embeds or searches, so `--checkpoint` is required.

    Raises:
        ValueError: no `--checkpoint` where one is needed, or de-identification settings that cannot be used.
    """
    # The command line is a composition root: it alone wires the library to the case store.
    from db.store import CaseStore
    from medcm.config import AnatomyPriorConfig
    from medcm.engine.facade import Engine

    checkpoint = getattr(args, "checkpoint", None)
    if need_model and not checkpoint:
        raise ValueError("--checkpoint CKPT_DIR is required (a folder written by medcm train)")
    url = db_url(args.db)
    deid = deid_config_from_args(args, url) if hasattr(args, "no_deid") else None  # commands that store files
    prior = AnatomyPriorConfig() if getattr(args, "anatomy_prior", "checkpoint") == "off" else None  # zero weights: off
    return Engine(CaseStore(url), checkpoint=checkpoint, device=getattr(args, "device", None),
                  draft_config=draft_config(getattr(args, "draft", None)), deid=deid,
                  files_dir=getattr(args, "files", None), index_backend=getattr(args, "index_backend", "exact"),
                  anatomy_prior=prior, abstention=abstention_config(args))


def add_draft_option(p: argparse.ArgumentParser, default: str) -> None:
    """Register `--draft {similarity,consensus}` with `default` as its default."""
    p.add_argument("--draft", choices=DRAFT_CHOICES, default=default, help=(
        f"drafting preset (default: {default}): 'similarity' keeps the few sentences of the 5 nearest cases "
        "that best match the image; 'consensus' composes what most of the 40 nearest cases agree on"))
    p.add_argument("--abstain-below", type=_percentile, default=AbstentionConfig.below_percentile, metavar="PCT",
                   help=("no draft when the study's similarity to its nearest reports is below this percentile of "
                         "the archive's own studies' (default: %(default)s; 0 turns this rule off)"))


def abstention_config(args: argparse.Namespace) -> AbstentionConfig:
    """The abstention settings a verb's `--abstain-below` asks for (the defaults where the verb has none)."""
    below = getattr(args, "abstain_below", None)
    return AbstentionConfig() if below is None else AbstentionConfig(below_percentile=below)


def _percentile(value: str) -> float:
    """An argparse type: a number from 0 to 100."""
    number = float(value)
    if not 0.0 <= number <= 100.0:
        raise argparse.ArgumentTypeError(f"expected a percentile from 0 to 100, got {value}")
    return number


def draft_config(name: str | None) -> DraftConfig:
    """The drafting preset called `name` (one of `DRAFT_CHOICES`; None: "similarity")."""
    from medcm.report.draft import DRAFT_PRESETS

    return DRAFT_PRESETS[name or "similarity"]


def add_query_options(p: argparse.ArgumentParser) -> None:
    """Register the options of a verb that searches the store: `--db`, `--checkpoint`, filters, output, backend,
    anatomy prior."""
    p.add_argument("--db", required=True, help="database URL, or a file path for SQLite")
    p.add_argument("--checkpoint", required=True, help="the model the store was embedded with")
    p.add_argument("--modality", help="only cases of this modality (e.g. CT)")
    p.add_argument("--body-part", help="only cases of this body part (e.g. CHEST)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--device", help="cpu, cuda or cuda:N")
    p.add_argument("--anatomy-prior", choices=["checkpoint", "off"], default="checkpoint", help=(
        "how an image query ranks what it finds: 'checkpoint' (default) by cosine plus the checkpoint's anatomy "
        "prior (shared modality and body region, as medcm eval measures it; none in older checkpoints), "
        "'off' by cosine alone"))
    add_index_option(p)


def add_index_option(p: argparse.ArgumentParser) -> None:
    """Register `--index-backend {exact,faiss,pgvector}` (default: exact)."""
    p.add_argument("--index-backend", choices=["exact", "faiss", "pgvector"], default="exact", help=(
        "vector search: 'exact' (default; chunked, bounded memory), 'faiss' (an IndexFlatIP built in memory "
        "from the saved index, the same answers; needs pip install 'medcm[faiss]') or 'pgvector' (a PostgreSQL "
        "--db with the pgvector extension searches its own vectors; enabled on first use)"))


def add_deid_options(parser: argparse.ArgumentParser, files_option: bool = True) -> None:
    """Register `--no-deid`, `--deid-key`, `--burned-in` (and `--files`) on a command that stores files."""
    group = parser.add_argument_group("de-identification (on by default: PS3.15 Basic Profile)")
    group.add_argument("--no-deid", action="store_true",
                       help="store files and reports as they are; only for data that is already de-identified")
    group.add_argument("--deid-key", help="file holding the site's secret de-identification key (hex); default: "
                       "beside a SQLite database (cases.db → cases.db.deid-key), created on first use; keep it "
                       "out of backups of the store")
    group.add_argument("--burned-in", choices=("refuse", "flag"), default="refuse",
                       help="images declaring burned-in annotation: refuse them (default) or store them flagged "
                       "for review")
    if files_option:
        group.add_argument("--files", help="folder for the de-identified copies (default: beside a SQLite "
                           "database, cases.db → cases.db.files/; required for other databases)")


def deid_config_from_args(args: argparse.Namespace, url: str) -> DeidConfig | None:
    """The `DeidConfig` the options of `add_deid_options` ask for; None with `--no-deid`.

    Args:
        args: the parsed command line (options it lacks take their defaults).
        url: the store's database URL; the key file's default sits beside a SQLite file.

    Raises:
        ValueError: no `--deid-key` for a database that is not a SQLite file, or an invalid key file.
    """
    from medcm.dicom.deid import DeidConfig
    from medcm.dicom.deid_copies import default_key_file, load_or_create_key

    if getattr(args, "no_deid", False):
        log.warning("de-identification is OFF (--no-deid): files and reports are stored as they are")
        return None
    key_file = getattr(args, "deid_key", None) or default_key_file(url)
    if key_file is None:
        scheme = url.split("://", 1)[0]  # never echo the URL: it may hold a password
        raise ValueError(f"--deid-key: not given, and a {scheme}:// database has no folder beside it; expected "
                         "--deid-key FILE (created on first use), or --no-deid for already de-identified data")
    refuse = getattr(args, "burned_in", "refuse") != "flag"
    return DeidConfig(load_or_create_key(key_file), refuse_burned_in=refuse)


def folder_beside_db(url: str, given: str | None, suffix: str, option: str, purpose: str) -> Path:
    """`given` (a command's folder option) if set, else `<db file><suffix>` beside a SQLite database file.

    Args:
        url: the database URL.
        given: the option's value (None or "" when not given).
        suffix: e.g. ".files", ".spool".
        option: the option's name, for the error ("--files").
        purpose: what the folder holds, for the error ("the converted PNG/JPEG images").

    Raises:
        ValueError: no `given` for another database (e.g. PostgreSQL), which has no folder to sit beside.
    """
    from medcm.paths import sqlite_file

    if given:
        return Path(given).expanduser().resolve()
    file = sqlite_file(url)
    if file is None:
        scheme = url.split("://", 1)[0]  # never echo the URL: it may hold a password
        raise ValueError(f"{option}: not given, and a {scheme}:// database has no folder beside it; "
                         f"expected {option} DIR for {purpose}")
    return file.with_name(file.name + suffix)
