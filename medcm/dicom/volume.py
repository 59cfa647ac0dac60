"""Assemble one DICOM series (CT, MR, PT) into a 3D volume in patient geometry.

Slices are sorted by the projection of ImagePositionPatient on the normal (row × column cosine),
falling back to InstanceNumber with a warning; enhanced multi-frame files give one slice per frame,
with geometry and rescale from their per-frame (or shared) functional groups. What would give a
silently wrong volume (a missing slice, two different images at one position, mixed orientations,
sizes or pixel spacings) raises `VolumeError`, one line naming the series. Nothing is resampled.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut, pixel_array

from medcm.dicom.read import DicomReadError, check_pixel_data

__all__ = ["VOLUME_MODALITIES", "Volume", "VolumeError", "assemble_volume", "could_be_volume", "is_volume_series",
           "slice_positions", "spacing_problems"]

VOLUME_MODALITIES = frozenset({"CT", "MR", "PT"})
_ENHANCED_SOP_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.4.1"})
_ORIENTATION_TOL = 1e-4  # max abs difference between direction cosines of one series
_PIXEL_SPACING_TOL = 1e-3  # mm
_SAME_POSITION_MM = 0.01  # two slices closer than this along the normal are at the same position
_GAP_FACTOR = 1.5  # a step this many times the median spacing means a missing slice


class VolumeError(ValueError):
    """A series that cannot be assembled into a trustworthy volume; str() is one line naming the series."""


@dataclass(frozen=True, eq=False)
class Volume:
    """A series as a volume; voxel (k, i, j) lies at ``origin + k*sz*n + i*sy*c + j*sx*r``.

    Here ``(sz, sy, sx) = spacing`` and ``r, c, n = direction`` (row cosine, column cosine, normal).

    Attributes:
        study_uid: StudyInstanceUID ("" when absent).
        series_uid: SeriesInstanceUID ("" when absent).
        voxels: float32 [D, H, W] in rescaled units (HU for CT), slice 0 first along the normal.
        spacing: (between slices, between rows, between columns) in mm.
        origin: ImagePositionPatient of slice 0 ((0, 0, 0) when unknown).
        direction: float64 [3, 3]; rows are the row cosine, column cosine and slice normal.
        modality: Modality of the first slice.
        body_part: BodyPartExamined of the first slice ("" when absent).
        sop_instance_uids: Source of each slice; ``"<sop>#<frame number>"`` for frames of a multi-frame file.
        window: (center, width) of the first slice's VOI, if any.
        warnings: One line each, naming the series.
    """

    study_uid: str
    series_uid: str
    voxels: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray
    modality: str
    body_part: str
    sop_instance_uids: tuple[str, ...]
    window: tuple[float, float] | None
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class _Slice:
    """One 2D image of a series: a single-frame dataset, or one frame of a multi-frame one."""

    ds: pydicom.Dataset
    frame: int | None  # 0-based frame index, None for a single-frame dataset
    uid: str
    position: tuple[float, ...] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, ...] | None
    size: tuple[int, int]
    order: tuple[int, int] | None  # (InstanceNumber, in-stack position or frame number): the fallback sort key
    rescale: tuple[float, float] | None  # (slope, intercept); None: the dataset's Modality LUT Sequence
    window: tuple[float, float] | None
    photometric: str


def _floats(value: object, count: int) -> tuple[float, ...] | None:
    """`count` finite numbers from a (multi-valued) DS/FD element value, else None."""
    try:
        values = tuple(float(v) for v in (value if isinstance(value, Sequence) and not isinstance(value, str) else [value]))
    except (TypeError, ValueError):
        return None
    return values if len(values) == count and all(np.isfinite(values)) else None


def _int(value: object) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _attr(ds: pydicom.Dataset, frame: int | None, macro: str, keyword: str, top_level: bool = True) -> object:
    """A frame's value from a functional group macro (per-frame item, then shared), else from the top level."""
    if frame is not None:
        per_frame, shared = ds.get("PerFrameFunctionalGroupsSequence") or [], ds.get("SharedFunctionalGroupsSequence") or []
        for group in (per_frame[frame] if frame < len(per_frame) else None, shared[0] if shared else None):
            items = group.get(macro) if group is not None else None
            if items and keyword in items[0]:
                return items[0].get(keyword)
    return ds.get(keyword) if top_level else None


