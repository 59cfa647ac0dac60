"""Refuse unsafe or oversized uploads as a whole, before anything is read into the store.

`check_upload` looks at sizes, counts and zip headers only; it decodes no DICOM. It refuses
uploads over the size and file-count limits, and zip archives (also zips inside zips) that
hold traversal names (``../x``, ``/etc/x``, ``C:x``, ``..\\x``), symbolic links, encrypted
members, members compressed suspiciously well (zip bombs), more unpacked data than allowed,
or that are corrupt. Folders are walked too; links in them that point outside are refused.

Zip bombs are judged on the sizes the archive declares. That is sound because Python's
zipfile never returns more than a member's declared ``file_size`` (a lying header ends in a
CRC error instead, see tests/test_limits.py); nested archives are still read with a hard cap.
"""

from __future__ import annotations

import math
import os
import re
import stat
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import IO

__all__ = ["UploadLimits", "UploadRejected", "check_upload", "zip_member_problem"]

_MIB = 1024**2
_RATIO_MIN_BYTES = _MIB  # the compression ratio is only judged for members larger than this
_SPOOL_BYTES = 32 * _MIB  # nested zips up to this size are held in memory; larger ones spill to disk
_CHUNK = _MIB
_CD_BYTES_PER_FILE = 1024  # a central directory over max_files * this is refused before parsing
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
_DRIVE = re.compile(r"^[A-Za-z]:")
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, zlib.error,
               NotImplementedError, RuntimeError, struct.error, OverflowError)


class UploadRejected(ValueError):
    """An upload refused as a whole; str() is one line naming the offending file and the limit.

    Attributes:
        name: The offending file as the user named it (``archive.zip:member`` inside zips).
        reason: What is wrong and which limit it broke, in words.
    """

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason

    def __reduce__(self):  # keep pickling (multiprocessing) working
        return (type(self), (self.name, self.reason))


@dataclass(frozen=True)
class UploadLimits:
    """Limits on one upload (all the files sent together).

    Attributes:
        max_upload_bytes: Total bytes of the files as uploaded (folders summed recursively).
        max_files: Files plus zip members, nested zips' members included.
        max_unpacked_bytes: Total declared uncompressed size of all zip members, nested ones included.
        max_compression_ratio: Per zip member, ``file_size / max(compress_size, 1)``, judged for
            members over 1 MiB unpacked, and for each archive's members together once they unpack to
            over 1 MiB, so a few small, highly compressible files pass but many do not.
        max_zip_depth: How deep zips may nest: 0 forbids zips inside zips; 1 lets a zip hold zips
            that themselves hold none.
    """

    max_upload_bytes: int = 2 * 1024**3
    max_files: int = 10_000
    max_unpacked_bytes: int = 8 * 1024**3
    max_compression_ratio: float = 100.0
    max_zip_depth: int = 1

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            least = 0 if field.name == "max_zip_depth" else 1
            if field.name == "max_compression_ratio":
                ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
                    and value > 0
                expected = "a finite number > 0"
            else:
                ok = isinstance(value, int) and not isinstance(value, bool) and value >= least
                expected = f"an integer >= {least}"
            if not ok:
                raise ValueError(f"UploadLimits.{field.name}: got {value!r}, expected {expected}")


def check_upload(paths: Sequence[str | Path], limits: UploadLimits = UploadLimits(),
                 names: Mapping[str, str] | None = None) -> None:
    """Refuse an upload before anything is read into the store.

    Args:
        paths: The uploaded files and folders, as stored on the server.
        limits: The limits to enforce.
        names: Maps a stored path (``os.fspath`` of an entry of ``paths``) to the name the user
            gave it; messages use that name instead of the server path.

    Raises:
        UploadRejected: On the first problem found: total size or file count over the limits; a
            missing path, or one that is neither a regular file nor a folder; a link in a folder
            that points outside it; in zips (nested ones included): unsafe member names, symbolic
            links, encrypted members, a compression ratio or total unpacked size over the limits,
            nesting deeper than allowed, or a corrupt archive.
    """
    budget = _Budget(limits)
    for path in paths:
        label = _clean((names or {}).get(os.fspath(path)) or os.fspath(path))
        root = Path(path)
        if not root.exists():
            raise UploadRejected(label, "no such file or folder; expected an uploaded file")
        if root.is_dir():
            _check_folder(root, label, budget)
        else:
            _check_file(root, label, budget)


