"""Read DICOM images into display-ready greyscale arrays plus the metadata we need.

Every pixel goes through the standard DICOM grey-scale pipeline (PS3.3 C.11):
decode -> colour to luminance (colour images only) -> Modality LUT / rescale ->
VOI LUT or window (or a modality default, or robust percentiles) -> MONOCHROME1
inversion, giving float32 arrays of shape [frames, rows, columns] in [0, 1].

Readers never let one bad file stop a batch: `iter_dicom` and `read_studies`
report failures as `DicomReadError` values alongside the images that did read.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import math
import os
import posixpath
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi
from pydicom.uid import (
    RE_VALID_UID,
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    UncompressedTransferSyntaxes,
    generate_uid,
)

__all__ = [
    "WINDOW_PRESETS", "DicomImage", "DicomReadError", "InstanceMeta", "ReadResult", "Series", "Study",
    "default_window", "instance_meta", "iter_dicom", "iter_sources", "read_instance", "read_studies", "to_display",
    "write_image",
]

# Files in folders/zips with these suffixes are never DICOM; skipping them keeps
# licences and readmes that travel with image sets out of the error list.
_NOT_DICOM_SUFFIXES = frozenset(
    {".txt", ".md", ".json", ".csv", ".xml", ".html", ".htm", ".pdf", ".py",
     ".log", ".ini", ".yaml", ".yml", ".png", ".jpg", ".jpeg", ".gif"}
)
# Reading windows (center, width) in HU, as PACS viewers offer them for CT.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "abdomen": (40.0, 400.0),
}
_HEAD_PARTS = frozenset({"HEAD", "BRAIN", "SKULL"})
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"  # single-frame SC: a valid IOD with few requirements
_MULTIFRAME_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"
_MAX_ZIP_MEMBER = 2**31  # bytes; refuse larger members rather than exhaust memory
MAX_IMAGE_PIXELS = 2**28  # rows*columns*frames*samples; larger declared images are refused before decoding


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


@dataclass(frozen=True)
class InstanceMeta:
    """Metadata of one DICOM instance; empty strings stand for absent text attributes.

    ``study_uid`` and ``series_uid`` are never empty: when the file lacks them they
    are ``"unknown-study:<folder>"`` / ``"unknown-series:<folder>"``, so UID-less
    files group together per containing folder (or zip folder) and nowhere else.
    """

    path: str
    sop_instance_uid: str
    sop_class_uid: str
    study_uid: str
    series_uid: str
    patient_id: str
    modality: str
    body_part: str
    view: str
    plane: str
    study_date: str
    study_description: str
    series_description: str
    rows: int
    columns: int
    frames: int
    pixel_spacing: tuple[float, float] | None
    instance_number: int | None
    photometric: str
    bits_stored: int
    transfer_syntax: str
    content_sha256: str = ""  # sha256 of the file's bytes: tells a re-sent copy from a changed file


# eq=False: comparing/hashing numpy arrays field-wise is ambiguous, so identity it is.
@dataclass(frozen=True, eq=False)
class DicomImage:
    """One instance: its metadata and float32 [F, H, W] pixels in [0, 1]."""

    meta: InstanceMeta
    pixels: np.ndarray


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


def read_instance(source: str | os.PathLike | bytes, name: str | None = None,
                  window: tuple[float, float] | None = None) -> DicomImage:
    """Read one DICOM instance and run the display pipeline.

    Args:
        source: A file path, or the file's bytes.
        name: Name used in errors and ``meta.path``; defaults to the path, or
            ``"<bytes>"`` for in-memory data.
        window: (center, width) in rescaled units (HU for CT) replacing the file's VOI,
            e.g. a `WINDOW_PRESETS` entry chosen by a reader; None keeps the standard pipeline.

    Returns:
        The decoded image.

    Raises:
        DicomReadError: For any failure, chained from the underlying exception.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = name or "<bytes>"
    else:
        label = name or os.fspath(source)
    return _read(source, label, os.path.dirname(label), window)