def _first(value: object) -> object:
    return value[0] if isinstance(value, Sequence) and not isinstance(value, str) and len(value) else value


def _expand(ds: pydicom.Dataset, name: str) -> list[_Slice]:
    """The slices of one dataset: itself, or one per frame (geometry and rescale from the functional groups)."""
    frames, items = max(1, _int(ds.get("NumberOfFrames")) or 1), ds.get("PerFrameFunctionalGroupsSequence")
    if items is not None and len(items) != frames:
        raise VolumeError(f"{name}: instance {ds.get('SOPInstanceUID', '')} has {frames} frames but {len(items)} "
                          "PerFrameFunctionalGroupsSequence items; expected one item per frame")
    sop, number = str(ds.get("SOPInstanceUID", "")), _int(ds.get("InstanceNumber"))
    size = (_int(ds.get("Rows")) or 0, _int(ds.get("Columns")) or 0)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    slices = []
    for i in range(frames):
        frame = None if frames == 1 and items is None else i
        stack = _int(_attr(ds, frame, "FrameContentSequence", "InStackPositionNumber", top_level=False))
        slope = _floats(_attr(ds, frame, "PixelValueTransformationSequence", "RescaleSlope"), 1)
        intercept = _floats(_attr(ds, frame, "PixelValueTransformationSequence", "RescaleIntercept"), 1)
        window = _floats([_first(_attr(ds, frame, "FrameVOILUTSequence", kw)) for kw in ("WindowCenter", "WindowWidth")], 2)
        slices.append(_Slice(
            ds=ds, frame=frame, uid=sop if frame is None else f"{sop}#{i + 1}", size=size, photometric=photometric,
            # a top-level position belongs to the first frame only: never used for frames
            position=_floats(_attr(ds, frame, "PlanePositionSequence", "ImagePositionPatient", frame is None), 3),
            orientation=_floats(_attr(ds, frame, "PlaneOrientationSequence", "ImageOrientationPatient"), 6),
            pixel_spacing=_floats(_attr(ds, frame, "PixelMeasuresSequence", "PixelSpacing"), 2),
            order=(number or 0, stack or i + 1) if frame is not None else None if number is None else (number, 0),
            rescale=None if slope is None and "ModalityLUTSequence" in ds else ((slope or (1.0,))[0],
                                                                             (intercept or (0.0,))[0]),
            window=(window[0], window[1]) if window else None))
    return slices


def _series_name(datasets: Sequence[pydicom.Dataset], label: str) -> str:
    uids = Counter(str(ds.get("SeriesInstanceUID", "")) for ds in datasets)
    where = f" ({label})" if label else ""
    if len(uids) > 1:
        seen = ", ".join(f"{uid or '<none>'} ({n})" for uid, n in uids.items())
        raise VolumeError(f"datasets{where} belong to {len(uids)} series ({seen}); expected the instances of one series")
    uid = next(iter(uids))
    return f"series {uid}{where}" if uid else f"series without SeriesInstanceUID{where}"


def _check_uniform(slices: list[_Slice], name: str) -> None:
    """Raise VolumeError for colour, or for mixed sizes, pixel spacings or orientations."""
    colour = {s.photometric for s in slices if int(s.ds.get("SamplesPerPixel") or 1) > 1 or s.photometric == "PALETTE COLOR"}
    if colour:
        raise VolumeError(f"{name}: colour images ({', '.join(sorted(colour))}); expected greyscale CT/MR/PT slices")
    checks: list[tuple[str, Callable[[_Slice], object], float]] = [
        ("Rows×Columns", lambda s: s.size, 0.0),
        ("PixelSpacing", lambda s: s.pixel_spacing, _PIXEL_SPACING_TOL),
        ("ImageOrientationPatient", lambda s: s.orientation, _ORIENTATION_TOL),
        ("PhotometricInterpretation", lambda s: s.photometric, 0.0),
    ]
    for what, get, tol in checks:
        first = get(slices[0])
        if any(not _close(get(s), first, tol) for s in slices):
            seen = Counter(_show(get(s)) for s in slices)
            listed = "; ".join(f"{value} ({n} slices)" for value, n in seen.most_common(4))
            raise VolumeError(f"{name}: mixed {what} in one series: {listed}; expected one value — the series "
                              f"probably mixes acquisitions (e.g. a localizer), split it before assembling")


