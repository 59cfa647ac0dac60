"""A small paired archive for the import tests: three cases of PNG, JPEG and DICOM images, as a JSONL or CSV manifest."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

from medcm.dicom.write import write_image

REPORTS = {
    "c1": "FINDINGS: Small left pleural effusion. IMPRESSION: Effusion.",
    "c2": "FINDINGS: Normal brain. IMPRESSION: Normal.",
    "c3/x": "FINDINGS: Liver lesion. IMPRESSION: Lesion.",
}


def grey(seed: int, shape: tuple[int, int] = (40, 48)) -> np.ndarray:
    """Seeded random pixels in [0, 1)."""
    return np.random.default_rng(seed).random(shape)


def write_sources(folder: Path) -> dict[str, list[str]]:
    """Case id → image file names: c1 an 8-bit PNG and a JPEG, c2 a DICOM, c3/x a 16-bit PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray((grey(1) * 255).astype(np.uint8)).save(folder / "c1a.png")
    Image.fromarray((grey(2) * 255).astype(np.uint8)).save(folder / "c1b.jpg", quality=90)
    write_image(folder / "c2.dcm", grey(3), patient_id="P2", modality="MR", body_part="HEAD")
    Image.fromarray((grey(4) * 65535).astype(np.uint16)).save(folder / "c3.png")
    return {"c1": ["c1a.png", "c1b.jpg"], "c2": ["c2.dcm"], "c3/x": ["c3.png"]}


META = {"c1": {"modality": "CT", "region": "Thorax", "title": "Effusion"}, "c2": {}, "c3/x": {"modality": "mri"}}


def write_manifest(folder: Path, kind: str) -> Path:
    """Write the sources under `folder/images` and a "jsonl" or "csv" manifest of them (all split "train")."""
    cases = write_sources(folder / "images")
    if kind == "csv":
        path = folder / "manifest.csv"
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image", "report", "case_id", "split", "modality", "region", "title"])
            for case_id, names in cases.items():
                meta = META[case_id]
                writer.writerow([";".join(f"images/{n}" for n in names), REPORTS[case_id], case_id, "train",
                                 meta.get("modality", ""), meta.get("region", ""), meta.get("title", "")])
        return path
    path = folder / "manifest.jsonl"
    lines = [{"images": [f"images/{n}" for n in names], "report": REPORTS[case_id], "case_id": case_id,
              "split": "train", "meta": META[case_id]} for case_id, names in cases.items()]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path