def zip_member_problem(info: zipfile.ZipInfo) -> str | None:
    """Why a zip member must not be read, or None when its name and type are safe.

    Args:
        info: The member's header.

    Returns:
        A reason (not naming the member) for absolute names, drive letters, ``..`` components
        (with ``/`` or ``\\`` separators) and symbolic links; None otherwise.
    """
    name = info.filename
    parts = re.split(r"[\\/]", name)
    what = (
        "is an absolute path" if name.startswith(("/", "\\"))
        else "starts with a drive letter" if _DRIVE.match(name)
        else "has a '..' component" if ".." in parts
        else ""
    )
    if what:
        return f"unsafe member name: it {what}; expected a relative path inside the archive"
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return f"member is a symbolic link (mode {mode:#o}); links are not accepted in uploads"
    return None


class _Budget:
    """Running totals of one upload, refusing the entry that crosses a limit."""

    def __init__(self, limits: UploadLimits) -> None:
        self.limits = limits
        self.files = 0
        self.uploaded = 0
        self.unpacked = 0

    def count(self, label: str, extra: int = 1) -> None:
        self.files += extra
        if self.files > self.limits.max_files:
            raise UploadRejected(label, f"the upload reaches {self.files} files (zip members included) here, "
                                        f"over the limit of {self.limits.max_files}; send fewer files at a time")

    def add_file(self, label: str, size: int) -> None:
        self.count(label)
        self.uploaded += size
        if self.uploaded > self.limits.max_upload_bytes:
            raise UploadRejected(label, f"the upload reaches {_size(self.uploaded)} with this file, over the "
                                        f"{_size(self.limits.max_upload_bytes)} limit; send less at a time")

    def add_member(self, label: str, size: int) -> None:
        self.count(label)
        self.unpacked += size
        if self.unpacked > self.limits.max_unpacked_bytes:
            raise UploadRejected(label, f"zip members unpack to {_size(self.unpacked)} by this one, over the "
                                        f"{_size(self.limits.max_unpacked_bytes)} unpacked limit (a zip bomb?)")


def _check_folder(root: Path, label: str, budget: _Budget) -> None:
    base = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root):  # does not descend into linked folders
        here = Path(dirpath)
        dirnames.sort()
        files = set(filenames)
        for name in sorted(dirnames + filenames):
            path = here / name
            shown = f"{label}/{_clean(path.relative_to(root).as_posix())}"
            if path.is_symlink():
                target = path.resolve()
                if not target.is_relative_to(base):
                    raise UploadRejected(shown, f"link points outside the uploaded folder (to {_clean(str(target))});"
                                                " links are refused")
            if name in files:
                _check_file(path, shown, budget)


def _check_file(path: Path, label: str, budget: _Budget) -> None:
    try:
        info = path.stat()
    except OSError as exc:
        raise UploadRejected(label, f"cannot read file ({exc.strerror or type(exc).__name__}); expected a readable file") from exc
    if not stat.S_ISREG(info.st_mode):
        raise UploadRejected(label, "not a regular file or folder; expected DICOM files, folders or .zip archives")
    budget.add_file(label, info.st_size)
    try:
        with path.open("rb") as fh:
            if _looks_like_zip(label, fh.read(4)):
                fh.seek(0)
                _check_zip(fh, label, 0, budget)
    except OSError as exc:
        raise UploadRejected(label, f"cannot read file ({exc.strerror or type(exc).__name__}); expected a readable file") from exc


def _looks_like_zip(label: str, start: bytes) -> bool:
    """A .zip by name, or by its first bytes (a zip renamed to .dcm is still opened)."""
    return label.lower().endswith(".zip") or start in _ZIP_MAGIC