def _close(a: object, b: object, tol: float) -> bool:
    if isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b) and tol:
        return bool(np.max(np.abs(np.subtract(a, b))) <= tol) if a else True
    return a == b


def _show(value: object) -> str:
    if isinstance(value, tuple):
        return "×".join(str(v) for v in value) if all(isinstance(v, int) for v in value) \
            else "[" + ", ".join(f"{v:.4g}" for v in value) + "]"
    return str(value)


def _direction(orientation: tuple[float, ...], name: str) -> np.ndarray:
    row, col = np.array(orientation[:3]), np.array(orientation[3:])
    normal = np.cross(row, col)
    if not 0.99 < np.linalg.norm(normal) < 1.01:
        raise VolumeError(f"{name}: ImageOrientationPatient {_show(orientation)} is not two orthogonal unit "
                          "cosines; expected e.g. [1, 0, 0, 0, 1, 0]")
    return np.stack([row, col, normal / np.linalg.norm(normal)]) + 0.0  # + 0.0: no negative zeros


def slice_positions(datasets: Sequence[pydicom.Dataset]) -> list[float] | None:
    """Each single-frame slice's position along the series normal (mm), from headers alone.

    For ordering slices without decoding them (e.g. a viewer's slice scrolling). None when a slice
    lacks ImagePositionPatient or ImageOrientationPatient, or the orientations differ.
    """
    orientations = [_floats(ds.get("ImageOrientationPatient"), 6) for ds in datasets]
    positions = [_floats(ds.get("ImagePositionPatient"), 3) for ds in datasets]
    if not datasets or None in orientations or None in positions:
        return None
    first = orientations[0]
    if any(not np.allclose(o, first, atol=_ORIENTATION_TOL) for o in orientations):
        return None
    normal = np.cross(np.array(first[:3]), np.array(first[3:]))
    return [float(np.dot(position, normal)) for position in positions]


def spacing_problems(positions: Sequence[float], name: str) -> list[str]:
    """Warnings about slice positions along the normal: repeated positions and gaps (missing slices).

    The same rules as `assemble_volume` (a step over 1.5× the median spacing is a gap), from headers
    alone, for callers that show slices without assembling them. Each line starts with `name`.
    """
    ordered = np.sort(np.asarray(positions, dtype=float))
    steps = np.diff(ordered)
    problems = []
    repeated = int((steps < _SAME_POSITION_MM).sum())
    if repeated:
        problems.append(f"{name}: {repeated} slice(s) repeat another slice's position; expected one slice per position")
    distinct = steps[steps >= _SAME_POSITION_MM]
    if distinct.size:
        median = float(np.median(distinct))
        gaps = [(float(ordered[i]), float(steps[i])) for i in range(steps.size) if steps[i] > _GAP_FACTOR * median]
        for start, step in gaps:
            problems.append(f"{name}: gap of {step:g} mm after the slice at {start:g} mm, {step / median:.1f}× the "
                            f"median spacing {median:g} mm: about {round(step / median) - 1} slice(s) missing")
    return problems


