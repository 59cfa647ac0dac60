"""Finding volumes in files: every series under a path, the series among one case's files, or
whether a stored series is scrolled as one volume and in which order.

`medcm.dicom.volume` assembles datasets already read; this module reads them. Files are named as
`medcm.dicom.read` names them: a path, or ``"archive.zip:member"`` for a zip member, so a `DicomImage`'s
`meta.path` (or a manifest's image path, or a case store's instance path) is enough to read its
series again as a volume.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom

from medcm.dicom.read import DicomReadError, read_dataset
from medcm.dicom.volume import (
    VOLUME_MODALITIES,
    Volume,
    VolumeError,
    assemble_volume,
    could_be_volume,
    is_volume_series,
    slice_positions,
    spacing_problems,
)
from medcm.dicom.walk import iter_sources

__all__ = ["MIN_VOLUME_SLICES", "SeriesFiles", "SliceOrder", "StoredFile", "group_series", "is_stored_volume",
           "read_volume", "read_volumes", "slice_order", "split_stacks"]

MIN_VOLUME_SLICES = 3  # fewest slices (frames count) of a series treated as a volume
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


def group_series(files: Sequence[str], min_slices: int = MIN_VOLUME_SLICES) -> list[SeriesFiles]:
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
        return read_dataset(name, headers_only=True)
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
    datasets = [read_dataset(name) for name in files]
    return assemble_volume(datasets, label=label or os.path.dirname(files[0]), allow_gaps=allow_gaps)


def read_volumes(path: str | os.PathLike, min_slices: int = MIN_VOLUME_SLICES) -> tuple[list[Volume], list[VolumeError | DicomReadError]]:
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
            ds = read_dataset(source, label)
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


@dataclass(frozen=True)
class StoredFile:
    """One stored instance of a series, as a case store records it (no file is read to make one).

    Attributes:
        path: The file, or ``"archive.zip:member"``.
        modality: DICOM Modality ("" when unknown).
        frames: Frames in the file.
        instance_number: InstanceNumber, None when absent.
    """

    path: str
    modality: str = ""
    frames: int = 1
    instance_number: int | None = None


@dataclass(frozen=True)
class SliceOrder:
    """The order in which a stored volume's slices are scrolled.

    Attributes:
        order: Indices into the files given, first slice first.
        by_position: True when ordered along the slice normal, False when by InstanceNumber.
        problems: Warnings about the slice spacing (repeated positions, missing slices); none
            when the positions are unknown.
        spacing_mm: The median distance between neighbouring slices along the normal; None when the
            positions are unknown (or all repeat).
    """

    order: tuple[int, ...]
    by_position: bool
    problems: tuple[str, ...] = ()
    spacing_mm: float | None = None


def is_stored_volume(files: Sequence[StoredFile], min_slices: int = MIN_VOLUME_SLICES) -> bool:
    """Whether a stored series is shown as one volume: at least `min_slices` single-frame CT/MR/PT files.

    Decided from stored values alone. Unlike `medcm.dicom.volume.is_volume_series`, which decides
    whether a series can be encoded as one volume, plane geometry is not required: slices without
    it are still scrolled, in InstanceNumber order (`slice_order`).
    """
    return len(files) >= min_slices and all(
        file.modality in VOLUME_MODALITIES and file.frames == 1 for file in files)


def slice_order(files: Sequence[StoredFile], name: str) -> SliceOrder:
    """Order a stored volume's slices along the series normal, from their headers alone.

    When every header is readable and has plane geometry of one orientation, slices are sorted by
    position along the normal, and the spacing checked (`medcm.dicom.volume.spacing_problems`);
    otherwise they are sorted by InstanceNumber (absent ones last), then path.

    Args:
        files: The stored files of one series (e.g. those `is_stored_volume` accepts).
        name: Names the series in warnings, e.g. ``"series 2 (CT)"``.

    Returns:
        The order, and the spacing warnings, each starting with `name`.
    """
    headers = []
    for file in files:
        try:
            headers.append(read_dataset(file.path, headers_only=True))
        except DicomReadError:
            headers = []
            break
    positions = slice_positions(headers) if headers else None
    if positions is not None:
        order = sorted(range(len(files)), key=lambda k: positions[k])
        gaps = [b - a for a, b in itertools.pairwise(sorted(positions)) if b - a > 1e-3]
        spacing = float(statistics.median(gaps)) if gaps else None
        return SliceOrder(tuple(order), True, tuple(spacing_problems(positions, name)), spacing)

    def by_number(k: int) -> tuple[bool, int, str]:
        number = files[k].instance_number
        return number is None, number or 0, files[k].path

    return SliceOrder(tuple(sorted(range(len(files)), key=by_number)), False)
