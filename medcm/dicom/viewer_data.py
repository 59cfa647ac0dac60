"""What an interactive viewer needs from a stored image: values after the modality LUT, colour kept, windows, geometry.

The grey-scale pipeline of `medcm.dicom.display` ends in [0, 1] display values with colour reduced to
luminance, which suits the encoders. A viewer instead windows the values itself (a reader drags the
window), so `read_viewer_frames` stops after the Modality LUT (Hounsfield units for CT) and keeps
colour: RGB as stored, YBR converted to RGB by the decoder, PALETTE COLOR expanded through its lookup
tables, all as 8-bit RGB. It also gives the file's default window (its own window, else the modality's
default, else the 0.5th–99.5th percentiles), MONOCHROME1 (to show inverted), the pixel spacing and the
image orientation (for orientation markers). `encode_frame` packs one frame compactly for a browser:
a small JSON header and the raw little-endian pixels, never the file or its other attributes.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut

from medcm.dicom.decode import DecodeError, decode_pixels
from medcm.dicom.display import WINDOW_PRESETS, default_window
from medcm.dicom.meta import attribute_floats, pixel_spacing
from medcm.dicom.read import DicomReadError, check_pixel_data, read_dataset, read_source

__all__ = ["ViewerFrames", "encode_frame", "middle_index", "read_viewer_frames", "viewer_presets"]

_ALIGN = 8  # the pixels start at a multiple of this, so a browser can view them as Int16Array / Float32Array
_INT16 = (np.iinfo(np.int16).min, np.iinfo(np.int16).max)


@dataclass(frozen=True, eq=False)
class ViewerFrames:
    """The frames of one stored image as a viewer shows them.

    Attributes:
        pixels: int16 or float32 `[F, H, W]` values after the Modality LUT (grey), or uint8 `[F, H, W, 3]` RGB.
        window: the default (center, width) in the values' units ((127.5, 256) for colour).
        invert: MONOCHROME1: show high values dark.
        modality: the DICOM Modality ("" when absent).
        spacing: (row, column) pixel spacing in mm, None when unknown.
        orientation: ImageOrientationPatient's six direction cosines, None when absent.
        patient_orientation: PatientOrientation (projection images): the patient directions of the rows and
            the columns, e.g. ("L", "F") or ("A", "FR"), None when absent.
        frame_time_ms: the time between frames of a cine (FrameTime, else 1000 / CineRate), None when unknown.
    """

    pixels: np.ndarray
    window: tuple[float, float]
    invert: bool
    modality: str
    spacing: tuple[float, float] | None
    orientation: tuple[float, ...] | None
    frame_time_ms: float | None
    patient_orientation: tuple[str, str] | None = None

    @property
    def colour(self) -> bool:
        """Whether the frames are RGB."""
        return self.pixels.ndim == 4


def middle_index(count: int) -> int:
    """The frame a series opens on: its middle one (of 5 slices the 3rd, index 2; of 4 the 2nd, index 1).

    Raises:
        ValueError: `count` below 1.
    """
    if count < 1:
        raise ValueError(f"middle of {count} frames: expected at least one frame")
    return (count - 1) // 2


def viewer_presets(modality: str, colour: bool = False) -> dict[str, tuple[float, float]]:
    """The reading windows (name → (center, width)) offered for a modality: the HU presets for CT, none otherwise.

    Hounsfield windows mean nothing for MR, ultrasound, mammography or radiographs, whose values have no
    fixed scale; those are windowed from the file's own window, by dragging, or by the full range.
    """
    return dict(WINDOW_PRESETS) if modality.strip().upper() == "CT" and not colour else {}


def read_viewer_frames(source: str | os.PathLike | bytes, name: str | None = None) -> ViewerFrames:
    """Read a DICOM file, zip member (``"archive.zip:member"``) or bytes for a viewer (see the module's notes).

    Args:
        source: the file, member name or bytes.
        name: used in errors; default the path, ``"<bytes>"`` for bytes.

    Returns:
        The frames, their default window and geometry.

    Raises:
        DicomReadError: naming the file: unreadable, no pixel data, too large, or not decodable.
    """
    label = name or ("<bytes>" if isinstance(source, (bytes, bytearray)) else os.fspath(source))
    data = bytes(source) if isinstance(source, (bytes, bytearray)) else read_source(source, label)
    ds = read_dataset(data, label)
    check_pixel_data(ds, label)
    try:
        stored = decode_pixels(ds, data)
    except DecodeError as exc:
        raise DicomReadError(label, f"cannot decode pixel data: {exc}") from exc
    try:
        return _frames(ds, stored)
    except Exception as exc:  # malformed attribute values surface lazily in pydicom
        raise DicomReadError(label, f"invalid image attributes for viewing ({type(exc).__name__}: {exc})") from exc


def _frames(ds: pydicom.Dataset, stored: np.ndarray) -> ViewerFrames:
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    samples = int(ds.get("SamplesPerPixel") or 1)
    colour = photometric == "PALETTE COLOR" or samples > 1
    arr = stored[None] if stored.ndim == (3 if samples > 1 else 2) else stored  # one frame: [1, H, W(, 3)]
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        pixels = _to_uint8(rgb, int(ds.RedPaletteColorLookupTableDescriptor[2]))
    elif samples > 1:
        pixels = _to_uint8(arr, int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8))
    else:
        values = np.asarray(apply_modality_lut(arr, ds))
        pixels = _compact(values)
    modality = str(ds.get("Modality") or "").strip().upper()
    window = (127.5, 256.0) if colour else _default_window(ds, pixels, modality)
    orientation = attribute_floats(ds.get("ImageOrientationPatient"))
    return ViewerFrames(pixels=np.ascontiguousarray(pixels), window=window,
                        invert=photometric == "MONOCHROME1" and not colour, modality=modality,
                        spacing=pixel_spacing(ds), orientation=tuple(orientation) if len(orientation) == 6 else None,
                        frame_time_ms=_frame_time(ds), patient_orientation=_patient_orientation(ds))


def _to_uint8(rgb: np.ndarray, bits: int) -> np.ndarray:
    """RGB samples of `bits` bits as 8-bit RGB."""
    if bits <= 8:
        return rgb.astype(np.uint8)
    return np.clip(np.rint(rgb.astype(np.float32) * (255.0 / (2.0**bits - 1))), 0, 255).astype(np.uint8)


def _compact(values: np.ndarray) -> np.ndarray:
    """int16 when the values are whole and fit (CT in HU, most MR), float32 otherwise."""
    if np.issubdtype(values.dtype, np.integer) or np.array_equal(values, np.rint(values)):
        if values.size == 0 or (values.min() >= _INT16[0] and values.max() <= _INT16[1]):
            return values.astype(np.int16)
    return values.astype(np.float32)


def _default_window(ds: pydicom.Dataset, values: np.ndarray, modality: str) -> tuple[float, float]:
    """The file's first window, else the modality default (CT), else the 0.5th–99.5th percentiles."""
    centers, widths = attribute_floats(ds.get("WindowCenter")), attribute_floats(ds.get("WindowWidth"))
    if centers and widths and widths[0] >= 1:
        return centers[0], widths[0]
    if ds.get("VOILUTSequence"):  # a LUT: window over the input range it covers
        descriptor = ds.VOILUTSequence[0].LUTDescriptor
        entries, first = int(descriptor[0]) or 2**16, int(descriptor[1])
        return first + entries / 2.0, float(entries)
    fallback = default_window(modality, str(ds.get("BodyPartExamined") or ""))
    if fallback is not None:
        return fallback
    lo, hi = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    if hi <= lo:
        lo, hi = float(values.min()), float(values.max())
    return (lo + hi) / 2.0, max(hi - lo, 1.0)


def _patient_orientation(ds: pydicom.Dataset) -> tuple[str, str] | None:
    value = ds.get("PatientOrientation")
    values = [str(v).strip().upper() for v in (value if isinstance(value, (list, tuple, MultiValue)) else [value])
              if v is not None]
    if len(values) == 2 and all(v and set(v) <= set("LRAPHF") for v in values):
        return values[0], values[1]
    return None


def _frame_time(ds: pydicom.Dataset) -> float | None:
    time = attribute_floats(ds.get("FrameTime"))
    if time and time[0] > 0:
        return time[0]
    rate = attribute_floats(ds.get("CineRate")) or attribute_floats(ds.get("RecommendedDisplayFrameRate"))
    return 1000.0 / rate[0] if rate and rate[0] > 0 else None


def encode_frame(frames: ViewerFrames, index: int) -> bytes:
    """One frame for a browser: uint32 LE header length, a UTF-8 JSON header, zero padding to 8 bytes, pixels.

    The header: `{"rows", "columns", "samples" (1 or 3), "dtype" ("int16", "float32" or "uint8"), "window":
    [center, width], "invert", "spacing": [row, column] | null, "orientation": [6 floats] | null,
    "patient_orientation": [row direction, column direction] | null}`; the pixels
    are little-endian, row by row (RGB interleaved).

    Raises:
        IndexError: `index` outside the frames.
    """
    count = frames.pixels.shape[0]
    if not 0 <= index < count:
        raise IndexError(f"frame {index}: the image has {count} frame(s), 0 to {count - 1}")
    frame = frames.pixels[index]
    header = json.dumps({
        "rows": int(frame.shape[0]), "columns": int(frame.shape[1]), "samples": 3 if frames.colour else 1,
        "dtype": frame.dtype.name, "window": [float(v) for v in frames.window], "invert": frames.invert,
        "spacing": list(frames.spacing) if frames.spacing else None,
        "orientation": list(frames.orientation) if frames.orientation else None,
        "patient_orientation": list(frames.patient_orientation) if frames.patient_orientation else None,
    }, separators=(",", ":")).encode("utf-8")
    padding = -(4 + len(header)) % _ALIGN
    body = np.ascontiguousarray(frame, dtype=frame.dtype.newbyteorder("<")).tobytes()
    return struct.pack("<I", len(header)) + header + b"\0" * padding + body
