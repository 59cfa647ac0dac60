"""The grey-scale display pipeline (PS3.3 C.11): stored pixel values to display greyscale in [0, 1].

Colour to luminance (colour images only) -> Modality LUT / rescale -> VOI LUT or window (or a
modality default, or robust percentiles) -> MONOCHROME1 inversion, giving float32 [F, H, W].
`medcm.dicom.read` decodes the pixels and calls `to_display`; reading windows (`WINDOW_PRESETS`)
replace a file's own VOI when a reader chooses one.
"""

from __future__ import annotations

import numpy as np
import pydicom
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi

from medcm.dicom.meta import attribute_floats

__all__ = ["WINDOW_PRESETS", "apply_window", "default_window", "to_display"]

# Reading windows (center, width) in HU, as PACS viewers offer them for CT.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "abdomen": (40.0, 400.0),
}
_HEAD_PARTS = frozenset({"HEAD", "BRAIN", "SKULL"})


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
    out = apply_window(values, window[0], window[1], "LINEAR") if window else _apply_voi(ds, values)
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
    centers, widths = attribute_floats(ds.get("WindowCenter")), attribute_floats(ds.get("WindowWidth"))
    function = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
    # PS3.3 C.11.2.1.2: width >= 1 for LINEAR, > 0 for LINEAR_EXACT and SIGMOID.
    if centers and widths and widths[0] >= (1 if function == "LINEAR" else 1e-9):
        return apply_window(values, centers[0], widths[0], function)
    window = default_window(str(ds.get("Modality") or ""), str(ds.get("BodyPartExamined") or ""))
    if window is not None:
        return apply_window(values, window[0], window[1], "LINEAR")
    return _percentile_scale(values)


def apply_window(x: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """A PS3.3 C.11.2.1.2 window function with output range [0, 1].

    Args:
        x: Rescaled values (HU for CT), any shape.
        center: Window center.
        width: Window width (>= 1 for LINEAR, > 0 otherwise).
        function: VOILUTFunction: ``"LINEAR"``, ``"LINEAR_EXACT"`` or ``"SIGMOID"``.

    Returns:
        Values in [0, 1], the shape of `x`.
    """
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
