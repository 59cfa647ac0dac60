"""Synthetic but learnable chest radiographs and CT slices with reports, for `medcm demo`.

Every finding a report states is drawn in its image, so a model trained on a few hundred cases
learns to retrieve reports of the right finding. The studies are invented: no patient's data.

Conventions:
    Pixels are display values in [0, 1] as a MONOCHROME2 viewer shows them: air is dark; soft
    tissue, fluid and bone are bright. Radiographs are PA views (head at the top) and CT slices
    are axial views from the feet (anterior at the top, so "dependent" is the image bottom); in
    both the patient's left is on the image's right. Sizes in reports assume a 350 mm field of view.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medcm.data.demo_reports import demo_report, pick

FINDINGS_CR: tuple[str, ...] = (
    "normal", "pleural effusion", "pulmonary nodule", "cardiomegaly", "pneumothorax", "consolidation")
FINDINGS_CT: tuple[str, ...] = ("normal", "pulmonary nodule", "pleural effusion", "liver lesion")
SIDES = ("right", "left")
_FOV_MM = 350.0
_VISIBLE = 0.05  # a drawn change this bright or more counts as part of a finding's mask (noise sd is 0.015)
_STUDY_DESCRIPTIONS = {("CR", "CHEST"): "CHEST PA", ("CT", "CHEST"): "CT CHEST WITHOUT CONTRAST",
                       ("CT", "ABDOMEN"): "CT ABDOMEN WITH CONTRAST"}


@dataclass(frozen=True, eq=False)  # eq=False: field-wise comparison of numpy arrays is ambiguous
class DemoCase:
    """One synthetic study: pixels `[H, W]` float32 in [0, 1], its report and what was drawn.

    Attributes:
        mask: `[H, W]` bool, where the finding was drawn (the heart for cardiomegaly); None for a normal study.
        boxes: one `(x0, y0, x1, y1)` pixel box per drawn part of the finding (x1, y1 exclusive; a
            bilateral effusion has two), empty for a normal study.
    """

    pixels: np.ndarray
    report: str
    finding: str
    modality: str
    body_part: str
    details: dict[str, str]
    mask: np.ndarray | None = None
    boxes: tuple[tuple[int, int, int, int], ...] = ()


@dataclass
class _Scene:
    """Normalised pixel-centre coordinates, anatomy parameters and masks shared by the drawers."""

    yy: np.ndarray
    xx: np.ndarray
    params: dict[str, float]
    masks: dict[str, np.ndarray]


# --- drawing helpers -------------------------------------------------------------------------


def _ellipse(s: _Scene, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    return ((s.yy - cy) / ry) ** 2 + ((s.xx - cx) / rx) ** 2 <= 1.0


def _disc(s: _Scene, cy: float, cx: float, radius: float) -> np.ndarray:
    """A disc with a one-pixel soft edge, so small nodules do not alias into squares."""
    size = s.yy.shape[0]
    return np.clip((radius - np.hypot(s.yy - cy, s.xx - cx)) * size + 0.5, 0.0, 1.0)


def _inside(mask: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """A random pixel centre of a non-empty mask, in normalised (y, x)."""
    points = np.argwhere(mask)
    y, x = points[rng.integers(len(points))]
    return (y + 0.5) / mask.shape[0], (x + 0.5) / mask.shape[1]


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur (sigma in pixels) with edge padding; numpy only."""
    radius = max(1, int(3 * sigma + 0.5))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    for axis in (0, 1):
        pad = [(radius, radius) if a == axis else (0, 0) for a in range(2)]
        padded = np.pad(image, pad, mode="edge")
        n = image.shape[axis]
        image = sum(w * np.take(padded, np.arange(i, i + n), axis=axis) for i, w in enumerate(kernel))
    return image