def _read(source: str | os.PathLike | bytes, label: str, folder: str,
          window: tuple[float, float] | None = None) -> DicomImage:
    if not isinstance(source, (bytes, bytearray, memoryview)):
        try:
            source = Path(source).read_bytes()  # read once: parsed and hashed from the same bytes
        except OSError as exc:
            raise DicomReadError(label, f"cannot read file: {exc}") from exc
    digest = hashlib.sha256(source).hexdigest()
    ds = _load(source, label)
    try:
        _check_pixel_data(ds, label)
        pixels = to_display(ds, _decode(ds, label), window)
        meta = _meta(ds, label, folder, pixels.shape[0], digest)
    except DicomReadError:
        raise
    except Exception as exc:  # malformed attribute values surface lazily in pydicom
        raise DicomReadError(label, f"invalid image attributes ({type(exc).__name__}: {exc})") from exc
    return DicomImage(meta=meta, pixels=pixels)


def _open(source: str | os.PathLike | bytes) -> str | os.PathLike | io.BytesIO:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(source))
    return source


def _load(source: str | os.PathLike | bytes, label: str) -> pydicom.Dataset:
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
        with warnings.catch_warnings(), _quiet_pydicom_log():
            warnings.simplefilter("ignore")  # pydicom warns (and logs) about every garbage element
            ds = pydicom.dcmread(_open(source), force=True)
            for _ in ds:  # converts every raw element; garbage fails here
                pass
        ok = "PixelData" in ds and ("SOPInstanceUID" in ds or "Rows" in ds)
    except Exception as exc:
        raise DicomReadError(label, reason) from exc
    if not ok:
        raise DicomReadError(label, reason) from first
    return ds


@contextlib.contextmanager
def _quiet_pydicom_log() -> Iterator[None]:
    logger = logging.getLogger("pydicom")
    previous = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(previous)


def _expected_bytes(ds: pydicom.Dataset) -> int:
    samples = int(ds.get("SamplesPerPixel") or 1)
    if str(ds.get("PhotometricInterpretation", "")).strip() == "YBR_FULL_422":
        samples = 2  # chroma is stored horizontally subsampled
    bits = ds.Rows * ds.Columns * _frames(ds) * samples * int(ds.BitsAllocated)
    return (bits + 7) // 8


def _check_pixel_data(ds: pydicom.Dataset, label: str) -> None:
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
    pixels = rows * columns * frames * samples
    if pixels > MAX_IMAGE_PIXELS:
        raise DicomReadError(label, f"declared image size {size} ({pixels:.2g} pixels) is over the "
                                    f"{MAX_IMAGE_PIXELS}-pixel limit; expected a real image")
    ts = UID(str(ds.file_meta.TransferSyntaxUID))
    if ts in UncompressedTransferSyntaxes:  # deflate is undone at read time, so it counts
        expected, got = _expected_bytes(ds), len(ds.PixelData)
        if got < expected:
            raise DicomReadError(label, f"truncated pixel data: expected {expected} bytes, got {got}")


def _decode(ds: pydicom.Dataset, label: str) -> np.ndarray:
    try:
        return ds.pixel_array  # pydicom 3 converts YBR_* to RGB by default
    except Exception as exc:
        ts = UID(str(ds.file_meta.TransferSyntaxUID))
        what = f"{ts} ({ts.name})" if ts.name != ts else f"{ts} (unknown to pydicom)"
        hint = ""
        if ts not in UncompressedTransferSyntaxes:
            hint = "; compressed transfer syntaxes are decoded by the pylibjpeg and python-gdcm plugins"
        raise DicomReadError(
            label, f"cannot decode pixel data in transfer syntax {what}: {exc}{hint}"
        ) from exc


