"""Paired image–report data: the JSONL manifest, image loading and the training dataset.

A manifest line is a JSON object:
    {"image": "cases/001/img1.dcm", "report": "FINDINGS: ...", "case_id": "001",
     "split": "train", "meta": {"region": "Thorax"}}
`images` (a list) may replace `image`; relative paths are relative to the manifest's folder.
`case_id`, `split` and `meta` are optional.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from medcm.config import PreprocessConfig
from medcm.dicom import DicomReadError, read_instance
from medcm.preprocess import resize_and_pad, select_frame
from medcm.text import report_text_for_training

log = logging.getLogger(__name__)

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


class ImageReadError(Exception):
    """An image file (DICOM, PNG or JPEG) could not be read; `str()` is "<path>: <reason>"."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class ManifestRecord:
    """One case of a manifest: its images, its report and optional ids and metadata."""

    images: tuple[str, ...]
    report: str
    case_id: str
    split: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def read_manifest(path: str | Path) -> list[ManifestRecord]:
    """Read a JSONL manifest.

    Raises:
        FileNotFoundError: the manifest does not exist.
        ValueError: a line is not valid JSON or lacks a field; the message names the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                records.append(_parse_manifest_line(line, path, number))
    if not records:
        raise ValueError(f"{path}: the manifest has no records; expected one JSON object per line")
    return records


def _parse_manifest_line(line: str, path: Path, number: int) -> ManifestRecord:
    where = f"{path}:{number}"
    try:
        item = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: not valid JSON ({err.msg})") from err
    if not isinstance(item, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(item).__name__}")
    images = item.get("images", [item["image"]] if "image" in item else None)
    if not images or not isinstance(images, list) or not all(isinstance(i, str) and i for i in images):
        raise ValueError(f"{where}: expected 'image' (a path) or 'images' (a list of paths)")
    report = item.get("report")
    if not isinstance(report, str) or not report.strip():
        raise ValueError(f"{where}: field 'report' must be a non-empty string, got {report!r:.40}")
    meta = item.get("meta", {})
    if not isinstance(meta, dict):
        raise ValueError(f"{where}: field 'meta' must be an object, got {type(meta).__name__}")
    split = item.get("split")
    return ManifestRecord(
        images=tuple(str((path.parent / image).resolve()) for image in images),
        report=report,
        case_id=str(item.get("case_id", f"line{number}")),
        split=str(split) if split is not None else None,
        meta=meta,
    )


def split_records(
    records: list[ManifestRecord], split: str | None, val_split: str | None, val_fraction: float, seed: int
) -> tuple[list[ManifestRecord], list[ManifestRecord]]:
    """Choose training and validation records.

    With `split`, training uses records of that split; with `val_split`, validation uses that split.
    Without `val_split`, a seeded `val_fraction` of the training cases is held out (whole cases, so
    no case has images on both sides).

    Raises:
        ValueError: a named split has no records.
    """
    train = [r for r in records if split is None or r.split == split]
    if not train:
        found = sorted({str(r.split) for r in records})
        raise ValueError(f"split {split!r} has no records; the data has splits {found}")
    if val_split is not None:
        val = [r for r in records if r.split == val_split]
        if not val:
            raise ValueError(f"validation split {val_split!r} has no records")
        return train, val
    held = {r.case_id for r in train if _unit_hash(r.case_id, seed) < val_fraction}
    return [r for r in train if r.case_id not in held], [r for r in train if r.case_id in held]


def _unit_hash(text: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def load_image(path: str | Path) -> np.ndarray:
    """Read a DICOM, PNG or JPEG file as display-ready greyscale `[F, H, W]` float32 in [0, 1].

    DICOM goes through `medcm.dicom` (rescale → VOI → MONOCHROME1); raster images are converted to
    luminance and scaled by their bit depth.

    Raises:
        ImageReadError: naming the file and the reason (the cause chained).
    """
    path = Path(path)
    if path.suffix.lower() in RASTER_SUFFIXES:
        return _load_raster(path)
    try:
        return read_instance(path).pixels
    except DicomReadError as err:
        raise ImageReadError(str(path), err.reason) from err


def _load_raster(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            if img.mode.startswith("I"):
                # 16-bit greyscale PNGs open as "I;16" or "I": scale by the 16-bit range.
                array = np.asarray(img, dtype=np.float32) / 65535.0
            else:
                array = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise ImageReadError(str(path), f"cannot read image ({err})") from err
    return np.clip(array, 0.0, 1.0)[None]


@dataclass(frozen=True)
class Pair:
    """One training item: an image file and its case's text."""

    image: str
    text: str
    case_id: str
    label: Any = None


def records_to_pairs(records: list[ManifestRecord], label_field: str | None = None) -> list[Pair]:
    """One pair per image; the text is the report's training text (`medcm.text`).

    Cases whose report yields no training text are skipped with a warning.
    """
    pairs = []
    for record in records:
        text = report_text_for_training(record.report)
        if not text:
            # e.g. a report holding only an indication: pairing an image with "cough" teaches nothing.
            log.warning("skipping case %s: its report has no findings or impression text", record.case_id)
            continue
        label = record.meta.get(label_field) if label_field else None
        pairs.extend(Pair(image, text, record.case_id, label) for image in record.images)
    return pairs


class PairedImageDataset(Dataset):
    """Images of `pairs`, preprocessed to `[1, S, S]` in [0, 1] (normalisation happens on the batch).

    Images are decoded once and kept as uint8 in memory: decoding DICOM costs far more than a
    training step of a small CNN on a CPU. Unreadable images are reported and dropped up front.
    """

    def __init__(self, pairs: list[Pair], preprocess: PreprocessConfig, progress: bool = False) -> None:
        self.preprocess = preprocess
        self.pairs: list[Pair] = []
        self.errors: list[ImageReadError] = []
        images = []
        iterator = pairs
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(pairs, desc="decoding images", unit="img")
        for pair in iterator:
            try:
                pixels = select_frame(load_image(pair.image), preprocess.frame)
            except ImageReadError as err:
                log.warning("skipping %s", err)
                self.errors.append(err)
                continue
            tensor = resize_and_pad(pixels, preprocess.image_size)
            images.append((tensor * 255.0).round().to(torch.uint8))
            self.pairs.append(pair)
        if not self.pairs:
            raise ValueError(f"none of the {len(pairs)} images could be read; first error: {self.errors[0] if self.errors else 'no images'}")
        self.images = torch.stack(images)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index].float() / 255.0, index