def assemble_volume(datasets: Sequence[pydicom.Dataset], label: str = "", allow_gaps: bool = False) -> Volume:
    """Assemble the datasets of ONE series into a volume.

    Args:
        datasets: Classic single-frame slices in any order, or enhanced multi-frame CT/MR/PT file(s).
        label: Where the series came from (a folder or file), used in messages.
        allow_gaps: Assemble a series with missing slices anyway (with a warning) instead of raising.

    Returns:
        The volume, voxels float32 [D, H, W] sorted along the slice normal.

    Raises:
        VolumeError: Missing geometry and InstanceNumber, a gap, conflicting duplicates, mixed
            orientation / size / pixel spacing, colour images, undecodable pixels.
    """
    if not datasets:
        raise VolumeError(f"series{f' ({label})' if label else ''}: no datasets; expected the instances of one series")
    name = _series_name(datasets, label)
    slices = [s for ds in datasets for s in _expand(ds, name)]
    _check_uniform(slices, name)
    warnings: list[str] = []
    slices, keys, direction, located = _sort(slices, name, warnings)
    pixels = _Pixels(name)
    slices, keys = _drop_duplicates(slices, keys, pixels, name, warnings)
    first = slices[0]
    if located:
        step = _slice_spacing(slices, keys, direction, name, allow_gaps, warnings)
    else:
        step = _nominal_spacing(first.ds, first.frame, name, warnings)
    voxels = np.empty((len(slices), *first.size), dtype=np.float32)
    for k, s in enumerate(slices):
        voxels[k] = pixels.rescaled(s)
    if first.photometric == "MONOCHROME1":  # uniform: checked above
        voxels = voxels.min() + voxels.max() - voxels
        warnings.append(f"{name}: MONOCHROME1 slices (unexpected for CT/MR); values inverted within their range")
    row_col = first.pixel_spacing
    if row_col is None:
        row_col = (1.0, 1.0)
        warnings.append(f"{name}: no PixelSpacing; assumed 1 mm between rows and columns")
    return Volume(
        study_uid=str(first.ds.get("StudyInstanceUID", "")), series_uid=str(first.ds.get("SeriesInstanceUID", "")),
        voxels=voxels, spacing=(step, float(row_col[0]), float(row_col[1])),
        origin=tuple(float(v) for v in slices[0].position) if slices[0].position else (0.0, 0.0, 0.0),
        direction=direction, modality=str(first.ds.get("Modality", "")), body_part=str(first.ds.get("BodyPartExamined", "")),
        sop_instance_uids=tuple(s.uid for s in slices), window=slices[0].window, warnings=tuple(warnings))


def _sort(slices: list[_Slice], name: str,
          warnings: list[str]) -> tuple[list[_Slice], list[float], np.ndarray, bool]:
    """Slices sorted along the normal (or by InstanceNumber), their sort keys, the direction, and whether located."""
    first = slices[0]
    located = all(s.position and s.orientation for s in slices)
    if located:
        direction = _direction(first.orientation, name)
        keys = [float(np.dot(s.position, direction[2])) for s in slices]
    else:
        if any(s.order is None for s in slices):
            raise VolumeError(f"{name}: neither ImagePositionPatient/ImageOrientationPatient nor InstanceNumber on "
                              "every slice; expected one of them to order the slices")
        direction = _direction(first.orientation, name) if first.orientation else np.eye(3)
        keys = [float(s.order[0] * 1_000_000 + s.order[1]) for s in slices]
        warnings.append(f"{name}: no ImagePositionPatient/ImageOrientationPatient on every slice; ordered by "
                        "InstanceNumber (frame order within a multi-frame file), slice direction assumed")
    order = sorted(range(len(slices)), key=lambda k: (keys[k], slices[k].order or (0, 0)))
    return [slices[k] for k in order], [keys[k] for k in order], direction, located