def _frames(ds: pydicom.Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


def _text(ds: pydicom.Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, (MultiValue, list, tuple)):
        return "\\".join(str(v).strip() for v in value)
    return str(value).strip()


def _floats(value: object) -> list[float]:
    """Numbers of a (possibly multi-valued) attribute; [] when absent or malformed."""
    if value is None or value == "":
        return []
    items = value if isinstance(value, (MultiValue, list, tuple)) else [value]
    try:
        out = [float(v) for v in items]
    except (TypeError, ValueError):
        return []
    return out if all(math.isfinite(v) for v in out) else []


def _spacing(ds: pydicom.Dataset) -> tuple[float, float] | None:
    # Zero or negative spacings occur in the wild (e.g. "0\0") and mean "unknown".
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        values = _floats(ds.get(keyword))
        if len(values) == 2 and min(values) > 0:
            return (values[0], values[1])
    return None


def _plane(ds: pydicom.Dataset) -> str:
    """Classify ImageOrientationPatient by the dominant axis of the slice normal."""
    values = _floats(ds.get("ImageOrientationPatient"))
    if len(values) != 6:
        return ""
    normal = np.cross(values[:3], values[3:])
    norm = float(np.linalg.norm(normal))
    if norm < 1e-6:
        return ""
    normal = np.abs(normal) / norm
    axis = int(np.argmax(normal))
    if normal[axis] < 0.8:  # more than ~37 degrees off every patient axis
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def instance_meta(ds: pydicom.Dataset, path: str | os.PathLike, frames: int, content_sha256: str) -> InstanceMeta:
    """The metadata `read_instance` would give for `ds` stored at `path`, without decoding its pixels.

    For a caller that already holds the pixels, e.g. a de-identified copy of an image it has read.
    """
    return _meta(ds, os.fspath(path), os.path.dirname(os.fspath(path)), frames, content_sha256)


def _meta(ds: pydicom.Dataset, label: str, folder: str, frames: int, content_sha256: str) -> InstanceMeta:
    date, number = _text(ds, "StudyDate"), _floats(ds.get("InstanceNumber"))
    return InstanceMeta(
        path=label,
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
        sop_class_uid=_text(ds, "SOPClassUID"),
        study_uid=_text(ds, "StudyInstanceUID") or f"unknown-study:{folder}",
        series_uid=_text(ds, "SeriesInstanceUID") or f"unknown-series:{folder}",
        patient_id=_text(ds, "PatientID"),
        modality=_text(ds, "Modality"),
        body_part=_text(ds, "BodyPartExamined"),
        view=_text(ds, "ViewPosition"),
        plane=_plane(ds),
        study_date=date if len(date) == 8 and date.isdigit() else "",
        study_description=_text(ds, "StudyDescription"),
        series_description=_text(ds, "SeriesDescription"),
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        frames=frames,
        pixel_spacing=_spacing(ds),
        instance_number=int(number[0]) if len(number) == 1 else None,
        photometric=_text(ds, "PhotometricInterpretation"),
        bits_stored=int(ds.get("BitsStored") or ds.BitsAllocated),
        transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
        content_sha256=content_sha256,
    )


def default_window(modality: str, body_part: str) -> tuple[float, float] | None:
    """Fallback (center, width) in rescaled units when a file carries no VOI.

    Args:
        modality: DICOM Modality, e.g. ``"CT"``.
        body_part: BodyPartExamined, e.g. ``"HEAD"``.

    Returns:
        The brain window (40, 80) for head CT, soft tissue (40, 400) for other CT,
        and None for every other modality, meaning "use robust percentiles".
    """
    if modality.strip().upper() != "CT":
        return None
    return (40.0, 80.0) if body_part.strip().upper() in _HEAD_PARTS else (40.0, 400.0)


def to_display(ds: pydicom.Dataset, arr: np.ndarray, window: tuple[float, float] | None = None) -> np.ndarray:
    """Map stored pixel values to display greyscale.

    Args:
        ds: The dataset the pixels came from (supplies the LUT/window attributes).
        arr: Stored values as returned by ``ds.pixel_array``: [H, W], [F, H, W],
            or with a trailing RGB axis. YBR data must already be RGB (pydicom's
            default).
        window: (center, width) LINEAR window replacing the file's VOI (greyscale only).

    Returns:
        float32 array [F, H, W] with values in [0, 1].

    Raises:
        ValueError: If ``arr``'s shape does not fit SamplesPerPixel.
    """
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    samples = int(ds.get("SamplesPerPixel") or 1)
    frames = _as_frames(np.asarray(arr), samples)
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(frames, ds)
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        return _luminance(rgb, 2.0**bits - 1)
    if samples > 1:
        bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8)
        return _luminance(frames, 2.0**bits - 1)
    # float32 halves memory for long multi-frame series and is exact for 16-bit data.
    values = np.asarray(apply_modality_lut(frames, ds), dtype=np.float32)
    out = _window(values, window[0], window[1], "LINEAR") if window else _apply_voi(ds, values)
    if photometric == "MONOCHROME1":
        out = 1.0 - out
    return out.astype(np.float32)


