"""Finding volumes in files: every series under a path, or the series among one case's files.

`medcm.dicom.volume` assembles datasets already read; this module reads them. Files are named as
`medcm.dicom.read` names them: a path, or ``"archive.zip:member"`` for a zip member, so a `DicomImage`'s
`meta.path` (or a manifest's image path) is enough to read its series again as a volume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom

# A private helper of medcm.dicom.read, imported so that "a safe read" has one definition.
from medcm.dicom.read import DicomReadError, _load, iter_sources
from medcm.dicom.volume import Volume, VolumeError, assemble_volume, could_be_volume, is_volume_series

__all__ = ["SeriesFiles", "group_series", "read_volume", "read_volumes", "split_stacks"]

_ZIP_MEMBER = re.compile(r"^(?P<archive>.+\.zip):(?P<member>.+)$", re.IGNORECASE)
_RASTER = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


@dataclass(frozen=True)
class SeriesFiles:
    """The files of one series among a case's files, in the order given.

    Attributes:
        series_uid: SeriesInstanceUID ("" for a raster image or an unreadable file, each its own group).
        files: file names as given (paths or ``"archive.zip:member"``).
        is_volume: CT/MR/PT with plane geometry and at least `min_slices` slices: encode it as one volume.
    """

    series_uid: str
    files: tuple[str, ...]
    is_volume: bool


def group_series(files: Sequence[str], min_slices: int = 3) -> list[SeriesFiles]:
    """Group a case's image files by series and stack (`split_stacks`), from headers alone, and tell
    volumes from single images.

    A raster image (PNG, JPEG ...) or a file whose header cannot be read is a group of its own and
    never a volume: reading it later reports the error, naming the file, as for any image.

    Args:
        files: paths or ``"archive.zip:member"`` names.
        min_slices: fewest slices (frames count) for a volume.

    Returns:
        One group per stack of a series, in order of their first files; a series of several stacks
        gives several groups with the same `series_uid`.
    """
    groups: dict[str, list[tuple[str, pydicom.Dataset]]] = {}
    singles: dict[str, list[tuple[str, None]]] = {}
    for name in files:
        header = None if name.lower().endswith(_RASTER) else _header(name)
        uid = str(header.get("SeriesInstanceUID", "")) if header is not None else ""
        if uid:
            groups.setdefault(uid, []).append((name, header))
        else:
            singles[f"#{len(singles)}"] = [(name, None)]
    result = [SeriesFiles("", (name,), False) for name, _ in (m for members in singles.values() for m in members)]
    for uid, members in groups.items():
        name_of = {id(header): name for name, header in members}
        for stack in split_stacks([header for _, header in members]):
            names = tuple(name_of[id(header)] for header in stack)
            result.append(SeriesFiles(uid, names, is_volume_series(stack, min_slices)))
    order = {name: i for i, name in enumerate(files)}
    return sorted(result, key=lambda group: order[group.files[0]])


def split_stacks(datasets: Sequence[pydicom.Dataset]) -> list[list[pydicom.Dataset]]:
    """The stacks of one series: single-frame slices grouped by what cannot differ within one volume.

    One SeriesInstanceUID often holds several stacks: the echoes of a multi-echo MR, the time
    points of a dynamic series, or a three-plane localizer beside the axial slices. Slices are
    grouped by orientation, matrix size, pixel spacing, EchoNumbers and TemporalPositionIdentifier
    (headers only); multi-frame files stay together. A series of one stack comes back unchanged.

    Returns:
        The stacks, largest first (ties: in order of first appearance).
    """
    stacks: dict[tuple, list[pydicom.Dataset]] = {}
    for ds in datasets:
        stacks.setdefault(_stack_key(ds), []).append(ds)
    return sorted(stacks.values(), key=len, reverse=True)


def _stack_key(ds: pydicom.Dataset) -> tuple:
    if int(ds.get("NumberOfFrames") or 1) > 1:
        return ("multi-frame",)

    def rounded(keyword: str, digits: int) -> tuple | None:
        try:
            return tuple(round(float(v), digits) for v in ds.get(keyword) or ())
        except (TypeError, ValueError):
            return None

    return (rounded("ImageOrientationPatient", 3), ds.get("Rows"), ds.get("Columns"), rounded("PixelSpacing", 3),
            str(ds.get("EchoNumbers", "")), str(ds.get("TemporalPositionIdentifier", "")))


def _header(name: str) -> pydicom.Dataset | None:
    try:
        return _read_named(name, headers_only=True)
    except DicomReadError:
        return None


def read_volume(files: Sequence[str], label: str = "", allow_gaps: bool = False) -> Volume:
    """Read the files of ONE series and assemble them into a volume.

    Args:
        files: paths or ``"archive.zip:member"`` names (e.g. `DicomImage.meta.path` of each slice).
        label: where the series came from, for messages.
        allow_gaps: see `medcm.dicom.volume.assemble_volume`.

    Raises:
        DicomReadError: a file cannot be read (the message names it).
        VolumeError: the series does not make a trustworthy volume (see `assemble_volume`).
    """
    if not files:
        raise VolumeError(f"series{f' ({label})' if label else ''}: no files; expected the slices of one series")
    datasets = [_read_named(name) for name in files]
    return assemble_volume(datasets, label=label or os.path.dirname(files[0]), allow_gaps=allow_gaps)


def _read_named(name: str, headers_only: bool = False) -> pydicom.Dataset:
    """The dataset of a file path or of an ``"archive.zip:member"`` name."""
    path = Path(name)
    if not path.is_file():
        match = _ZIP_MEMBER.match(name)
        if match is None:
            raise DicomReadError(name, "no such file; expected a DICOM file or an 'archive.zip:member' name")
        try:
            with zipfile.ZipFile(match["archive"]) as archive:
                data = archive.read(match["member"])
        except (OSError, KeyError, zipfile.BadZipFile) as exc:
            raise DicomReadError(name, f"cannot read zip member: {exc}") from exc
        ds = _load(data, name)
    elif headers_only:
        try:
            with warnings.catch_warnings():  # a forced read of a non-DICOM file warns before it fails
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except Exception as exc:  # noqa: BLE001 - any parse failure means "not a readable header"
            raise DicomReadError(name, f"not a readable DICOM header ({type(exc).__name__}: {exc})") from exc
    else:
        ds = _read_dataset(path, name)
    return ds


def read_volumes(path: str | os.PathLike, min_slices: int = 3) -> tuple[list[Volume], list[VolumeError | DicomReadError]]:
    """Assemble every CT/MR/PT series under a file, folder (recursive) or .zip.

    Series of other modalities, series with fewer than `min_slices` slices (frames count) and
    objects without pixel data (SR, presentation states) are skipped, not reported. A series of
    several stacks (`split_stacks`: echoes, time points, a localizer) gives one volume per stack of
    `min_slices` or more, each with a warning saying so.

    Args:
        path: A DICOM file, a folder or a ``.zip``.
        min_slices: Smallest number of slices worth assembling.

    Returns:
        The volumes (in order of first appearance) and one error per failing series or unreadable file.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such file or folder; expected a DICOM file, folder or .zip")
    groups: dict[str, list[pydicom.Dataset]] = {}
    folders: dict[str, str] = {}
    errors: list[VolumeError | DicomReadError] = []
    for item in iter_sources(root):
        try:
            if isinstance(item, DicomReadError):
                raise item
            label, folder, source = item
            ds = _read_dataset(source, label)
        except DicomReadError as err:
            errors.append(err)
            continue
        if "PixelData" in ds:  # else SR, KO, presentation state ...: not an image
            uid = str(ds.get("SeriesInstanceUID") or f"unknown-series:{folder}")
            groups.setdefault(uid, []).append(ds)
            folders.setdefault(uid, folder)
    volumes = []
    for uid in list(groups):
        datasets = groups.pop(uid)  # released after assembly: one series decoded at a time
        stacks = split_stacks(datasets)
        usable = [stack for stack in stacks if could_be_volume(stack, min_slices)]
        for number, stack in enumerate(usable, start=1):
            label = folders[uid] if len(stacks) == 1 else f"{folders[uid]}, stack {number} of {len(usable)}"
            try:
                volume = assemble_volume(stack, label=label)
            except VolumeError as err:
                errors.append(err)
                continue
            if len(stacks) > 1:
                volume = dataclasses.replace(volume, warnings=(*volume.warnings, _split_note(uid, stacks, usable)))
            volumes.append(volume)
    return volumes, errors


def _split_note(uid: str, stacks: list[list[pydicom.Dataset]], usable: list[list[pydicom.Dataset]]) -> str:
    left_out = sum(len(stack) for stack in stacks) - sum(len(stack) for stack in usable)
    note = (f"series {uid}: holds {len(stacks)} stacks (orientation, matrix, pixel spacing, echo or time point "
            f"differ); assembled {len(usable)} volume(s) of {', '.join(str(len(s)) for s in usable)} slices")
    return note + (f"; {left_out} slice(s) in stacks too small for a volume left out" if left_out else "")


def _read_dataset(source: Path | bytes, label: str) -> pydicom.Dataset:
    """A dataset whose pixel data, for files, stays on disk until decoded; DicomReadError if unreadable."""
    if isinstance(source, Path):
        with contextlib.suppress(Exception):  # anything odd: the careful reader below explains it
            ds = pydicom.dcmread(source, defer_size="64 KB")
            if ds.file_meta.get("TransferSyntaxUID"):
                return ds
    return _load(source, label)