def _eroded(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    for shift, axis in ((1, 0), (-1, 0), (1, 1), (-1, 1)):
        out &= np.roll(mask, shift, axis=axis)
    return out


def _finish(image: np.ndarray, rng: np.random.Generator, blur_px: float, noise: float) -> np.ndarray:
    image = _blur(image, blur_px) + rng.normal(0.0, noise, image.shape)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def _scene(size: int, params: dict[str, float]) -> _Scene:
    yy, xx = (np.mgrid[0:size, 0:size].astype(np.float64) + 0.5) / size
    return _Scene(yy, xx, params, {})


# --- chest radiograph --------------------------------------------------------------------------


def _chest_radiograph(rng: np.random.Generator, size: int) -> tuple[np.ndarray, _Scene]:
    """Body, subdiaphragmatic soft tissue and two lungs with vessel markings; heart and ribs come later."""
    s = _scene(size, {"w": rng.uniform(0.33, 0.36), "apex": rng.uniform(0.1, 0.14), "ctr": rng.uniform(0.38, 0.46),
                      "lung": rng.uniform(0.17, 0.22), "depth": rng.uniform(0.1, 0.13),
                      "base_right": rng.uniform(0.65, 0.69), "base_left": rng.uniform(0.69, 0.72)})
    p, u = s.params, np.abs(s.xx - 0.5)
    body = ((s.xx - 0.5) / (p["w"] + 0.08)) ** 4 + ((s.yy - 0.62) / 0.62) ** 4 <= 1.0
    image = np.where(body, 0.4, 0.04)
    s.masks["body"] = body
    for side in SIDES:
        on_side = s.xx >= 0.5 if side == "left" else s.xx < 0.5  # the patient's left is the image's right
        # The dome is highest medially and falls to a deep, sharp lateral costophrenic angle.
        dome = p[f"base_{side}"] + p["depth"] * np.clip((u - 0.15) / (p["w"] - 0.15), 0, 1) ** 2
        image[on_side & body & (s.yy > dome)] = 0.55
        lung = on_side & (u > 0.06) & (u < p["w"]) & (s.yy > p["apex"] + 8 * (u - 0.19) ** 2) & (s.yy < dome)
        s.masks[side] = lung
        image[lung] = p["lung"] + 0.12 * _vessels(s, side, rng)[lung]
    return image, s


def _vessels(s: _Scene, side: str, rng: np.random.Generator) -> np.ndarray:
    """Lung markings: tapering lines from the hilum to the periphery."""
    hy, hx = 0.47, 0.5 + (0.09 if side == "left" else -0.09)
    out = np.zeros_like(s.yy)
    for _ in range(9):
        ey, ex = _inside(s.masks[side], rng)
        dy, dx = ey - hy, ex - hx
        t = np.clip(((s.yy - hy) * dy + (s.xx - hx) * dx) / (dy * dy + dx * dx), 0.0, 1.0)
        dist = np.hypot(s.yy - (hy + t * dy), s.xx - (hx + t * dx))
        out = np.maximum(out, np.clip(1.0 - dist / 0.008, 0.0, 1.0) * (1.0 - 0.6 * t))
    return out


def _heart_and_ribs(image: np.ndarray, s: _Scene) -> None:
    p, u = s.params, np.abs(s.xx - 0.5)
    half = p["ctr"] * p["w"]  # cardiothoracic ratio = heart width / inner thoracic width (2 w)
    heart = _ellipse(s, 0.63, 0.5 + 0.25 * half, 0.12, half)  # the heart lies mostly left of the midline
    s.masks["heart"] = heart
    upper = (u < 0.055) & (s.yy > 0.05) & (s.yy < 0.6)
    image[heart | upper | _ellipse(s, 0.29, 0.55, 0.035, 0.035)] = 0.6  # with the aortic knob
    image[(u < 0.014) & (s.yy > 0.03) & (s.yy < 0.33)] = 0.3  # the air-filled trachea
    for k in range(7):  # posterior ribs: arcs falling laterally, seen through everything
        centre = p["apex"] + 0.09 + 0.085 * k + 0.1 * (u / p["w"]) ** 2
        image += 0.08 * ((np.abs(s.yy - centre) < 0.011) & (u > 0.04) & (u < p["w"] + 0.04) & s.masks["body"])


def _cr_effusion(image: np.ndarray, s: _Scene, rng: np.random.Generator) -> dict[str, str]:
    side, severity = pick(rng, ("left", "right", "bilateral")), pick(rng, ("small", "moderate", "large"))
    height = {"small": 0.08, "moderate": 0.16, "large": 0.28}[severity] * rng.uniform(0.9, 1.15)
    p, u = s.params, np.abs(s.xx - 0.5)
    for each in SIDES if side == "bilateral" else (side,):
        # Meniscus: the fluid climbs the lateral chest wall and fills the costophrenic angle.
        level = p[f"base_{each}"] + p["depth"] - height - 0.06 * np.clip((u - 0.06) / (p["w"] - 0.06), 0, 1) ** 2
        s.masks[f"finding:{each}"] = s.masks[each] & (s.yy > level)
        image[s.masks[f"finding:{each}"]] = 0.58
    return {"side": side, "severity": severity}


def _cr_nodule(image: np.ndarray, s: _Scene, rng: np.random.Generator) -> dict[str, str]:
    side, zone, mm = pick(rng, SIDES), pick(rng, ("upper", "lower")), int(rng.integers(12, 31))
    u, p = np.abs(s.xx - 0.5), s.params
    if zone == "upper":
        box = (s.yy > p["apex"] + 0.14) & (s.yy < 0.44) & (u > 0.13)
    else:  # lateral to the heart, above the dome
        box = (s.yy > 0.5) & (s.yy < p[f"base_{side}"] - 0.03) & (u > 0.21)
    cy, cx = _inside(s.masks[side] & box & (u < p["w"] - 0.05), rng)
    disc = _disc(s, cy, cx, mm / _FOV_MM / 2)
    image += 0.35 * disc
    s.masks["finding"] = disc >= 0.5
    return {"side": side, "zone": zone, "size_mm": str(mm)}


def _cr_cardiomegaly(image: np.ndarray, s: _Scene, rng: np.random.Generator) -> dict[str, str]:
    s.params["ctr"] = ctr = rng.uniform(0.56, 0.68)  # drawn later by _heart_and_ribs
    return {"severity": "mild" if ctr < 0.61 else "moderate", "ctr": f"{ctr:.2f}"}


def _cr_pneumothorax(image: np.ndarray, s: _Scene, rng: np.random.Generator) -> dict[str, str]:
    side, severity = pick(rng, SIDES), pick(rng, ("small", "large"))
    f = {"small": 0.22, "large": 0.45}[severity] * rng.uniform(0.9, 1.1)
    p, u = s.params, np.abs(s.xx - 0.5)
    # The lung falls away from the apex and the lateral wall towards the hilum, leaving air without markings.
    lung = (u < 0.06 + (p["w"] - 0.06) * (1 - f)) & (s.yy > p["apex"] + 8 * (u - 0.19) ** 2 + 0.35 * f)
    lung &= s.masks[side]
    gap, line = s.masks[side] & ~lung, lung & ~_eroded(lung)
    image[gap] = 0.05
    image[lung] += 0.04  # the collapsed lung is denser
    image[line] += 0.12  # the visceral pleural line
    s.masks["finding"] = gap | line  # the air without lung markings, and the line that bounds it
    return {"side": side, "severity": severity}


def _cr_consolidation(image: np.ndarray, s: _Scene, rng: np.random.Generator) -> dict[str, str]:
    side, zone = pick(rng, SIDES), pick(rng, ("upper", "lower"))
    region = s.masks[side] & ((s.yy < 0.45) if zone == "upper" else (s.yy >= 0.45))
    patch = np.zeros_like(s.yy)
    for _ in range(6):
        cy, cx = _inside(region, rng)
        patch += np.exp(-((s.yy - cy) ** 2 + (s.xx - cx) ** 2) / (2 * rng.uniform(0.03, 0.06) ** 2))
    patchy = np.clip(patch, 0, 1) * rng.uniform(0.6, 1.0, patch.shape)  # mottled, not a solid blob
    opacity = 0.35 * _blur(patchy, 1.0) * region
    image += opacity
    s.masks["finding"] = opacity >= _VISIBLE
    return {"side": side, "zone": zone}


# --- CT slices ---------------------------------------------------------------------------------


def _ct_slice(region: str, rng: np.random.Generator, size: int) -> tuple[np.ndarray, _Scene]:
    """Body with fat and muscle, spine and table; then chest or abdominal organs."""
    s = _scene(size, {"ry": rng.uniform(0.3, 0.34), "rx": rng.uniform(0.4, 0.45)})
    p = s.params
    s.masks["body"] = _ellipse(s, 0.52, 0.5, p["ry"], p["rx"])
    image = np.where(s.masks["body"], 0.3, 0.02)  # subcutaneous fat
    image[_ellipse(s, 0.52, 0.5, p["ry"] - 0.03, p["rx"] - 0.03)] = 0.46
    image[(np.abs(s.yy - 0.56 - p["ry"]) < 0.008) & (np.abs(s.xx - 0.5) < 0.42)] = 0.55  # the table
    spine_y = 0.52 + p["ry"] - 0.1
    s.masks["spine"] = _ellipse(s, spine_y, 0.5, 0.05, 0.05)
    image[s.masks["spine"]] = 0.88
    image[_ellipse(s, spine_y + 0.065, 0.5, 0.018, 0.018)] = 0.45  # spinal canal
    (_ct_chest if region == "CHEST" else _ct_abdomen)(image, s, rng)
    return image, s


def _ct_chest(image: np.ndarray, s: _Scene, rng: np.random.Generator) -> None:
    heart, aorta = _ellipse(s, 0.42, 0.53, 0.1, 0.13), _ellipse(s, 0.6, 0.57, 0.03, 0.03)
    for side in SIDES:
        s.params[f"{side}_cx"] = 0.5 + (0.19 if side == "left" else -0.19)
        lung = _ellipse(s, 0.5, s.params[f"{side}_cx"], 0.22, 0.15) & ~heart & ~aorta & ~s.masks["spine"]
        s.masks[side] = lung
        image[lung] = 0.03
        for _ in range(10):  # vessels in cross-section
            cy, cx = _inside(lung, rng)
            image += 0.35 * _disc(s, cy, cx, rng.uniform(0.003, 0.008)) * lung
    image[heart], image[aorta] = 0.52, 0.56


def _ct_abdomen(image: np.ndarray, s: _Scene, rng: np.random.Generator) -> None:
    liver = _ellipse(s, 0.47, 0.33, 0.2, 0.17) | _ellipse(s, 0.38, 0.5, 0.09, 0.12)  # right lobe | left lobe
    s.masks["liver"] = liver & _ellipse(s, 0.52, 0.5, s.params["ry"] - 0.04, s.params["rx"] - 0.04)
    for _ in range(8):  # bowel loops
        cy, cx = rng.uniform(0.55, 0.7), rng.uniform(0.38, 0.64)
        image[_ellipse(s, cy, cx, 0.035, 0.035)] = rng.uniform(0.36, 0.5)
    image[s.masks["liver"]] = 0.6
    organs = [((0.52, 0.73, 0.1, 0.06), 0.56), ((0.36, 0.66, 0.07, 0.08), 0.42),  # spleen, stomach
              ((0.64, 0.37, 0.06, 0.045), 0.66), ((0.64, 0.63, 0.06, 0.045), 0.66),  # kidneys
              ((0.64, 0.54, 0.022, 0.022), 0.7), ((0.62, 0.45, 0.022, 0.022), 0.58)]  # aorta, IVC
    for (cy, cx, ry, rx), value in organs:
        image[_ellipse(s, cy, cx, ry, rx) & ~s.masks["spine"]] = value


def _ct_nodule(image: np.ndarray, s: _Scene, rng: np.random.Generator) -> dict[str, str]:
    side, zone, mm = pick(rng, SIDES), pick(rng, ("upper", "lower")), int(rng.integers(8, 26))
    radius = mm / _FOV_MM / 2
    # On an axial slice the upper lobe lies anterior to the major fissure, the lower lobe posterior.
    half = s.yy < 0.5 if zone == "upper" else s.yy >= 0.5
    core = _ellipse(s, 0.5, s.params[f"{side}_cx"], 0.2 - radius, 0.13 - radius)
    cy, cx = _inside(s.masks[side] & _eroded(_eroded(s.masks[side])) & core & half, rng)
    disc = _disc(s, cy, cx, radius) * s.masks[side]
    image += 0.5 * disc
    s.masks["finding"] = disc >= 0.5
    return {"side": side, "zone": zone, "size_mm": str(mm)}


def _ct_effusion(image: np.ndarray, s: _Scene, rng: np.random.Generator) -> dict[str, str]:
    side, severity = pick(rng, ("left", "right", "bilateral")), pick(rng, ("small", "moderate", "large"))
    depth = {"small": 0.05, "moderate": 0.1, "large": 0.16}[severity] * rng.uniform(0.9, 1.1)
    for each in SIDES if side == "bilateral" else (side,):
        # Supine: fluid layers in a posterior crescent; the lung floats anteriorly.
        floating = _ellipse(s, 0.5 - depth, s.params[f"{each}_cx"], 0.22, 0.15)
        s.masks[f"finding:{each}"] = s.masks[each] & ~floating
        image[s.masks[f"finding:{each}"]] = 0.45
    return {"side": side, "severity": severity}


def _ct_liver_lesion(image: np.ndarray, s: _Scene, rng: np.random.Generator) -> dict[str, str]:
    side, mm = pick(rng, SIDES), int(rng.integers(12, 41))
    cy, cx = (rng.uniform(0.42, 0.52), rng.uniform(0.25, 0.33)) if side == "right" else (0.38, rng.uniform(0.48, 0.54))
    disc = _disc(s, cy, cx, mm / _FOV_MM / 2) * s.masks["liver"]
    image -= 0.28 * disc  # hypodense
    s.masks["finding"] = disc >= 0.5
    return {"side": side, "size_mm": str(mm)}


_DRAWERS = {
    ("CR", "pleural effusion"): _cr_effusion, ("CR", "pulmonary nodule"): _cr_nodule,
    ("CR", "cardiomegaly"): _cr_cardiomegaly, ("CR", "pneumothorax"): _cr_pneumothorax,
    ("CR", "consolidation"): _cr_consolidation, ("CT", "pulmonary nodule"): _ct_nodule,
    ("CT", "pleural effusion"): _ct_effusion, ("CT", "liver lesion"): _ct_liver_lesion,
}

# --- public API --------------------------------------------------------------------------------


def make_demo_case(finding: str, modality: str, rng: np.random.Generator, size: int = 192) -> DemoCase:
    """Draw one study with `finding` and write its report.

    Anatomy, the finding, noise and wording use separate streams split off `rng`, so two calls
    from equal generator states share anatomy and noise and differ only by what the finding adds.

    Args:
        finding: an entry of `FINDINGS_CR` (modality "CR") or `FINDINGS_CT` (modality "CT").
        modality: "CR" (PA chest radiograph) or "CT" (axial chest or abdomen slice).
        rng: the source of randomness.
        size: image side in pixels (32 to 1024).

    Raises:
        ValueError: unknown modality or finding, or a size out of range.
    """
    known = {"CR": FINDINGS_CR, "CT": FINDINGS_CT}
    if modality not in known:
        raise ValueError(f"modality: got {modality!r}, expected 'CR' or 'CT'")
    if finding not in known[modality]:
        raise ValueError(f"finding: got {finding!r} for {modality}, expected one of {known[modality]}")
    if not 32 <= int(size) <= 1024:
        raise ValueError(f"size: got {size}, expected 32 to 1024 pixels")
    anatomy, drawn, noise, wording = (np.random.default_rng(s) for s in rng.integers(0, 2**63, size=4))
    if modality == "CR":
        body_part = "CHEST"
        image, scene = _chest_radiograph(anatomy, size)
    else:
        abdomen = finding == "liver lesion" or (finding == "normal" and drawn.random() < 0.5)
        body_part = "ABDOMEN" if abdomen else "CHEST"
        image, scene = _ct_slice(body_part, anatomy, size)
    drawer = _DRAWERS.get((modality, finding))
    details = drawer(image, scene, drawn) if drawer else {}
    if modality == "CR":
        _heart_and_ribs(image, scene)
    pixels = _finish(image, noise, blur_px=0.004 * size if modality == "CR" else 0.5, noise=0.015)
    parts = [m for name, m in scene.masks.items() if name == "finding" or name.startswith("finding:")]
    if finding == "cardiomegaly":
        parts = [scene.masks["heart"]]
    parts = [m for m in parts if m.any()]
    mask = np.logical_or.reduce(parts) if parts else None
    return DemoCase(pixels, demo_report(finding, modality, body_part, details, wording), finding, modality, body_part,
                    details, mask, tuple(_box(m) for m in parts))


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """`(x0, y0, x1, y1)` pixel box of a non-empty mask, x1 and y1 exclusive."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def mask_to_rle(mask: np.ndarray) -> dict[str, list[int]]:
    """Run-length code of a bool mask `[H, W]` in row-major order: run lengths alternating 0s and 1s, from 0s."""
    flat = np.concatenate([[False], np.asarray(mask, dtype=bool).ravel(), [False]])
    edges = np.flatnonzero(flat[1:] != flat[:-1])  # where runs of 1s start and end
    bounds = np.concatenate([[0], edges, [] if edges.size and edges[-1] == mask.size else [mask.size]])
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": np.diff(bounds).astype(int).tolist()}


def rle_to_mask(rle: dict[str, list[int]]) -> np.ndarray:
    """The bool mask `[H, W]` of a `mask_to_rle` code.

    Raises:
        ValueError: the runs do not add up to the stated size.
    """
    height, width = (int(v) for v in rle["size"])
    counts = np.asarray(rle["counts"], dtype=np.int64)
    if counts.sum() != height * width:
        raise ValueError(f"mask rle: runs add up to {counts.sum()} pixels, expected {height} x {width}")
    values = np.arange(len(counts)) % 2 == 1
    return np.repeat(values, counts).reshape(height, width)


def make_demo_cases(n: int, seed: int = 0, size: int = 192) -> list[DemoCase]:
    """`n` cases, three in four radiographs, cycling through each modality's findings.

    Every block of 48 cases holds each radiograph finding 6 times and each CT finding 3 times.

    Raises:
        ValueError: negative `n` (or a bad `size`, see `make_demo_case`).
    """
    if n < 0:
        raise ValueError(f"n: got {n}, expected a count >= 0")
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n):
        if i % 4 == 3:
            cases.append(make_demo_case(FINDINGS_CT[(i // 4) % len(FINDINGS_CT)], "CT", rng, size))
        else:  # i - i // 4 radiographs came before this one
            cases.append(make_demo_case(FINDINGS_CR[(i - i // 4) % len(FINDINGS_CR)], "CR", rng, size))
    return cases


def write_demo_archive(out_dir: str | Path, n_train: int = 480, n_dev: int = 60, seed: int = 0, size: int = 192) -> Path:
    """Write demo studies as DICOM files with reports, plus a `manifest.jsonl` with train and dev splits.

    Each case gets `studies/<case_id>/image.dcm` and `report.txt` (the layout `medcm ingest` reads
    reports from) and its own pseudonymous patient (`DEMO0001`, ...). Every second radiograph is
    stored MONOCHROME1, as many CR systems do. Files of the same names are overwritten; other
    files already in `out_dir` are left alone, so use an empty folder.

    A case with a finding records where it was drawn in its `meta`, for grounding evaluation:
    `finding_boxes` (`[x0, y0, x1, y1]` pixel boxes, x1 and y1 exclusive, one per drawn part) and
    `finding_mask` (`mask_to_rle`; `rle_to_mask` reads it back).

    Returns:
        The manifest's path.

    Raises:
        ValueError: `n_train` < 1 or `n_dev` < 0.
    """
    from medcm.dicom.write import write_image

    if n_train < 1 or n_dev < 0:
        raise ValueError(f"got n_train={n_train}, n_dev={n_dev}; expected n_train >= 1 and n_dev >= 0")
    out_dir = Path(out_dir)
    splits = [("train", make_demo_cases(n_train, seed, size)), ("dev", make_demo_cases(n_dev, seed + 1, size))]
    lines, number = [], 0
    for split, cases in splits:
        for case in cases:
            number += 1
            case_id = f"demo-{number:04d}"
            folder = out_dir / "studies" / case_id
            write_image(folder / "image.dcm", case.pixels, patient_id=f"DEMO{number:04d}", modality=case.modality,
                        study_description=_STUDY_DESCRIPTIONS[(case.modality, case.body_part)],
                        body_part=case.body_part, monochrome1=case.modality == "CR" and number % 2 == 0)
            (folder / "report.txt").write_text(case.report + "\n", encoding="utf-8")
            meta = {"finding": case.finding, "modality": case.modality, "body_part": case.body_part, **case.details}
            if case.mask is not None:  # where the finding was drawn, for grounding evaluation (pixel coordinates)
                meta.update(finding_boxes=[list(b) for b in case.boxes], finding_mask=mask_to_rle(case.mask))
            lines.append({"image": f"studies/{case_id}/image.dcm", "report": case.report, "case_id": case_id,
                          "split": split, "meta": meta})
    manifest = out_dir / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return manifest
