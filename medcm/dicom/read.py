"""The project's one DICOM reader: a file, a zip member or bytes into a dataset or a display-ready image.

`read_dataset` is the one place `pydicom.dcmread` is called in medcm and ui. `read_instance` decodes
an image and runs the grey-scale pipeline of `medcm.dicom.display`, giving float32 [F, H, W] pixels
in [0, 1] and the `InstanceMeta` of `medcm.dicom.meta`. A zip member is named
``"archive.zip:member"`` (`member_name`, `split_member_name`: the one parser of such names), and
every reader here takes such a name wherever it takes a path. Walking folders and zips is
`medcm.dicom.walk`'s.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    UncompressedTransferSyntaxes,
)

from medcm.dicom.decode import DecodeError, decode_pixels, quiet_pydicom
from medcm.dicom.display import to_display
from medcm.dicom.meta import InstanceMeta, instance_meta

__all__ = [
    "MAX_IMAGE_PIXELS", "MAX_INFLATED_BYTES", "MAX_ZIP_MEMBER", "DicomImage", "DicomReadError", "check_pixel_data",
    "member_name", "read_dataset", "read_instance", "read_source", "split_member_name",
]

MAX_ZIP_MEMBER = 2**31  # bytes; refuse larger members rather than exhaust memory
# rows*columns*frames*samples; larger images are refused before decoding. Reading one costs about 25 bytes a
# sample at its peak (the file's bytes, pydicom's copy, the decoded array, float intermediates, the float32
# display pixels): some 3.4 GB at this limit (BENCHMARKS.md, "Memory per DICOM file"). 2**27 is 512 x 512 x
# 512, or a 1,000-frame 360 x 360 cine.
MAX_IMAGE_PIXELS = 2**27
# A Deflated Explicit VR dataset is inflated whole by pydicom: first it is inflated here, counting and
# keeping nothing, and refused once it passes this (2**27 samples of 16 bits).
MAX_INFLATED_BYTES = 2**28
_INFLATE_CHUNK = 2**20
_ZIP_SEPARATOR = re.compile(r"\.zip:", re.IGNORECASE)  # between archive and member in a member name
_BYTES = (bytes, bytearray, memoryview)


class DicomReadError(Exception):
    """A file could not be read as a DICOM image.

    Attributes:
        path: The file (or ``archive.zip:member``) that failed.
        reason: What went wrong, in words.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason

    def __reduce__(self):  # keep pickling (multiprocessing) working
        return (type(self), (self.path, self.reason))


# eq=False: comparing/hashing numpy arrays field-wise is ambiguous, so identity it is.
@dataclass(frozen=True, eq=False)
class DicomImage:
    """One instance: its metadata and float32 [F, H, W] pixels in [0, 1]."""

    meta: InstanceMeta
    pixels: np.ndarray


def member_name(archive: str | os.PathLike, member: str) -> str:
    """The name the readers give a zip member: ``"archive.zip:member"`` (`split_member_name` undoes it)."""
    return f"{os.fspath(archive)}:{member}"


def split_member_name(name: str | os.PathLike) -> tuple[str, str] | None:
    """The (archive, member) of an ``"archive.zip:member"`` name; None for the name of a plain file.

    The rule, for names that hold ".zip:" more than once: a name that is an existing file is that
    file. Otherwise the archive is a prefix ending in ".zip" (any case) followed by ":" and a
    non-empty member. Of several such prefixes (a folder named like "x.zip:y" above the archive,
    or a member path holding ".zip:"), the shortest that is an existing file wins; when none
    exists, the shortest (reading it then fails, naming the whole name).

    Args:
        name: A path or a member name, as `iter_sources` and `DicomImage.meta.path` give them.

    Returns:
        ``(archive path, member path inside it)``, or None.
    """
    text = os.fspath(name)
    candidates = [(text[:m.start() + 4], text[m.end():]) for m in _ZIP_SEPARATOR.finditer(text)]
    candidates = [(archive, member) for archive, member in candidates if member]
    if not candidates or os.path.isfile(text):
        return None
    existing = [pair for pair in candidates if len(candidates) > 1 and os.path.isfile(pair[0])]
    return (existing or candidates)[0]


