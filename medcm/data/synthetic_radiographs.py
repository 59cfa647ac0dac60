"""A small synthetic paired data set whose image content determines its report.

Each case is a radiograph-like image with at most one lesion — a circle, square, triangle or cross,
small or large, in one of four zones — and a report that says so with varied wording. It exists to
prove the learning machinery end to end (tests, `medcm synth`), not to resemble real anatomy.

Laterality follows the radiological convention: the patient's left is on the image's right.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SHAPES = {
    "circle": ("round", "circular"),
    "square": ("square", "box-shaped"),
    "triangle": ("triangular", "wedge-shaped"),
    "cross": ("cross-shaped", "stellate"),
}
SIZES = {"small": ("small", "tiny"), "large": ("large", "big")}
ZONES = ("upper left", "upper right", "lower left", "lower right")
CLASSES = tuple(f"{size} {shape} {zone}" for shape in SHAPES for size in SIZES for zone in ZONES) + ("normal",)

_FINDINGS = (
    "There is a {size} {shape} opacity in the {zone} zone.",
    "A {size} {shape} density projects over the {zone} region.",
    "{Size} {shape} lesion is seen in the {zone} zone.",
)
_IMPRESSIONS = ("{Size} {shape} lesion, {zone}.", "{Shape} {size} abnormality in the {zone} zone.")
_NORMAL = (
    ("No focal abnormality is seen.", "Normal study."),
    ("The lungs are clear without focal lesion.", "No acute abnormality."),
)


@dataclass(frozen=True)
class SyntheticCase:
    """One generated case: pixels `[H, W]` in [0, 1], its report, and its class name."""

    pixels: np.ndarray
    report: str
    label: str


def _draw_lesion(image: np.ndarray, shape: str, size: str, zone: str, rng: np.random.Generator) -> None:
    side = image.shape[0]
    yy, xx = np.mgrid[0:side, 0:side] / side
    # Patient's left is image right: "left" zones sit on the right half.
    cx = (0.68 if "left" in zone else 0.32) + rng.uniform(-0.06, 0.06)
    cy = (0.32 if "upper" in zone else 0.68) + rng.uniform(-0.06, 0.06)
    radius = rng.uniform(0.06, 0.085) if size == "small" else rng.uniform(0.13, 0.17)
    angle = rng.uniform(-0.4, 0.4)
    dx, dy = xx - cx, yy - cy
    u = np.cos(angle) * dx + np.sin(angle) * dy
    v = -np.sin(angle) * dx + np.cos(angle) * dy
    if shape == "circle":
        mask = u**2 + v**2 <= radius**2
    elif shape == "square":
        mask = (np.abs(u) <= radius * 0.85) & (np.abs(v) <= radius * 0.85)
    elif shape == "triangle":
        mask = (v <= radius * 0.8) & (v >= 2 * np.abs(u) - radius * 1.2)
    else:
        arm = radius * 0.3
        mask = ((np.abs(u) <= arm) & (np.abs(v) <= radius)) | ((np.abs(v) <= arm) & (np.abs(u) <= radius))
    image[mask] = rng.uniform(0.75, 0.95)


def _report(label: str, rng: np.random.Generator) -> str:
    if label == "normal":
        findings, impression = _NORMAL[rng.integers(len(_NORMAL))]
        return f"FINDINGS: {findings}\nIMPRESSION: {impression}"
    size, shape, zone = label.split(" ", 2)
    words = {
        "size": SIZES[size][rng.integers(2)],
        "shape": SHAPES[shape][rng.integers(2)],
        "zone": zone,
    }
    words.update({k.capitalize(): v.capitalize() for k, v in list(words.items())})
    findings = _FINDINGS[rng.integers(len(_FINDINGS))].format(**words)
    impression = _IMPRESSIONS[rng.integers(len(_IMPRESSIONS))].format(**words)
    return f"FINDINGS: {findings}\nIMPRESSION: {impression}"


def make_case(label: str, rng: np.random.Generator, image_size: int = 128) -> SyntheticCase:
    """Draw one case of class `label` (an entry of `CLASSES`).

    Raises:
        ValueError: unknown label.
    """
    if label not in CLASSES:
        raise ValueError(f"label: got {label!r}, expected one of CLASSES (e.g. {CLASSES[0]!r} or 'normal')")
    yy, xx = np.mgrid[0:image_size, 0:image_size] / image_size
    body = ((xx - 0.5) / 0.45) ** 2 + ((yy - 0.5) / 0.48) ** 2 <= 1.0
    image = np.where(body, 0.35, 0.05) + rng.normal(0.0, 0.04, (image_size, image_size))
    if label != "normal":
        size, shape, zone = label.split(" ", 2)
        _draw_lesion(image, shape, size, zone, rng)
    image += rng.normal(0.0, 0.03, image.shape)
    return SyntheticCase(np.clip(image, 0.0, 1.0).astype(np.float32), _report(label, rng), label)


def make_cases(n_cases: int, seed: int = 0, image_size: int = 128) -> list[SyntheticCase]:
    """`n_cases` cases cycling through every class, so each class is equally represented."""
    rng = np.random.default_rng(seed)
    return [make_case(CLASSES[i % len(CLASSES)], rng, image_size) for i in range(n_cases)]


def write_dataset(out_dir: str | Path, n_train: int = 660, n_dev: int = 99, seed: int = 0, image_size: int = 128) -> Path:
    """Write synthetic cases as DICOM files plus a `manifest.jsonl` with `train` and `dev` splits.

    Each case gets a folder `cases/<case_id>/` holding `image.dcm` and `report.txt`, the layout
    `medcm ingest` reads reports from. Half of the images are stored MONOCHROME1 (inverted), so the
    reading pipeline is exercised too.

    Returns:
        The manifest's path.
    """
    from medcm.dicom.write import write_image

    out_dir = Path(out_dir)
    lines = []
    splits = [("train", make_cases(n_train, seed, image_size)), ("dev", make_cases(n_dev, seed + 1, image_size))]
    for split, cases in splits:
        for i, case in enumerate(cases):
            case_id = f"{split}-{i:05d}"
            folder = out_dir / "cases" / case_id
            write_image(
                folder / "image.dcm",
                case.pixels,
                patient_id=f"SYNTH{i % 97:03d}",
                modality="DX",
                study_description="Synthetic shapes radiograph",
                body_part="CHEST",
                monochrome1=bool(i % 2),
            )
            (folder / "report.txt").write_text(case.report + "\n", encoding="utf-8")
            lines.append({"image": f"cases/{case_id}/image.dcm", "report": case.report, "case_id": case_id,
                          "split": split, "meta": {"label": case.label}})
    manifest = out_dir / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return manifest
