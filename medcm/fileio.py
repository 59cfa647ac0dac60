"""Small file helpers shared by checkpoints, indexes, exports and the outbox: atomic writes, hashing."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
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


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically and durably: a temporary file in the same folder, fsync, rename.

    A reader finds the old file or the whole new one, never part of it.

    Raises:
        FileNotFoundError: the destination folder does not exist.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path}: folder {path.parent} does not exist; expected an existing folder")
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path