class _Pixels:
    """Decodes each dataset once (all frames), returning rescaled float32 slices."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.cache: dict[int, np.ndarray] = {}

    def stored(self, s: _Slice) -> np.ndarray:
        key = id(s.ds)  # the datasets outlive this object, so ids stay unique
        if key not in self.cache:
            try:
                check_pixel_data(s.ds, s.uid or self.name)
                self.cache[key] = pixel_array(s.ds).reshape(-1, *s.size)  # not cached on the caller's dataset
            except DicomReadError as exc:
                raise VolumeError(f"{self.name}: instance {exc}") from exc
            except Exception as exc:
                raise VolumeError(f"{self.name}: cannot decode pixel data of instance {s.uid} "
                                  f"({type(exc).__name__}: {exc})") from exc
        return self.cache[key][s.frame or 0]

    def rescaled(self, s: _Slice) -> np.ndarray:
        """Modality rescale of one slice: float32 [H, W]."""
        values = self.stored(s)
        if s.rescale is None:
            return np.asarray(apply_modality_lut(values, s.ds), dtype=np.float32)
        return (values * s.rescale[0] + s.rescale[1]).astype(np.float32)  # float64 arithmetic, then float32


def _drop_duplicates(slices: list[_Slice], keys: list[float], pixels: _Pixels, name: str,
                     warnings: list[str]) -> tuple[list[_Slice], list[float]]:
    """Keep one of several identical slices at one position; raise for different ones."""
    kept, kept_keys, dropped = [slices[0]], [keys[0]], []
    for s, key in zip(slices[1:], keys[1:]):
        if abs(key - kept_keys[-1]) >= _SAME_POSITION_MM:
            kept.append(s)
            kept_keys.append(key)
        elif np.array_equal(pixels.rescaled(s), pixels.rescaled(kept[-1])):
            dropped.append(s.uid)
        else:
            raise VolumeError(f"{name}: instances {kept[-1].uid} and {s.uid} are at the same position ({key:.4g} along "
                              "the normal) with different pixels; expected one slice per position — the series "
                              "probably mixes echoes, phases or stacks; split it before assembling")
    if dropped:
        warnings.append(f"{name}: dropped {len(dropped)} duplicate slice(s) with identical pixels: {', '.join(dropped[:3])}"
                        + (" …" if len(dropped) > 3 else ""))
    return kept, kept_keys


def _slice_spacing(slices: list[_Slice], keys: list[float], direction: np.ndarray, name: str,
                   allow_gaps: bool, warnings: list[str]) -> float:
    """The median step along the normal; raise (or warn) for gaps, warn for irregular or sheared stacks."""
    if len(keys) < 2:
        return _nominal_spacing(slices[0].ds, slices[0].frame, name, warnings)
    steps = np.diff(keys)
    median = float(np.median(steps))
    for k in np.flatnonzero(steps > _GAP_FACTOR * median):
        message = (f"{name}: gap of {steps[k]:.4g} mm between slices at {keys[k]:.4g} and {keys[k + 1]:.4g} mm along "
                   f"the normal (after {slices[k].uid}), {steps[k] / median:.2g}× the median spacing {median:.4g} mm: "
                   f"about {round(steps[k] / median) - 1} slice(s) missing")
        if not allow_gaps:
            raise VolumeError(message + "; expected every slice of the series (send the whole series)")
        warnings.append(message + "; assembled without them (spacing is wrong across the gap)")
    irregular = (np.abs(steps - median) > 0.1 * median) & (steps <= _GAP_FACTOR * median)
    if irregular.any():
        warnings.append(f"{name}: irregular slice spacing from {steps.min():.4g} to {steps.max():.4g} mm; "
                        f"the volume uses the median {median:.4g} mm")
    offsets = np.array([s.position for s in slices]) - np.outer(np.subtract(keys, keys[0]), direction[2])
    shear = float(np.max(np.linalg.norm(offsets - offsets[0], axis=1)))
    if shear > max(_SAME_POSITION_MM, 0.1 * min(slices[0].pixel_spacing or (1.0,))):
        warnings.append(f"{name}: slices shift up to {shear:.3g} mm in-plane (gantry tilt?); the volume is not "
                        "resampled, so its geometry is sheared")
    return median


def _nominal_spacing(ds: pydicom.Dataset, frame: int | None, name: str, warnings: list[str]) -> float:
    """SpacingBetweenSlices, else SliceThickness (from the functional groups for frames), else 1 mm."""
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = _floats(_attr(ds, frame, "PixelMeasuresSequence", keyword), 1)
        if value and value[0] > 0:
            warnings.append(f"{name}: slice spacing not measurable from positions; using {keyword} {value[0]:.4g} mm")
            return value[0]
    warnings.append(f"{name}: slice spacing unknown (no positions, SpacingBetweenSlices or SliceThickness); assumed 1 mm")
    return 1.0


def could_be_volume(datasets: Sequence[pydicom.Dataset], min_slices: int = 3) -> bool:
    """Whether datasets of one series are CT/MR/PT (or enhanced CT/MR) with at least `min_slices` slices (frames count).

    Headers only. Such a series is worth assembling; `is_volume_series` also asks for plane geometry.
    """
    if not datasets:
        return False
    ds = datasets[0]
    modality, sop_class = str(ds.get("Modality", "")).upper(), str(ds.get("SOPClassUID", ""))
    slices = sum(max(1, _int(d.get("NumberOfFrames")) or 1) for d in datasets)
    return (modality in VOLUME_MODALITIES or sop_class in _ENHANCED_SOP_CLASSES) and slices >= min_slices


def is_volume_series(datasets: Sequence[pydicom.Dataset], min_slices: int = 3) -> bool:
    """Whether datasets of one series look like a volume: CT/MR/PT, full plane geometry, >= `min_slices` slices."""
    if not could_be_volume(datasets, min_slices):
        return False
    try:
        return all(s.position and s.orientation for ds in datasets for s in _expand(ds, "series"))
    except VolumeError:
        return False