def _as_frames(arr: np.ndarray, samples: int) -> np.ndarray:
    colour = samples > 1
    if arr.ndim == (3 if colour else 2):
        arr = arr[None]
    if arr.ndim != (4 if colour else 3) or (colour and arr.shape[-1] != samples):
        raise ValueError(
            f"pixel array shape {arr.shape} does not fit SamplesPerPixel={samples}: expected "
            + ("[H, W, S] or [F, H, W, S]" if colour else "[H, W] or [F, H, W]")
        )
    return arr


def _luminance(rgb: np.ndarray, max_value: float) -> np.ndarray:
    rgb = rgb.astype(np.float64)
    grey = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    return np.clip(grey / max_value, 0.0, 1.0).astype(np.float32)


def _apply_voi(ds: pydicom.Dataset, values: np.ndarray) -> np.ndarray:
    """VOI LUT, else first window, else modality default, else percentiles -> [0, 1]."""
    if ds.get("VOILUTSequence"):
        return _voi_lut(ds, values)
    centers, widths = _floats(ds.get("WindowCenter")), _floats(ds.get("WindowWidth"))
    function = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
    # PS3.3 C.11.2.1.2: width >= 1 for LINEAR, > 0 for LINEAR_EXACT and SIGMOID.
    if centers and widths and widths[0] >= (1 if function == "LINEAR" else 1e-9):
        return _window(values, centers[0], widths[0], function)
    window = default_window(str(ds.get("Modality") or ""), str(ds.get("BodyPartExamined") or ""))
    if window is not None:
        return _window(values, window[0], window[1], "LINEAR")
    return _percentile_scale(values)