def read_source(name: str | os.PathLike, label: str | None = None) -> bytes:
    """The bytes of a file, or of a zip member named ``"archive.zip:member"``.

    Args:
        name: A path or a member name.
        label: Name used in errors; default `name`.

    Raises:
        DicomReadError: The file or member cannot be read, or the member is over 2 GiB.
    """
    label = os.fspath(name) if label is None else label
    split = split_member_name(name)
    if split is None:
        try:
            return Path(name).read_bytes()
        except OSError as exc:
            raise DicomReadError(label, f"cannot read file: {exc}") from exc
    archive, member = split
    try:
        with zipfile.ZipFile(archive) as zf:
            info = zf.getinfo(member)
            if info.file_size <= MAX_ZIP_MEMBER:
                return zf.read(info)
    except Exception as exc:  # noqa: BLE001 - no archive, no member, CRC error, bad compression ...
        raise DicomReadError(label, f"cannot read zip member: {exc}") from exc
    raise DicomReadError(label, f"zip member is {info.file_size} bytes, over the {MAX_ZIP_MEMBER} limit")


def read_dataset(source: str | os.PathLike | bytes, label: str | None = None, *, headers_only: bool = False,
                 force: bool = False) -> pydicom.Dataset:
    """Parse a DICOM file, zip member or bytes: the project's one call of `pydicom.dcmread`.

    By default the dataset of an image, read strictly: a file without the DICM preamble is retried
    with force=True and kept only when it parsed as an image (pixel data, and a SOPInstanceUID or
    Rows); a missing Transfer Syntax UID is filled in from the encoding pydicom found; a file's
    large values (pixel data) stay on disk until used.

    Args:
        source: A path, an ``"archive.zip:member"`` name, or the file's bytes.
        label: Name used in errors; default the path or name, ``"<bytes>"`` for bytes.
        headers_only: Stop before the pixel data and parse leniently (force=True), to group or
            order files cheaply; the dataset may then hold anything, so check what you use.
        force: Parse the whole dataset leniently (force=True), without the image checks: to
            re-read a file that already read as an image, e.g. to de-identify it.

    Returns:
        The dataset, pixel data not decoded (`check_pixel_data` before decoding it).

    Raises:
        DicomReadError: Naming `label` and chained from the cause: the file or member is missing
            or unreadable, or not DICOM.
    """
    if label is None:
        label = "<bytes>" if isinstance(source, _BYTES) else os.fspath(source)
    if not isinstance(source, _BYTES):
        if split_member_name(source) is not None:
            source = read_source(source, label)
        elif not os.path.isfile(source):
            raise DicomReadError(label, "no such file; expected a DICOM file or an 'archive.zip:member' name")
    _check_inflated_size(source, label)
    if headers_only or force:
        return _lenient_read(source, label, headers_only)
    if not isinstance(source, _BYTES):
        with contextlib.suppress(Exception):  # anything odd: the careful read below explains it
            ds = pydicom.dcmread(source, defer_size="64 KB")
            if ds.file_meta.get("TransferSyntaxUID"):
                return ds
    return _strict_read(source, label)


def _check_inflated_size(source: str | os.PathLike | bytes, label: str) -> None:
    """Refuse a Deflated Explicit VR file whose dataset inflates past `MAX_INFLATED_BYTES`, before pydicom
    inflates it whole: a few hundred KB of deflated zeros can hold gigabytes of pixel data."""
    with contextlib.ExitStack() as stack:
        opened = _open(source)
        fp = opened if isinstance(opened, io.BytesIO) else stack.enter_context(open(opened, "rb"))
        try:
            with quiet_pydicom():
                read_preamble(fp, False)
                deflated = _read_file_meta_info(fp).get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian
        except Exception:  # noqa: BLE001 - no standard preamble and meta: not deflated; the readers judge it
            return
        if deflated:
            _count_inflated(fp, label)


