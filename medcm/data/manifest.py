"""Paired image–report data: manifests (JSONL or CSV), MedPix 2.0, image loading and the training dataset.

A JSONL manifest line is a JSON object:
    {"image": "cases/001/img1.dcm", "report": "FINDINGS: ...", "case_id": "001",
     "patient_id": "P1", "split": "train", "meta": {"region": "Thorax", "modality": "CT"}}
`images` (a list) may replace `image`; relative paths are relative to the manifest's folder.
`case_id` (alias `study_id`), `patient_id`, `split` and `meta` are optional.

A CSV manifest has a header row with the same names: `image` (several paths separated by `;`),
`report`, optional `case_id`/`study_id`, `patient_id` and `split`; every other column becomes a
`meta` field. MedPix 2.0 folders are read by `medcm.data.medpix` (`read_dataset(path, "medpix")`).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from medcm.config import REPORT_FINDINGS, PreprocessConfig, VolumeEncoderConfig
from medcm.dicom.read import DicomReadError, read_instance
from medcm.model.encoders.volume import prepare_volume
from medcm.model.preprocess import resize_and_pad, select_frame
from medcm.report.context import finding_labels
from medcm.report.text import report_text_for_training
from medcm.dicom.volume import VolumeError
from medcm.dicom.series import group_series, read_volume
from medcm.data.medpix import mask_medpix, read_medpix
from medcm.data.records import ImageReadError, ManifestRecord

log = logging.getLogger(__name__)

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


DATA_FORMATS = ("manifest", "medpix")


def read_dataset(path: str | Path, data_format: str = "manifest") -> list[ManifestRecord]:
    """Read paired data in one of `DATA_FORMATS`.

    Args:
        path: a manifest file (`.jsonl`, `.json` or `.csv`) or a MedPix 2.0 folder.
        data_format: "manifest" or "medpix".

    Raises:
        ValueError: an unknown format, or a malformed file (the message names it).
        FileNotFoundError: the path does not exist.
    """
    if data_format == "manifest":
        return read_manifest(path)
    if data_format == "medpix":
        return read_medpix(path)
    raise ValueError(f"--format: got {data_format!r}, expected one of {DATA_FORMATS}")


def read_manifest(path: str | Path) -> list[ManifestRecord]:
    """Read a JSONL manifest, or a CSV manifest when the file name ends in `.csv`.

    Raises:
        FileNotFoundError: the manifest does not exist.
        ValueError: a line is not valid JSON/CSV or lacks a field; the message names the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    if path.suffix.lower() == ".csv":
        records = _read_csv_manifest(path)
    else:
        records = []
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    records.append(_parse_manifest_line(line, path, number))
    if not records:
        raise ValueError(f"{path}: the manifest has no records; expected one case per line")
    return _merge_cases(records, path)


_CSV_FIELDS = ("image", "images", "report", "case_id", "study_id", "patient_id", "split")


def _read_csv_manifest(path: Path) -> list[ManifestRecord]:
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        if not ({"image", "images"} & set(columns)) or "report" not in columns:
            raise ValueError(f"{path}: CSV header {columns} lacks 'image' (or 'images') and 'report' columns")
        records = []
        for row in reader:
            number = reader.line_num
            if None in row:
                raise ValueError(f"{path}:{number}: more values than the {len(columns)} header columns")
            if not any((v or "").strip() for v in row.values()):
                continue
            item: dict[str, Any] = {k: v for k, v in row.items() if k in _CSV_FIELDS and v not in (None, "")}
            paths = (row.get("images") or row.get("image") or "").split(";")
            item.pop("image", None)
            item["images"] = [p.strip() for p in paths if p.strip()]
            item["meta"] = {k: v for k, v in row.items() if k not in _CSV_FIELDS and v not in (None, "")}
            records.append(_record_from_item(item, path, f"{path}:{number}", number))
    return records


def _merge_cases(records: list[ManifestRecord], path: Path) -> list[ManifestRecord]:
    """Join lines that share a case id (one line per image is a common export) into one record.

    Raises:
        ValueError: two lines of one case disagree on the report or the split.
    """
    merged: dict[str, ManifestRecord] = {}
    for record in records:
        first = merged.get(record.case_id)
        if first is None:
            merged[record.case_id] = record
            continue
        for name in ("report", "split", "patient_id"):
            if getattr(first, name) != getattr(record, name):
                raise ValueError(f"{path}: case_id {record.case_id!r} appears on several lines with different "
                                 f"'{name}' values; expected one {name} per case")
        merged[record.case_id] = dataclasses.replace(
            first, images=first.images + record.images, meta={**record.meta, **first.meta})
    return list(merged.values())