def _window(x: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """PS3.3 C.11.2.1.2 window functions with output range [0, 1]."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(np.clip(-4.0 * (x - center) / width, -700, 700)))
    if function == "LINEAR_EXACT":
        return np.clip((x - center) / width + 0.5, 0.0, 1.0)
    if width == 1:  # degenerate LINEAR window is a threshold
        return (x > center - 0.5).astype(np.float64)
    return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _voi_lut(ds: pydicom.Dataset, values: np.ndarray) -> np.ndarray:
    descriptor = ds.VOILUTSequence[0].LUTDescriptor
    entries, first = int(descriptor[0]) or 2**16, int(descriptor[1])
    # Evaluate the whole table once; its own range normalises the output, since
    # descriptor bit depths are often larger than the values actually used.
    table = apply_voi(np.arange(first, first + entries, dtype=np.int64), ds).astype(np.float64)
    lo, hi = float(table.min()), float(table.max())
    index = np.clip(np.rint(values) - first, 0, entries - 1).astype(np.int64)
    if hi <= lo:
        return np.zeros(values.shape)
    return (table[index] - lo) / (hi - lo)


def _percentile_scale(values: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(values, [0.5, 99.5])
    if hi <= lo:  # mostly-flat image: fall back to the full range
        lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(values.shape)
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0)


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
    `DicomReadError` instead. Shared by `iter_dicom` and `medcm.dicom.volume`.
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
        return _read(source, label, folder)
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
            label = f"{archive}:{member.filename}"
            problem = zip_member_problem(member)  # before _skip, which hides "../x" as a dot-entry
            if problem:
                yield DicomReadError(label, problem)
                continue
            if _skip(member.filename):
                continue
            if member.file_size > _MAX_ZIP_MEMBER:
                yield DicomReadError(label, f"zip member is {member.file_size} bytes, over the {_MAX_ZIP_MEMBER} limit")
                continue
            try:
                data = zf.read(member)
            except Exception as exc:  # noqa: BLE001 - reported per member: CRC error, bad compression ...
                yield _chained(DicomReadError(label, f"cannot extract zip member: {exc}"), exc)
                continue
            yield label, f"{archive}:{posixpath.dirname(member.filename)}", data


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


def write_image(path: str | os.PathLike, pixels: np.ndarray, *, patient_id: str = "ANON", modality: str = "OT",
                study_description: str = "", body_part: str = "", monochrome1: bool = False,
                study_uid: str | None = None, series_uid: str | None = None,
                sop_instance_uid: str | None = None) -> Path:
    """Write greyscale [H, W] or [F, H, W] pixels in [0, 1] as a 16-bit Secondary Capture DICOM file.

    The object validates with dicom3tools' dciodvfy. It carries a window spanning the full 16-bit
    range, so ``read_instance`` returns the input to within 1e-5, whichever photometric is chosen.

    Args:
        path: Destination file; parent folders are created.
        pixels: Display values in [0, 1].
        patient_id: PatientID.
        modality: Modality recorded in the series (the SOP class stays Secondary Capture).
        study_description: StudyDescription.
        body_part: BodyPartExamined.
        monochrome1: Store inverted, as MONOCHROME1 (single-frame only; exercises the reader's inversion).
        study_uid: StudyInstanceUID; default a new random UID.
        series_uid: SeriesInstanceUID; default a new random UID.
        sop_instance_uid: SOPInstanceUID; default a new random UID. Fixed UIDs (with fixed pixels
            and attributes) make the file byte-for-byte reproducible, as re-imports need.

    Returns:
        The path written.

    Raises:
        ValueError: If ``pixels`` is not 2-D/3-D, has values outside [0, 1] (NaN included), is
            multi-frame with ``monochrome1``, or a given UID is not a valid DICOM UID.
    """
    arr = np.asarray(pixels, dtype=np.float64)
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise ValueError(f"{path}: got pixels of shape {arr.shape}, expected [H, W] or [F, H, W]")
    if not (np.all(arr >= 0) and np.all(arr <= 1)):  # also rejects NaN
        raise ValueError(f"{path}: got pixel values in [{np.nanmin(arr)}, {np.nanmax(arr)}], expected [0, 1]")
    if arr.ndim == 3 and monochrome1:
        raise ValueError(f"{path}: multi-frame Secondary Capture allows MONOCHROME2 only; pass monochrome1=False")
    uids = {"study_uid": study_uid, "series_uid": series_uid, "sop_instance_uid": sop_instance_uid}
    for name, uid in uids.items():
        if uid is not None and (len(uid) > 64 or not RE_VALID_UID.match(uid)):
            raise ValueError(f"{path}: {name} {uid!r} is not a DICOM UID; expected digits and dots, 64 chars at most")
    ds = _secondary_capture_dataset(arr.ndim == 3, patient_id, modality, study_description, body_part,
                                    (study_uid, series_uid, sop_instance_uid))
    if arr.ndim == 3:
        ds.NumberOfFrames = arr.shape[0]
    ds.Rows, ds.Columns = arr.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.WindowCenter, ds.WindowWidth = 32768, 65536  # LINEAR: stored 0 -> 0.0, 65535 -> 1.0
    ds.PixelData = np.rint((1.0 - arr if monochrome1 else arr) * 65535).astype(np.uint16).tobytes()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out, enforce_file_format=True)
    return out


def _secondary_capture_dataset(multiframe: bool, patient_id: str, modality: str, study_description: str,
                               body_part: str, uids: tuple[str | None, str | None, str | None] = (None, None, None),
                               ) -> pydicom.Dataset:
    """Patient, study, series and SC equipment modules, with empty Type 2 attributes where unknown.

    `uids` are (study, series, SOP instance) UIDs; each None is replaced by a new random UID.
    """
    study_uid, series_uid, sop_uid = (uid or generate_uid() for uid in uids)
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = _MULTIFRAME_WORD_SC if multiframe else _SECONDARY_CAPTURE
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = sop_uid, study_uid, series_uid
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "", patient_id, "", ""
    ds.StudyDate, ds.StudyTime, ds.ReferringPhysicianName, ds.StudyID, ds.AccessionNumber = "", "", "", "", ""
    ds.StudyDescription, ds.Modality, ds.SeriesNumber, ds.InstanceNumber = study_description, modality, 1, 1
    ds.ConversionType, ds.PatientOrientation, ds.BurnedInAnnotation, ds.Laterality = "WSD", "", "NO", ""
    if body_part:
        ds.BodyPartExamined = body_part
    if multiframe:  # Multi-frame SC: frames are indexed by frame number alone
        ds.FrameIncrementPointer = pydicom.tag.Tag("FrameTime")
        ds.FrameTime = 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType, ds.PresentationLUTShape = 0, 1, "US", "IDENTITY"
    return ds