def _count_inflated(fp: io.BufferedIOBase, label: str) -> None:
    """Inflate the rest of `fp` a chunk at a time, keeping nothing; raise once it passes the limit."""
    inflater, size = zlib.decompressobj(-zlib.MAX_WBITS), 0
    while (chunk := fp.read(_INFLATE_CHUNK)) and not inflater.eof:
        while chunk:
            try:
                size += len(inflater.decompress(chunk, _INFLATE_CHUNK))
            except zlib.error as exc:
                raise DicomReadError(label, f"corrupt deflated dataset: {exc}") from exc
            if size > MAX_INFLATED_BYTES:
                raise DicomReadError(label, f"the deflated dataset inflates to more than {MAX_INFLATED_BYTES} "
                                            "bytes; refused before decoding (a decompression bomb?)")
            chunk = inflater.unconsumed_tail


def _open(source: str | os.PathLike | bytes) -> str | os.PathLike | io.BytesIO:
    if isinstance(source, _BYTES):
        return io.BytesIO(bytes(source))
    return source


def _lenient_read(source: str | os.PathLike | bytes, label: str, headers_only: bool) -> pydicom.Dataset:
    try:
        with warnings.catch_warnings():  # a forced read of a non-DICOM file warns before it fails
            warnings.simplefilter("ignore")
            return pydicom.dcmread(_open(source), stop_before_pixels=headers_only, force=True)
    except Exception as exc:  # noqa: BLE001 - any parse failure means "not readable"
        what = "header" if headers_only else "file, even parsed leniently"
        raise DicomReadError(label, f"not a readable DICOM {what} ({type(exc).__name__}: {exc})") from exc


def _strict_read(source: str | os.PathLike | bytes, label: str) -> pydicom.Dataset:
    """dcmread, retrying with force=True for preamble-less files when that is safe."""
    try:
        ds = pydicom.dcmread(_open(source))
    except InvalidDicomError as first:
        ds = _force_read(source, label, first)
    except OSError as exc:
        raise DicomReadError(label, f"cannot read file: {exc}") from exc
    except Exception as exc:
        raise DicomReadError(label, f"not a readable DICOM file ({type(exc).__name__}: {exc})") from exc
    if not ds.file_meta.get("TransferSyntaxUID"):
        # No meta: pydicom guessed the encoding while parsing; record what it found.
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit is not False
            else ExplicitVRLittleEndian if little is not False else ExplicitVRBigEndian
        )
    return ds


def _force_read(source: str | os.PathLike | bytes, label: str, first: Exception) -> pydicom.Dataset:
    # force=True "reads" almost any bytes, so only keep results that look like an image.
    reason = "not a DICOM file (no DICM header, and no image data parsed without one)"
    try:
        with quiet_pydicom():  # pydicom warns (and logs) about every garbage element
            ds = pydicom.dcmread(_open(source), force=True)
            for _ in ds:  # converts every raw element; garbage fails here
                pass
        ok = "PixelData" in ds and ("SOPInstanceUID" in ds or "Rows" in ds)
    except Exception as exc:
        raise DicomReadError(label, reason) from exc
    if not ok:
        raise DicomReadError(label, reason) from first
    return ds


def _frame_bits(ds: pydicom.Dataset) -> int:
    """The bits one frame of uncompressed pixel data takes."""
    samples = int(ds.get("SamplesPerPixel") or 1)
    if str(ds.get("PhotometricInterpretation", "")).strip() == "YBR_FULL_422":
        samples = 2  # chroma is stored horizontally subsampled
    return int(ds.Rows) * int(ds.Columns) * samples * max(1, int(ds.BitsAllocated))


def _expected_bytes(ds: pydicom.Dataset) -> int:
    return (_frame_bits(ds) * _frames(ds) + 7) // 8


