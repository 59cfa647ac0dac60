"""MedPix 2.0 (Siragusa et al., 2025): real CT/MR teaching cases with per-image captions and case reports.

The folder holds `Case_topic.json` (one record per case, `U_id`), `Descriptions.json` (one record
per image), `images/<image>.png` and optionally `splits.json` (case ids per split; without it every
case is read with no split). Each case becomes one `ManifestRecord` whose report is

    HISTORY: <History>
    FINDINGS: <Findings>
    IMPRESSION: <Case Diagnosis>

so that training, drafting and evaluation see the Findings as FINDINGS. Every image carries a
burned-in "MedPix" watermark (top right) and a footer naming the uploader; `mask_medpix` blacks
both out before any encoder sees the pixels.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from medcm.data.records import ManifestRecord

# The watermark is drawn at a roughly fixed pixel size (about 105 × 25 px on 512-px images, up to
# 110 × 35 px on smaller ones) and the footer is 20–25 px of text under the image. The box is
# capped to a share of the image so that small images keep most of their pixels.
WATERMARK_WIDTH, WATERMARK_HEIGHT, FOOTER_ROWS = 120, 36, 26
_MAX_WATERMARK_SHARE = (0.5, 0.15)  # of the width, of the height
_MAX_FOOTER_SHARE = 0.1

# Upstream placeholders that carry no content.
_EMPTY_VALUES = {"", "n/a", "na", "none", "replace this - description of the image or findings."}


def mask_medpix(pixels: np.ndarray) -> np.ndarray:
    """Black out the MedPix watermark (top-right box) and footer (bottom rows) of `[F, H, W]` pixels.

    Returns:
        A masked copy; the input is unchanged.
    """
    if pixels.ndim != 3:
        raise ValueError(f"pixels: expected [F, H, W], got shape {pixels.shape}")
    out = pixels.copy()
    _, height, width = out.shape
    box_w = min(WATERMARK_WIDTH, int(width * _MAX_WATERMARK_SHARE[0]))
    box_h = min(WATERMARK_HEIGHT, int(height * _MAX_WATERMARK_SHARE[1]))
    footer = min(FOOTER_ROWS, int(height * _MAX_FOOTER_SHARE))
    out[:, :box_h, width - box_w :] = 0.0
    if footer:
        out[:, height - footer :, :] = 0.0
    return out


def read_medpix(folder: str | Path) -> list[ManifestRecord]:
    """Read a MedPix 2.0 folder as one record per case, images in the order the case lists them.

    Cases without images are skipped; images listed by a case but missing from `images/` are an error.

    Raises:
        FileNotFoundError: the folder or one of its JSON files or images is missing.
        ValueError: a JSON file is malformed (the message names the file and the record).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"MedPix folder not found: {folder}")
    cases = _read_json_list(folder / "Case_topic.json")
    descriptions = {}
    for number, item in enumerate(_read_json_list(folder / "Descriptions.json")):
        if not isinstance(item, dict) or not isinstance(item.get("image"), str):
            raise ValueError(f"{folder / 'Descriptions.json'}: record {number} has no 'image' name")
        descriptions[item["image"]] = item
    split_of = _read_splits(folder / "splits.json")
    records = []
    for number, case in enumerate(cases):
        record = _case_record(folder, case, descriptions, split_of, number)
        if record is not None and (not split_of or record.split is not None):
            records.append(record)
    if not records:
        raise ValueError(f"{folder}: no MedPix case with images found")
    return records


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from err


def _read_json_list(path: Path) -> list[Any]:
    if not path.is_file():
        raise FileNotFoundError(f"MedPix file not found: {path}")
    data = _read_json(path)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return data


def _read_splits(path: Path) -> dict[str, str]:
    """Case id → split; the halves of a split (`train_1`, `train_2`) are ignored when the whole is there."""
    if not path.is_file():
        return {}
    splits = _read_json(path)
    if not isinstance(splits, dict) or not all(isinstance(v, list) for v in splits.values()):
        raise ValueError(f"{path}: expected an object of split name → list of case ids")
    split_of: dict[str, str] = {}
    # Whole splits first, so "train" wins over its halves "train_1"/"train_2".
    for name in sorted(splits, key=lambda n: ("_" in n, n)):
        for case_id in splits[name]:
            split_of.setdefault(str(case_id), name)
    return split_of


def _text(value: Any) -> str:
    text = " ".join(str(value).split()) if value is not None else ""
    return "" if text.lower() in _EMPTY_VALUES else str(value).strip()


def _case_record(folder: Path, case: Any, descriptions: dict[str, dict], split_of: dict[str, str],
                 number: int) -> ManifestRecord | None:
    where = f"{folder / 'Case_topic.json'}: record {number}"
    if not isinstance(case, dict) or not isinstance(case.get("U_id"), str):
        raise ValueError(f"{where} has no 'U_id'")
    case_id = case["U_id"]
    body = case.get("Case") or {}
    topic = case.get("Topic") or {}
    names = [*(case.get("TAC") or []), *(case.get("MRI") or [])]
    if not names:
        return None
    images, image_meta = [], []
    for name in names:
        path = folder / "images" / f"{name}.png"
        if not path.is_file():
            raise FileNotFoundError(f"{where} ({case_id}): image {path} not found")
        images.append(str(path.resolve()))
        image_meta.append(_image_meta(descriptions.get(name, {})))
    report = _report(body)
    regions = Counter(m["region"] for m in image_meta if m.get("region"))
    meta = {
        "title": _text(body.get("Title")),
        "diagnosis": _text(body.get("Case Diagnosis")),
        "history": _text(body.get("History")),
        "findings": _text(body.get("Findings")),
        "category": _text(topic.get("Category")),
        "acr_code": _text(topic.get("ACR Code")),
        "region": regions.most_common(1)[0][0] if regions else "",
        "modality": ",".join(sorted({m["modality"] for m in image_meta if m.get("modality")})),
    }
    # MedPix publishes no patient identifier: one case is one patient's study.
    return ManifestRecord(images=tuple(images), report=report, case_id=case_id, split=split_of.get(case_id),
                          meta=meta, image_meta=tuple(image_meta), mask="medpix")


def _report(body: dict[str, Any]) -> str:
    parts = [("HISTORY", _text(body.get("History"))), ("FINDINGS", _text(body.get("Findings"))),
             ("IMPRESSION", _text(body.get("Case Diagnosis")))]
    return "\n".join(f"{name}: {text}" for name, text in parts if text) or f"IMPRESSION: {_text(body.get('Title'))}"


def _image_meta(item: dict[str, Any]) -> dict[str, Any]:
    description = item.get("Description") or {}
    return {
        "modality": _text(item.get("Type")),
        "region": _text(item.get("Location Category")),
        "location": _text(item.get("Location")),
        "plane": _text(description.get("Plane")),
        "caption": _text(description.get("Caption")),
        "modality_detail": _text(description.get("Modality")),
        "sex": _text(description.get("Sex")),
        "age": _text(description.get("Age")),
    }
