"""Walk a file, folder or zip: every candidate DICOM file under it (`iter_sources`), each read
(`iter_dicom`), or all read and grouped into studies and series (`read_studies`).

Folders are walked in sorted order, skipping hidden entries, DICOMDIR and obviously non-DICOM
files; zips found are expanded one level, their members named ``"archive.zip:member"``
(`medcm.dicom.read.member_name`). An unreadable file is a `DicomReadError` value, never an
exception that stops the walk.
"""

from __future__ import annotations

import os
import posixpath
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from medcm.dicom.read import MAX_ZIP_MEMBER, DicomImage, DicomReadError, member_name, read_instance

__all__ = ["ReadResult", "Series", "Study", "iter_dicom", "iter_sources", "read_studies"]

# Files in folders/zips with these suffixes are never DICOM; skipping them keeps
# licences and readmes that travel with image sets out of the error list.
_NOT_DICOM_SUFFIXES = frozenset(
    {".txt", ".md", ".json", ".csv", ".xml", ".html", ".htm", ".pdf", ".py",
     ".log", ".ini", ".yaml", ".yml", ".png", ".jpg", ".jpeg", ".gif"}
)


@dataclass(frozen=True)
class Series:
    """Instances of one series, sorted by instance number (None last), then path."""
    series_uid: str
    instances: tuple[DicomImage, ...]


@dataclass(frozen=True)
class Study:
    """Series of one study, in the order they were first met."""
    study_uid: str
    series: tuple[Series, ...]


@dataclass(frozen=True)
class ReadResult:
    """Everything read under a path: grouped images plus per-file errors."""
    studies: tuple[Study, ...]
    errors: tuple[DicomReadError, ...]


def _skip(name: str) -> bool:
    """Hidden entries (at any depth), DICOMDIR, macOS zip junk and non-DICOM suffixes."""
    parts = name.replace("\\", "/").split("/")
    if any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return True
    return parts[-1].upper() == "DICOMDIR" or posixpath.splitext(parts[-1])[1].lower() in _NOT_DICOM_SUFFIXES


def iter_dicom(path: str | os.PathLike) -> Iterator[DicomImage | DicomReadError]:
    """Yield every image under a file, folder (recursive) or .zip archive.

    Folders are walked in sorted order, skipping hidden entries, DICOMDIR files
    and obviously non-DICOM files (text, json, png ...); zips found inside are
    expanded. Zip members are read in memory and named ``"x.zip:member"``.

    Args:
        path: A DICOM file, a folder, or a ``.zip``.

    Yields:
        A DicomImage per readable file, a DicomReadError per unreadable one.

    Raises:
        FileNotFoundError: If ``path`` does not exist (raised at the call, not on first next()).
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such file or folder; expected a DICOM file, folder or .zip")
    return _iter_root(root)


def _iter_root(root: Path) -> Iterator[DicomImage | DicomReadError]:
    for item in iter_sources(root):
        yield item if isinstance(item, DicomReadError) else _attempt(item[2], item[0], item[1])


def iter_sources(root: str | os.PathLike) -> Iterator[tuple[str, str, Path | bytes] | DicomReadError]:
    """`(label, folder, file path or member bytes)` per candidate DICOM file under a file, folder or .zip.

    Folders are walked in sorted order, skipping hidden entries, DICOMDIR and non-DICOM suffixes;
    zip members (one level) are read into memory and labelled ``"x.zip:member"``. An unsafe member
    (a path leaving the archive, a link, an oversized one) or an unreadable zip is yielded as a
    `DicomReadError` instead. Shared by `iter_dicom` and `medcm.dicom.series.read_volumes`.
    """
    root = Path(root)
    for file in _walk(root) if root.is_dir() else [root]:
        if file.suffix.lower() == ".zip":
            yield from _iter_zip(file)
        else:
            yield str(file), str(file.parent), file


def _walk(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not _skip(name):  # hidden folders were pruned above
                yield Path(dirpath) / name


def _attempt(source: str | os.PathLike | bytes, label: str, folder: str) -> DicomImage | DicomReadError:
    try:
        return read_instance(source, label, folder=folder)
    except DicomReadError as err:
        return err


def _iter_zip(archive: Path) -> Iterator[tuple[str, str, bytes] | DicomReadError]:
    try:
        zf = zipfile.ZipFile(archive)
    except (OSError, zipfile.BadZipFile) as exc:
        yield _chained(DicomReadError(str(archive), f"not a readable zip archive: {exc}"), exc)
        return
    # Imported here: one definition of a safe member, shared with the upload checks (stdlib only).
    from medcm.dicom.limits import zip_member_problem

    with zf:
        members = [m for m in zf.infolist() if not m.is_dir()]
        for member in sorted(members, key=lambda m: m.filename):
            label = member_name(archive, member.filename)
            problem = zip_member_problem(member)  # before _skip, which hides "../x" as a dot-entry
            if problem:
                yield DicomReadError(label, problem)
                continue
            if _skip(member.filename):
                continue
            if member.file_size > MAX_ZIP_MEMBER:
                yield DicomReadError(label, f"zip member is {member.file_size} bytes, over the {MAX_ZIP_MEMBER} limit")
                continue
            try:
                data = zf.read(member)
            except Exception as exc:  # noqa: BLE001 - reported per member: CRC error, bad compression ...
                yield _chained(DicomReadError(label, f"cannot extract zip member: {exc}"), exc)
                continue
            yield label, member_name(archive, posixpath.dirname(member.filename)), data


def _chained(err: DicomReadError, cause: BaseException) -> DicomReadError:
    # Yielded (not raised) errors carry their cause just as raised ones do.
    err.__cause__ = cause
    return err


def read_studies(path: str | os.PathLike) -> ReadResult:
    """Read everything under ``path`` and group it into studies and series.

    Studies and series keep the order in which they were first met (iteration is
    path-sorted, so this is deterministic); instances are sorted by
    InstanceNumber (missing ones last), then path.

    Args:
        path: A DICOM file, a folder, or a ``.zip``.

    Returns:
        The grouped images and the errors for files that could not be read.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
    """
    groups: dict[str, dict[str, list[DicomImage]]] = {}
    errors: list[DicomReadError] = []
    for item in iter_dicom(path):
        if isinstance(item, DicomReadError):
            errors.append(item)
            continue
        meta = item.meta
        groups.setdefault(meta.study_uid, {}).setdefault(meta.series_uid, []).append(item)
    studies = tuple(
        Study(study_uid, tuple(
            Series(series_uid, tuple(sorted(images, key=_instance_key)))
            for series_uid, images in series.items()
        ))
        for study_uid, series in groups.items()
    )
    return ReadResult(studies=studies, errors=tuple(errors))


def _instance_key(image: DicomImage) -> tuple[bool, int, str]:
    number = image.meta.instance_number
    return (number is None, number or 0, image.meta.path)