def _check_zip(fh: IO[bytes], label: str, depth: int, budget: _Budget) -> None:
    try:
        _check_directory_size(fh, label, budget)
        zf = zipfile.ZipFile(fh)
    except UploadRejected:
        raise
    except _ZIP_ERRORS as exc:
        raise _corrupt(label, exc) from exc
    with zf:
        for info in zf.infolist():
            _check_member(zf, info, f"{label}:{_clean(info.filename)}", depth, budget)
        # Members of up to 1 MiB are not judged one by one, so many small ones could hide a bomb (200
        # members of 1 MiB of zeros in a 226 KB zip): the archive's members are judged together too.
        files = [info for info in zf.infolist() if not info.is_dir()]
        unpacked, packed = sum(i.file_size for i in files), sum(i.compress_size for i in files)
        ratio = unpacked / max(packed, 1)
        if unpacked > _RATIO_MIN_BYTES and ratio > budget.limits.max_compression_ratio:
            raise UploadRejected(label, f"its members together unpack at {ratio:.0f}:1 ({_size(unpacked)} from "
                                        f"{_size(packed)}), over the {budget.limits.max_compression_ratio:g}:1 "
                                        "limit (a zip bomb?)")


def _check_directory_size(fh: IO[bytes], label: str, budget: _Budget) -> None:
    """Refuse archives declaring too many entries before zipfile parses them all into memory."""
    end_record = getattr(zipfile, "_EndRecData", None)  # the stdlib's zip64-aware end-record reader
    end = end_record(fh) if end_record else None
    fh.seek(0)
    if not end:
        return  # zipfile.ZipFile raises BadZipFile for this just after
    entries, cd_bytes = end[zipfile._ECD_ENTRIES_TOTAL], end[zipfile._ECD_SIZE]
    if budget.files + entries > budget.limits.max_files:
        budget.count(label, entries)
    if cd_bytes > budget.limits.max_files * _CD_BYTES_PER_FILE:
        raise UploadRejected(label, f"the zip directory is {_size(cd_bytes)}, too large for the "
                                    f"{budget.limits.max_files}-file limit; expected an ordinary archive")


def _check_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, label: str, depth: int, budget: _Budget) -> None:
    problem = zip_member_problem(info)
    if problem:
        raise UploadRejected(label, problem)
    if info.flag_bits & 0x1:
        raise UploadRejected(label, "member is encrypted; expected unencrypted files")
    budget.add_member(label, info.file_size)  # folder entries count too, as in the directory's total
    if info.is_dir():
        return
    ratio = info.file_size / max(info.compress_size, 1)
    if info.file_size > _RATIO_MIN_BYTES and ratio > budget.limits.max_compression_ratio:
        raise UploadRejected(label, f"compression ratio {ratio:.0f}:1 ({_size(info.file_size)} from "
                                    f"{_size(info.compress_size)}) is over the "
                                    f"{budget.limits.max_compression_ratio:g}:1 limit (a zip bomb?)")
    try:
        with zf.open(info) as src:  # checks the local header agrees with the directory
            if not _looks_like_zip(label, src.read(4)):
                return
    except _ZIP_ERRORS as exc:
        raise _corrupt(label, exc) from exc
    if depth + 1 > budget.limits.max_zip_depth:
        raise UploadRejected(label, f"zip nested {depth + 1} level(s) deep, over the limit of "
                                    f"{budget.limits.max_zip_depth}; unpack the inner archives first")
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES) as inner:
        _copy_capped(zf, info, inner, label)
        _check_zip(inner, label, depth + 1, budget)


def _copy_capped(zf: zipfile.ZipFile, info: zipfile.ZipInfo, out: IO[bytes], label: str) -> None:
    """Unpack a member, never writing more than its declared size."""
    left = info.file_size
    try:
        with zf.open(info) as src:
            while chunk := src.read(min(_CHUNK, left + 1)):
                left -= len(chunk)
                if left < 0:
                    raise UploadRejected(label, f"member unpacks to more than its declared {info.file_size} "
                                                "bytes; expected an intact archive")
                out.write(chunk)
    except UploadRejected:
        raise
    except _ZIP_ERRORS as exc:
        raise _corrupt(label, exc) from exc
    out.seek(0)


def _corrupt(label: str, exc: BaseException) -> UploadRejected:
    return UploadRejected(label, f"not a readable zip archive ({type(exc).__name__}: {_clean(str(exc))}); "
                                 "expected an intact .zip")


def _clean(text: str) -> str:
    """Keep messages on one line: control characters in names become escapes."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", _MIB), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.1f} {unit} ({n} bytes)"
    return f"{n} bytes"
