"""Small file helpers shared by checkpoints and indexes: atomic folder replacement and hashing."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path


def replace_folder(staging: Path, folder: Path) -> None:
    """Move a fully written `staging` folder to `folder`, replacing any previous one.

    The previous folder is renamed aside first and put back if the final rename fails, so a
    reader finds either the old complete folder or the new complete one, never a half-written one.
    """
    old = staging.with_name(staging.name + ".old")
    if folder.exists():
        folder.rename(old)
    try:
        staging.rename(folder)
    except OSError:
        if old.exists():
            old.rename(folder)
        raise
    shutil.rmtree(old, ignore_errors=True)


def sha256_of_files(files: list[Path]) -> str:
    """One sha256 over the bytes of `files`, in the order given (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