def _parse_manifest_line(line: str, path: Path, number: int) -> ManifestRecord:
    where = f"{path}:{number}"
    try:
        item = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: not valid JSON ({err.msg})") from err
    if not isinstance(item, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(item).__name__}")
    return _record_from_item(item, path, where, number)


def _record_from_item(item: dict[str, Any], path: Path, where: str, number: int) -> ManifestRecord:
    images = item.get("images", [item["image"]] if "image" in item else None)
    if not images or not isinstance(images, list) or not all(isinstance(i, str) and i for i in images):
        raise ValueError(f"{where}: expected 'image' (a path) or 'images' (a list of paths)")
    report = item.get("report")
    if not isinstance(report, str) or not report.strip():
        raise ValueError(f"{where}: field 'report' must be a non-empty string, got {report!r:.40}")
    meta = item.get("meta", {})
    if not isinstance(meta, dict):
        raise ValueError(f"{where}: field 'meta' must be an object, got {type(meta).__name__}")
    split, patient = item.get("split"), item.get("patient_id")
    return ManifestRecord(
        images=tuple(str((path.parent / image).resolve()) for image in images),
        report=report,
        case_id=str(item.get("case_id", item.get("study_id", f"line{number}"))),
        split=str(split) if split is not None else None,
        meta=meta,
        patient_id=str(patient) if patient not in (None, "") else None,
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


def load_image(path: str | Path, mask: str | None = None) -> np.ndarray:
    """Read a DICOM, PNG or JPEG file as display-ready greyscale `[F, H, W]` float32 in [0, 1].

    DICOM goes through `medcm.dicom.read` (rescale → VOI → MONOCHROME1); raster images are converted to
    luminance and scaled by their bit depth.

    Args:
        path: the image file.
        mask: a burned-in-text mask name (see `apply_mask`), applied before anything else sees the pixels.

    Raises:
        ImageReadError: naming the file and the reason (the cause chained).
    """
    path = Path(path)
    if path.suffix.lower() in RASTER_SUFFIXES:
        pixels = _load_raster(path)
    else:
        try:
            pixels = read_instance(path).pixels
        except DicomReadError as err:
            raise ImageReadError(str(path), err.reason) from err
    return apply_mask(pixels, mask) if mask else pixels


MASK_NAMES = ("medpix",)


def apply_mask(pixels: np.ndarray, name: str) -> np.ndarray:
    """Black out a data set's burned-in text (a watermark, a footer) so no encoder learns to read it.

    Args:
        pixels: `[F, H, W]` greyscale in [0, 1]; a masked copy is returned.
        name: one of `MASK_NAMES`.

    Raises:
        ValueError: an unknown mask name.
    """
    if name == "medpix":
        return mask_medpix(pixels)
    raise ValueError(f"mask: got {name!r}, expected one of {MASK_NAMES}")


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
    """One training item: an image file (or, with `series`, a whole CT/MR/PT series) and its case's text.

    Attributes:
        image: the image file; for a volume, the series' first file (named in messages).
        series: the files of a volume pair, empty for a 2D image.
    """

    image: str
    text: str
    case_id: str
    label: Any = None
    mask: str | None = None
    series: tuple[str, ...] = ()


def records_to_pairs(records: list[ManifestRecord], label_field: str | None = None, volumes: bool = False) -> list[Pair]:
    """One pair per image, or per volume series with `volumes`; the text is the report's training text.

    Cases whose report yields no training text are skipped with a warning. `label_field` names a
    metadata field (the image's own, else the case's) for the multi-task head, or is `REPORT_FINDINGS`
    (every image of a case gets its report's findings). With `volumes`, the
    files of a CT/MR/PT series with plane geometry (`medcm.dicom.series.group_series`, headers only)
    become one pair, placed where its first file was; every other file stays a 2D pair.
    """
    pairs = []
    for record in records:
        text = report_text_for_training(record.report)
        if not text:
            # e.g. a report holding only an indication: pairing an image with "cough" teaches nothing.
            log.warning("skipping case %s: its report has no findings or impression text", record.case_id)
            continue
        series_of = _volume_series(record.images) if volumes else {}
        from_report = finding_labels(text) if label_field == REPORT_FINDINGS else None
        for index, image in enumerate(record.images):
            series = series_of.get(image, ())
            if series and series[0] != image:
                continue  # a later slice of a volume already paired at its first file
            label = from_report or (record.meta_of_image(index).get(label_field) if label_field else None)
            pairs.append(Pair(image, text, record.case_id, label, None if series else record.mask, series))
    return pairs


def _volume_series(files: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """Each file of a volume series → that series' files (first file first)."""
    return {name: group.files for group in group_series(files) if group.is_volume for name in group.files}


class PairedImageDataset(Dataset):
    """Images of `pairs` as `[1, S, S]`, volumes as the volume encoder's input, in [0, 1].

    Items are `(tensor, index)`; normalisation happens on the batch, and `collate_pairs` splits a
    batch into its 2D images and its volumes. Images and volumes are decoded once and kept as uint8
    in memory: decoding DICOM costs far more than a training step of a small CNN on a CPU.
    Unreadable images and series that do not make a volume are reported and dropped up front.

    Args:
        pairs: from `records_to_pairs`.
        preprocess: the 2D preprocessing.
        progress: show a progress bar.
        volume: how volume pairs are prepared; required when a pair has `series`.
    """

    def __init__(self, pairs: list[Pair], preprocess: PreprocessConfig, progress: bool = False,
                 volume: VolumeEncoderConfig | None = None) -> None:
        self.preprocess = preprocess
        self.pairs: list[Pair] = []
        self.errors: list[ImageReadError] = []
        images, volumes, self._slots = [], [], []
        iterator = pairs
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(pairs, desc="decoding images", unit="img")
        for pair in iterator:
            try:
                tensor = _load_volume(pair, volume) if pair.series else _load_2d(pair, preprocess)
            except ImageReadError as err:
                log.warning("skipping %s", err)
                self.errors.append(err)
                continue
            store = volumes if pair.series else images
            self._slots.append((store is volumes, len(store)))
            store.append((tensor * 255.0).round().to(torch.uint8))
            self.pairs.append(pair)
        if not self.pairs:
            first = self.errors[0] if self.errors else "no images"
            raise ValueError(f"none of the {len(pairs)} images could be read; first error: {first}")
        size = preprocess.image_size
        self.images = torch.stack(images) if images else torch.zeros((0, 1, size, size), dtype=torch.uint8)
        self.volumes = torch.stack(volumes) if volumes else None

    @property
    def volume_count(self) -> int:
        return 0 if self.volumes is None else len(self.volumes)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        is_volume, row = self._slots[index]
        return (self.volumes if is_volume else self.images)[row].float() / 255.0, index


def _load_2d(pair: Pair, preprocess: PreprocessConfig) -> torch.Tensor:
    return resize_and_pad(select_frame(load_image(pair.image, pair.mask), preprocess.frame), preprocess.image_size)


def _load_volume(pair: Pair, config: VolumeEncoderConfig | None) -> torch.Tensor:
    """A volume pair's encoder input in [0, 1]; ImageReadError naming the series' first file if it fails."""
    if config is None:
        raise ValueError(f"{pair.image}: a volume pair needs the model's volume settings (model.volume); got None")
    try:
        volume = read_volume(pair.series, label=str(Path(pair.image).parent))
    except (DicomReadError, VolumeError) as err:
        raise ImageReadError(pair.image, f"series of {len(pair.series)} files is not a usable volume: {err}") from err
    return prepare_volume(volume.voxels, volume.spacing, volume.modality, config, volume.body_part)


def collate_pairs(batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
    """Split a batch of `PairedImageDataset` items into 2D images and volumes.

    Returns:
        images `[B2, 1, S, S]` or None, volumes `[B3, ...]` or None, and the `[B2 + B3]` dataset
        indices in the same order: the images' first, then the volumes' (as `DualEncoder.forward` wants).
    """
    flat = [item for item in batch if item[0].ndim == 3]  # [1, S, S]
    deep = [item for item in batch if item[0].ndim != 3]  # [1, D, S, S] or [K, 1, S, S]
    images = torch.stack([t for t, _ in flat]) if flat else None
    volumes = torch.stack([t for t, _ in deep]) if deep else None
    return images, volumes, torch.tensor([i for _, i in flat + deep], dtype=torch.long)