def check_pixel_data(ds: pydicom.Dataset, label: str) -> None:
    """Refuse, before any decoding, a dataset whose pixel data cannot make a sound image.

    Decoders allocate what a file declares (a 1 KB JPEG may declare 60000×60000), so the declared
    size is checked against `MAX_IMAGE_PIXELS` first; uncompressed pixel data shorter than declared
    is refused as truncated.

    Raises:
        DicomReadError: Naming `label`: no pixel data, a missing Rows/Columns/BitsAllocated, no
            pixels or too many declared, or truncated pixel data.
    """
    if "PixelData" not in ds or ds.PixelData is None:
        raise DicomReadError(label, "no pixel data: the dataset has no (7FE0,0010) Pixel Data element")
    missing = [kw for kw in ("Rows", "Columns", "BitsAllocated") if ds.get(kw) in (None, "")]
    if missing:
        raise DicomReadError(label, f"missing required image attribute(s): {', '.join(missing)}")
    # Before any decoding: a 1 KB JPEG may declare 60000x60000, and decoders allocate what is declared.
    rows, columns, frames = int(ds.Rows), int(ds.Columns), _frames(ds)
    samples = max(1, int(ds.get("SamplesPerPixel") or 1))
    size = f"{rows}×{columns}×{frames}" + (f"×{samples} samples" if samples > 1 else "")
    if rows <= 0 or columns <= 0:
        raise DicomReadError(label, f"declared image size {size} has no pixels; expected Rows and Columns >= 1")
    ts = UID(str(ds.file_meta.TransferSyntaxUID))
    held = _frames_held(ds) if ts in UncompressedTransferSyntaxes else 0
    what = f"declared image size {size}"
    if held > frames:  # pydicom decodes every frame the data holds, whatever NumberOfFrames says
        what, frames = f"{what}, {held} frames by its pixel data length,", held
    pixels = rows * columns * frames * samples
    if pixels > MAX_IMAGE_PIXELS:
        raise DicomReadError(label, f"{what} ({pixels:.2g} pixels) is over the {MAX_IMAGE_PIXELS}-pixel limit; "
                                    "refused before decoding")
    if ts in UncompressedTransferSyntaxes:  # deflate is undone at read time, so it counts
        expected, got = _expected_bytes(ds), len(ds.PixelData)
        if got < expected:
            raise DicomReadError(label, f"truncated pixel data: expected {expected} bytes, got {got}")


def _frames_held(ds: pydicom.Dataset) -> int:
    """How many whole frames uncompressed pixel data holds, by its length."""
    return len(ds.PixelData) * 8 // _frame_bits(ds)


def _decode(ds: pydicom.Dataset, label: str, source: bytes | None) -> np.ndarray:
    try:
        return decode_pixels(ds, source)  # pydicom 3 converts YBR_* to RGB by default
    except DecodeError as exc:
        ts = UID(str(ds.file_meta.TransferSyntaxUID))
        what = f"{ts} ({ts.name})" if ts.name != ts else f"{ts} (unknown to pydicom)"
        hint = ""
        if ts not in UncompressedTransferSyntaxes:
            hint = "; compressed transfer syntaxes are decoded by the pylibjpeg and python-gdcm plugins"
        raise DicomReadError(label, f"cannot decode pixel data in transfer syntax {what}: {exc}{hint}") from exc


def _frames(ds: pydicom.Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


def read_instance(source: str | os.PathLike | bytes, name: str | None = None,
                  window: tuple[float, float] | None = None, *, folder: str | None = None) -> DicomImage:
    """Read one DICOM instance and run the display pipeline.

    Args:
        source: A file path, an ``"archive.zip:member"`` name, or the file's bytes.
        name: Name used in errors and ``meta.path``; defaults to the path, or
            ``"<bytes>"`` for in-memory data.
        window: (center, width) in rescaled units (HU for CT) replacing the file's VOI,
            e.g. a `medcm.dicom.display.WINDOW_PRESETS` entry chosen by a reader; None keeps the standard
            pipeline.
        folder: Where a file without study/series UIDs is grouped (`InstanceMeta`); default the
            folder part of the name.

    Returns:
        The decoded image.

    Raises:
        DicomReadError: For any failure, chained from the underlying exception.
    """
    if isinstance(source, _BYTES):
        label = name or "<bytes>"
    else:
        label = name or os.fspath(source)
    folder = os.path.dirname(label) if folder is None else folder
    if not isinstance(source, _BYTES):
        source = read_source(source, label)  # read once: parsed and hashed from the same bytes
    digest = hashlib.sha256(source).hexdigest()
    ds = read_dataset(source, label)
    try:
        check_pixel_data(ds, label)
        pixels = to_display(ds, _decode(ds, label, source), window)
        meta = instance_meta(ds, label, pixels.shape[0], digest, folder=folder)
    except DicomReadError:
        raise
    except Exception as exc:  # malformed attribute values surface lazily in pydicom
        raise DicomReadError(label, f"invalid image attributes ({type(exc).__name__}: {exc})") from exc
    return DicomImage(meta=meta, pixels=pixels)
