"""A small synthetic chest-CT data set whose volume content determines its report.

Each case is an axial CT series in Hounsfield units: an elliptical body of random size and position
(soft tissue, a fat rim, a rib ring, a spine, two lungs that narrow towards the apex and the
diaphragm) with Gaussian noise, and at most one finding:

- "nodule": a small soft-tissue sphere in one lung's upper or lower half, visible on ~2-4 slices;
- "effusion": a dependent (posterior) fluid layer in one lung, from the lung base over most slices;
- "fracture": a gap in the rib ring on one side, on 2-4 adjacent slices at a random level;
- "normal": none.

Nodules and fractures sit at a random depth, so a single middle slice misses most of them; that is
what a volume encoder has to do better than a 2D one. Reports say the finding with varied wording,
its side and (for nodules and fractures) its level. Geometry follows DICOM's patient coordinates
(LPS): columns run to the patient's left, rows posterior, slice 0 is the most inferior.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FINDINGS = ("normal", "nodule", "effusion", "fracture")
HU = {"air": -1000.0, "lung": -850.0, "fat": -100.0, "fluid": 10.0, "soft": 40.0, "marrow": 250.0, "bone": 700.0}
FOV_MM = 360.0  # in-plane field of view, whatever the matrix size
SLICE_MM = 8.0  # slice thickness and spacing
_CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
_UID_PREFIX = "1.2.826.0.1.3680043.8.498."  # pydicom's root, as generate_uid uses by default
_INTERCEPT = -1024.0

_NODULE = (
    ("A {noun} is seen in the {side} {level} lobe.", "{Side} {level} lobe nodule."),
    ("There is a {noun} in the {level} lobe of the {side} lung.", "Solitary pulmonary nodule, {side} {level} lobe."),
    ("{Noun} in the {side} {level} lobe, about {mm} mm.", "{Side} {level} lobe nodule; follow-up CT advised."),
)
_NODULE_NOUNS = ("pulmonary nodule", "solid nodule", "rounded soft-tissue nodule")
_EFFUSION = (
    ("There is a {size} {side} pleural effusion layering dependently.", "{Size} {side} pleural effusion."),
    ("{Size} {side}-sided pleural fluid collection posteriorly.", "{Side} pleural effusion, {size}."),
    ("Dependent fluid in the {side} pleural space, {size} in volume.", "{Size} {side} effusion."),
)
_FRACTURE = (
    ("Cortical break in one of the {level} {side} ribs with a small gap.", "Acute {side} rib fracture."),
    ("There is an acute fracture of a {side} {level} rib.", "Fracture of one {level} {side} rib."),
    ("Discontinuity of one {level} {side} rib, consistent with fracture.", "{Side} {level} rib fracture."),
)
_NORMAL = (
    ("The lungs are clear. No pleural effusion.", "Normal chest CT."),
    ("No pulmonary nodule or pleural fluid. The ribs are intact.", "No acute abnormality."),
    ("Clear lungs without focal lesion; bones unremarkable.", "No acute cardiopulmonary findings."),
)
_EXTRAS = ("", "", "Heart size is normal. ", "The mediastinum is unremarkable. ")


@dataclass(frozen=True)
class SyntheticVolumeCase:
    """One generated case.

    Attributes:
        voxels: int16 `[D, S, S]` Hounsfield units, slice 0 the most inferior.
        spacing: (slice, row, column) spacing in mm.
        report: FINDINGS and IMPRESSION text.
        finding: one of `FINDINGS`.
        side: "left" or "right" (the patient's), "" for normal.
        level: "upper" or "lower" for nodules and fractures, "" otherwise.
        finding_slices: indices of the slices the finding touches (empty for normal).
    """

    voxels: np.ndarray
    spacing: tuple[float, float, float]
    report: str
    finding: str
    side: str
    level: str
    finding_slices: tuple[int, ...]


@dataclass(frozen=True)
class _Body:
    """Per-case anatomy in pixel units: grids `[S, S]`, body semi-axes, lung centres and per-slice semi-axes."""

    u: np.ndarray  # column offset from the body centre, pixels (positive: patient's left)
    v: np.ndarray  # row offset from the body centre, pixels (positive: posterior)
    a: float  # lateral semi-axis
    b: float  # antero-posterior semi-axis
    lung_u: float  # |column offset| of each lung's centre
    lung_v: float
    lung_axes: np.ndarray  # [D, 2] lung semi-axes (lateral, AP) per slice
    ring: tuple[float, float]  # rib ring inner and outer normalised radius


def _anatomy(rng: np.random.Generator, depth: int, size: int) -> tuple[np.ndarray, _Body]:
    """A normal chest: float64 HU `[D, S, S]` without noise, and its geometry."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    cy, cx = (size - 1) / 2 + rng.uniform(-0.04, 0.04, 2) * size
    a = rng.uniform(0.33, 0.44) * size
    b = a * rng.uniform(0.66, 0.8)
    u, v = xx - cx, yy - cy
    rho = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    width = max(2.2 / b, 0.08)  # at least ~2 px thick along the short axis
    ring = (0.82 - width, 0.82)
    t = np.linspace(0.0, 1.0, depth)
    profile = np.clip(np.sqrt(np.clip(1 - ((t - 0.55) / 0.62) ** 2, 0, None)), 0.3, 1.0)
    body = _Body(u, v, a, b, lung_u=0.42 * a, lung_v=-0.05 * b,
                 lung_axes=np.stack([0.3 * a * profile, 0.66 * b * profile], axis=1), ring=ring)
    hu = np.full((depth, size, size), HU["air"])
    plane = np.where(rho <= 1.0, np.where(rho > 0.92, HU["fat"], HU["soft"]), HU["air"])
    spine = np.hypot(u, v - 0.6 * b) / (0.2 * b)
    for k in range(depth):
        hu[k] = plane
        for sign in (-1.0, 1.0):
            hu[k][_lung_mask(body, k, sign)] = HU["lung"]
        hu[k][(rho >= ring[0]) & (rho <= ring[1])] = HU["bone"]
        hu[k][spine <= 1.0] = np.where(spine[spine <= 1.0] > 0.7, HU["bone"], HU["marrow"])
    return hu, body


def _lung_mask(body: _Body, k: int, sign: float) -> np.ndarray:
    """`[S, S]` bool: the lung on side `sign` (+1: patient's left, image right) at slice k."""
    la, lb = body.lung_axes[k]
    return ((body.u - sign * body.lung_u) / la) ** 2 + ((body.v - body.lung_v) / lb) ** 2 <= 1.0


def _add_nodule(hu: np.ndarray, body: _Body, sign: float, level: str, rng: np.random.Generator,
                spacing: tuple[float, float, float]) -> tuple[tuple[int, ...], float]:
    """A soft-tissue sphere with partial-volume edges; returns the slices it touches and its diameter in mm."""
    depth = hu.shape[0]
    low, high = (0.55, 0.88) if level == "upper" else (0.12, 0.45)
    zc = rng.uniform(low, high) * (depth - 1)
    k = int(round(zc))
    la, lb = body.lung_axes[k]
    radius_px = rng.uniform(1.6, 2.6) * hu.shape[1] / 64
    angle, frac = rng.uniform(0, 2 * np.pi), np.sqrt(rng.uniform(0, 1)) * 0.5
    uc, vc = sign * body.lung_u + frac * la * np.cos(angle), body.lung_v + frac * lb * np.sin(angle)
    r_mm, pixel_mm = radius_px * spacing[1], spacing[1]
    touched = []
    for kk in range(depth):
        dz = (kk - zc) * spacing[0]
        if abs(dz) >= r_mm + pixel_mm / 2:
            continue
        dist = np.hypot(body.u - uc, body.v - vc) * pixel_mm
        in_plane = np.sqrt(max(r_mm**2 - dz**2, 0.0))
        fill = np.clip((in_plane - dist) / pixel_mm + 0.5, 0.0, 1.0)
        if fill.max() > 0.2:
            hu[kk] = hu[kk] * (1 - fill) + HU["soft"] * fill
            touched.append(kk)
    return tuple(touched), 2 * r_mm


def _add_effusion(hu: np.ndarray, body: _Body, sign: float, rng: np.random.Generator) -> tuple[tuple[int, ...], str]:
    """Fluid filling the posterior part of one lung from the base up; returns the slices and "small"/"moderate"."""
    depth = hu.shape[0]
    size = "small" if rng.uniform() < 0.5 else "moderate"
    share = rng.uniform(0.22, 0.32) if size == "small" else rng.uniform(0.42, 0.58)
    top = int(round(rng.uniform(0.6, 0.95) * (depth - 1)))
    touched = []
    for k in range(top + 1):
        lb = body.lung_axes[k][1]
        level = body.lung_v + lb - 2 * lb * share * (1 - 0.5 * k / max(top, 1))
        mask = _lung_mask(body, k, sign) & (body.v >= level)
        if mask.any():
            hu[k][mask] = HU["fluid"]
            touched.append(k)
    return tuple(touched), size


def _add_fracture(hu: np.ndarray, body: _Body, sign: float, level: str, rng: np.random.Generator) -> tuple[int, ...]:
    """A gap in the rib ring on one lateral side, over 2-4 adjacent slices of one half of the chest."""
    depth = hu.shape[0]
    low, high = (0.55, 0.92) if level == "upper" else (0.08, 0.45)
    first = int(round(rng.uniform(low, high) * (depth - 1)))
    slices = tuple(k for k in range(first, first + int(rng.integers(2, 5))) if k < depth)
    theta = np.arctan2(body.v / body.b, body.u / body.a)
    centre = (0.0 if sign > 0 else np.pi) + rng.uniform(-0.6, 0.6)
    arc = 0.8 * np.hypot(body.a * np.sin(centre), body.b * np.cos(centre))  # ring length per radian there
    half = rng.uniform(3.0, 4.5) * hu.shape[1] / 64 / arc  # half the gap, radians (~6-9 px of ring)
    rho = np.sqrt((body.u / body.a) ** 2 + (body.v / body.b) ** 2)
    off = np.abs(np.angle(np.exp(1j * (theta - centre))))
    gap = (off <= half) & (rho >= body.ring[0] - 0.02) & (rho <= body.ring[1] + 0.02)
    for k in slices:
        hu[k][gap] = HU["soft"]
    return slices


def _report(finding: str, side: str, level: str, detail: str, rng: np.random.Generator) -> str:
    """FINDINGS and IMPRESSION for a case; `detail` is the nodule's size in mm or the effusion's size."""
    templates = {"normal": _NORMAL, "nodule": _NODULE, "effusion": _EFFUSION, "fracture": _FRACTURE}[finding]
    findings, impression = templates[rng.integers(len(templates))]
    words = {"side": side, "level": level, "noun": _NODULE_NOUNS[rng.integers(len(_NODULE_NOUNS))],
             "size": detail, "mm": detail}
    words.update({k.capitalize(): str(v).capitalize() for k, v in list(words.items())})
    extra = _EXTRAS[rng.integers(len(_EXTRAS))]
    return f"FINDINGS: {extra}{findings.format(**words)}\nIMPRESSION: {impression.format(**words)}"


def make_volume_case(finding: str, rng: np.random.Generator, depth: int = 24, size: int = 64) -> SyntheticVolumeCase:
    """Draw one case with `finding` (an entry of `FINDINGS`).

    Args:
        finding: the finding class.
        rng: the random generator (the case is a function of its state).
        depth: slices `D`.
        size: in-plane matrix `S` (the field of view stays `FOV_MM`).

    Returns:
        The case, voxels int16 `[D, S, S]` in HU.

    Raises:
        ValueError: unknown finding, or depth < 8 or size < 32.
    """
    if finding not in FINDINGS:
        raise ValueError(f"finding: got {finding!r}, expected one of {FINDINGS}")
    if depth < 8 or size < 32:
        raise ValueError(f"volume size: got depth={depth}, size={size}; expected depth >= 8 and size >= 32")
    spacing = (SLICE_MM, FOV_MM / size, FOV_MM / size)
    hu, body = _anatomy(rng, depth, size)
    side = "" if finding == "normal" else ("left" if rng.uniform() < 0.5 else "right")
    sign = 1.0 if side == "left" else -1.0
    level = ("upper" if rng.uniform() < 0.5 else "lower") if finding in ("nodule", "fracture") else ""
    slices: tuple[int, ...] = ()
    detail = ""
    if finding == "nodule":
        slices, diameter = _add_nodule(hu, body, sign, level, rng, spacing)
        detail = str(int(round(diameter)))
    elif finding == "effusion":
        slices, detail = _add_effusion(hu, body, sign, rng)
    elif finding == "fracture":
        slices = _add_fracture(hu, body, sign, level, rng)
    hu += rng.normal(0.0, rng.uniform(12.0, 25.0), hu.shape)
    voxels = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    return SyntheticVolumeCase(voxels, spacing, _report(finding, side, level, detail, rng), finding, side, level, slices)


def make_volume_cases(n_cases: int, seed: int = 0, depth: int = 24, size: int = 64) -> list[SyntheticVolumeCase]:
    """`n_cases` cases cycling through `FINDINGS`, so each finding is equally represented."""
    rng = np.random.default_rng(seed)
    return [make_volume_case(FINDINGS[i % len(FINDINGS)], rng, depth, size) for i in range(n_cases)]


def _uid(*parts: object) -> str:
    """A valid UID derived from `parts`, so the same seed writes byte-identical files."""
    from pydicom.uid import generate_uid

    return generate_uid(prefix=_UID_PREFIX, entropy_srcs=["medcm-synthetic-volume", *map(str, parts)])


def _slice_dataset(case: SyntheticVolumeCase, k: int, uids: tuple[str, str, str], case_id: str,
                   origin: tuple[float, float, float]) -> object:
    """One CT Image Storage dataset for slice k (Explicit VR Little Endian)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    study_uid, series_uid, frame_uid = uids
    sop_uid = _uid(case_id, study_uid, k)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = _CT_STORAGE, sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.SpecificCharacterSet = _CT_STORAGE, sop_uid, "ISO_IR 100"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = f"Synthetic^{case_id}", case_id, "", "O"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "20240101", "120000", "1", "", ""
    ds.StudyDescription, ds.SeriesDescription = "Synthetic chest CT", "Axial soft tissue"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.BodyPartExamined = "CT", 1, k + 1, "CHEST"
    ds.Manufacturer, ds.PositionReferenceIndicator, ds.ImageType = "medcm synthetic", "", ["ORIGINAL", "PRIMARY", "AXIAL"]
    slice_mm, row_mm, col_mm = case.spacing
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [round(origin[0], 3), round(origin[1], 3), round(origin[2] + k * slice_mm, 3)]
    ds.SliceLocation, ds.SliceThickness = ds.ImagePositionPatient[2], slice_mm
    ds.PixelSpacing = [round(row_mm, 6), round(col_mm, 6)]
    ds.Rows, ds.Columns = case.voxels.shape[1:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = _INTERCEPT, 1, "HU"
    ds.WindowCenter, ds.WindowWidth, ds.KVP = 40, 400, 120
    ds.PixelData = (case.voxels[k].astype(np.int32) - int(_INTERCEPT)).astype(np.uint16).tobytes()
    return ds


def _write_case(folder: Path, case: SyntheticVolumeCase, case_id: str, seed: int, rng: np.random.Generator) -> list[str]:
    """Write the series and report of one case into `folder`; returns the slice file names."""
    folder.mkdir(parents=True, exist_ok=True)
    uids = (_uid(seed, case_id, "study"), _uid(seed, case_id, "series"), _uid(seed, case_id, "frame"))
    half = FOV_MM / 2 - case.spacing[1] / 2
    origin = (-half, -half, -float(rng.uniform(150.0, 300.0)))  # table position varies per patient
    names = []
    for k in range(case.voxels.shape[0]):
        name = f"slice-{k:03d}.dcm"
        _slice_dataset(case, k, uids, case_id, origin).save_as(folder / name, enforce_file_format=True)
        names.append(name)
    (folder / "report.txt").write_text(case.report + "\n", encoding="utf-8")
    return names


def write_volume_dataset(folder: str | Path, n_train: int, n_dev: int, seed: int = 0, depth: int = 24,
                         size: int = 64) -> Path:
    """Write synthetic CT series with reports, and a `manifest.jsonl` with `train` and `dev` splits.

    Each case gets a folder `case-<split>-<n>/` holding `depth` single-frame CT slices
    (`slice-000.dcm` ..., with full plane geometry and HU rescale, so `medcm.dicom.volume.assemble_volume`
    builds `[depth, size, size]`) and `report.txt`. Manifest lines are
    `{"images": [...], "report": ..., "case_id": ..., "split": ..., "meta": {"finding", "side", "level"}}`
    with image paths relative to the manifest. The same arguments write byte-identical files.

    Args:
        folder: output folder (created).
        n_train: training cases.
        n_dev: development cases.
        seed: random seed (the dev split uses `seed + 1`).
        depth: slices per series.
        size: rows and columns per slice.

    Returns:
        The manifest's path.

    Raises:
        ValueError: negative case counts, depth < 8 or size < 32.
    """
    if n_train < 0 or n_dev < 0:
        raise ValueError(f"case counts: got n_train={n_train}, n_dev={n_dev}; expected >= 0 each")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for split, count, split_seed in (("train", n_train, seed), ("dev", n_dev, seed + 1)):
        placement = np.random.default_rng([seed, split_seed, 7])
        for i, case in enumerate(make_volume_cases(count, split_seed, depth, size)):
            case_id = f"case-{split}-{i:05d}"
            names = _write_case(out / case_id, case, case_id, seed, placement)
            lines.append({"images": [f"{case_id}/{name}" for name in names], "report": case.report,
                          "case_id": case_id, "split": split,
                          "meta": {"finding": case.finding, "side": case.side, "level": case.level}})
    manifest = out / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return manifest
