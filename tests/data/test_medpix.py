"""MedPix 2.0: the watermark/footer mask, the folder reader on a generated mini MedPix, and the real data."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medcm.data.manifest import ManifestRecord, load_image, read_dataset
from medcm.data.medpix import FOOTER_ROWS, WATERMARK_HEIGHT, WATERMARK_WIDTH, mask_medpix, read_medpix

LOCATION_CATEGORIES = {"Head", "Spine and Muscles", "Thorax", "Abdomen", "Reproductive and Urinary System"}


# --- mask_medpix -------------------------------------------------------------------------------


def _expected_mask(frames: int, height: int, width: int, box_w: int, box_h: int, footer: int) -> np.ndarray:
    expected = np.ones((frames, height, width), np.float32)
    expected[:, :box_h, width - box_w :] = 0.0
    expected[:, height - footer :, :] = 0.0
    return expected


def test_mask_on_a_512_image_is_the_full_watermark_box_and_footer():
    # On 512 px none of the caps (50% / 15% of the width / height, 10% for the footer) binds.
    assert WATERMARK_WIDTH <= 256 and WATERMARK_HEIGHT <= int(512 * 0.15) and FOOTER_ROWS <= int(512 * 0.1)
    pixels = np.ones((1, 512, 512), np.float32)
    out = mask_medpix(pixels)
    np.testing.assert_array_equal(out, _expected_mask(1, 512, 512, WATERMARK_WIDTH, WATERMARK_HEIGHT, FOOTER_ROWS))
    assert out.dtype == np.float32
    assert (pixels == 1.0).all(), "the input must not be modified"


def test_mask_on_a_small_image_is_capped_to_a_share_of_it():
    # 100 high x 120 wide: box 60 (50% of 120) x 15 (15% of 100), footer 10 rows (10% of 100).
    pixels = np.ones((1, 100, 120), np.float32)
    out = mask_medpix(pixels)
    np.testing.assert_array_equal(out, _expected_mask(1, 100, 120, 60, 15, 10))
    assert int(out.sum()) == 100 * 120 - 60 * 15 - 10 * 120
    assert (pixels == 1.0).all()


def test_mask_covers_every_frame():
    out = mask_medpix(np.ones((2, 100, 120), np.float32))
    np.testing.assert_array_equal(out[0], out[1])
    np.testing.assert_array_equal(out, _expected_mask(2, 100, 120, 60, 15, 10))


@pytest.mark.parametrize("shape", [(100, 120), (1, 1, 100, 120)])
def test_mask_rejects_other_than_three_dimensions(shape):
    with pytest.raises(ValueError, match=r"\[F, H, W\]"):
        mask_medpix(np.ones(shape, np.float32))


# --- the reader on a generated mini MedPix folder ----------------------------------------------

CASES = [
    {
        "U_id": "MPX9001",
        "TAC": ["MPX9001_synpic1", "MPX9001_synpic2"],
        "MRI": ["MPX9001_synpic3"],
        "Case": {
            "Title": "Glioblastoma",
            "History": "58-year-old man with headaches",
            "Exam": "N/A",
            "Findings": "Ring-enhancing mass in the left frontal lobe with surrounding edema.",
            "Differential Diagnosis": "Metastasis, abscess",
            "Case Diagnosis": "Glioblastoma multiforme",
            "Diagnosis By": "N/A",
        },
        "Topic": {"Title": "Glioblastoma", "Disease Discussion": "...", "ACR Code": "1.3", "Category": "Neoplasm, glial"},
    },
    {
        "U_id": "MPX9002",
        "TAC": [],
        "MRI": ["MPX9002_synpic4"],
        "Case": {"Title": "Disc herniation", "History": "N/A", "Findings": "L4-5 disc extrusion.",
                 "Case Diagnosis": "Disc herniation"},
        "Topic": {"Title": "Disc herniation", "ACR Code": "3.7", "Category": "Degenerative"},
    },
    {  # no images: skipped
        "U_id": "MPX9003",
        "TAC": [],
        "MRI": [],
        "Case": {"Title": "Empty", "History": "x", "Findings": "y", "Case Diagnosis": "z"},
        "Topic": {},
    },
]

DESCRIPTIONS = [
    {"Type": "CT", "U_id": "MPX9001", "image": "MPX9001_synpic1",
     "Description": {"ACR Codes": "1.3", "Age": "58", "Caption": "Axial CT: left frontal mass.",
                     "Figure Part": None, "Modality": "CT w/contrast (IV)", "Plane": "Axial", "Sex": "male"},
     "Location": "Brain", "Location Category": "Head"},
    {"Type": "CT", "U_id": "MPX9001", "image": "MPX9001_synpic2",
     "Description": {"Caption": "N/A", "Modality": "CT - noncontrast", "Plane": "Axial"},
     "Location": "Brain", "Location Category": "Head"},
    {"Type": "MR", "U_id": "MPX9001", "image": "MPX9001_synpic3",
     "Description": {"Caption": "  Replace this - description of the image   or findings. ", "Modality": "MR - T1W w/Gd",
                     "Plane": "Sagittal"},
     "Location": "Chest", "Location Category": "Thorax"},
    {"Type": "MR", "U_id": "MPX9002", "image": "MPX9002_synpic4",
     "Description": {"Caption": "Sagittal T2: extruded disc.", "Modality": "MR - T2 weighted", "Plane": "Sagittal"},
     "Location": "Spine", "Location Category": "Spine and Muscles"},
]


def _write_medpix(folder: Path, cases=CASES, descriptions=DESCRIPTIONS, splits=None, skip_images=()) -> Path:
    (folder / "images").mkdir(parents=True)
    (folder / "Case_topic.json").write_text(json.dumps(cases), encoding="utf-8")
    (folder / "Descriptions.json").write_text(json.dumps(descriptions), encoding="utf-8")
    if splits is not None:
        (folder / "splits.json").write_text(json.dumps(splits), encoding="utf-8")
    rng = np.random.default_rng(0)
    for case in cases:
        for name in [*case["TAC"], *case["MRI"]]:
            if name not in skip_images:
                array = rng.integers(60, 256, size=(80, 96), dtype=np.uint8)  # bright everywhere
                Image.fromarray(array, mode="L").save(folder / "images" / f"{name}.png")
    return folder


def _by_id(records: list[ManifestRecord]) -> dict[str, ManifestRecord]:
    return {r.case_id: r for r in records}


def test_reader_builds_one_record_per_case_with_report_and_metadata(tmp_path):
    folder = _write_medpix(tmp_path / "mp")
    records = _by_id(read_medpix(folder))
    assert sorted(records) == ["MPX9001", "MPX9002"], "a case without images is skipped"

    glio = records["MPX9001"]
    assert glio.report == ("HISTORY: 58-year-old man with headaches\n"
                           "FINDINGS: Ring-enhancing mass in the left frontal lobe with surrounding edema.\n"
                           "IMPRESSION: Glioblastoma multiforme")
    # CT (TAC) images first, then MRI, in the order the case lists them; absolute paths.
    assert glio.images == tuple(str((folder / "images" / f"MPX9001_synpic{i}.png").resolve()) for i in (1, 2, 3))
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in glio.images)
    assert glio.split is None and glio.mask == "medpix" and glio.patient_id is None
    assert [m["modality"] for m in glio.image_meta] == ["CT", "CT", "MR"]
    assert [m["region"] for m in glio.image_meta] == ["Head", "Head", "Thorax"]
    assert [m["caption"] for m in glio.image_meta] == ["Axial CT: left frontal mass.", "", ""], "N/A and placeholder -> ''"
    assert glio.image_meta[0]["plane"] == "Axial" and glio.image_meta[0]["modality_detail"] == "CT w/contrast (IV)"
    assert glio.meta["region"] == "Head", "the case region is its images' most common region"
    assert glio.meta["modality"] == "CT,MR"
    assert glio.meta["diagnosis"] == "Glioblastoma multiforme" and glio.meta["category"] == "Neoplasm, glial"
    assert glio.meta["acr_code"] == "1.3" and glio.meta["title"] == "Glioblastoma"
    # An image's metadata overrides the case's.
    assert glio.meta_of_image(2)["region"] == "Thorax" and glio.meta_of_image(2)["diagnosis"] == "Glioblastoma multiforme"

    disc = records["MPX9002"]
    assert disc.report == "FINDINGS: L4-5 disc extrusion.\nIMPRESSION: Disc herniation", "an N/A history is left out"
    assert disc.meta["region"] == "Spine and Muscles" and disc.meta["modality"] == "MR"
    assert disc.meta["history"] == ""


def test_reader_records_mask_the_watermark_when_loaded(tmp_path):
    record = _by_id(read_medpix(_write_medpix(tmp_path / "mp")))["MPX9002"]
    raw, masked = load_image(record.images[0]), load_image(record.images[0], record.mask)
    assert raw.shape == masked.shape == (1, 80, 96)
    # 80 x 96: box 48 x 12, footer 8 rows; the synthetic image is >= 60/255 everywhere.
    assert raw[:, :12, -48:].min() > 0.2 and raw[:, -8:].min() > 0.2
    assert (masked[:, :12, -48:] == 0).all() and (masked[:, -8:] == 0).all()
    np.testing.assert_array_equal(masked[:, 12:-8, :-48], raw[:, 12:-8, :-48])


def test_splits_json_sets_the_whole_split_not_its_halves(tmp_path):
    splits = {"train_1": ["MPX9001"], "train": ["MPX9001"], "train_2": [], "dev": ["MPX9002"]}
    records = _by_id(read_medpix(_write_medpix(tmp_path / "mp", splits=splits)))
    assert {k: r.split for k, r in records.items()} == {"MPX9001": "train", "MPX9002": "dev"}


def test_with_splits_json_a_case_in_no_split_is_left_out(tmp_path):
    records = read_medpix(_write_medpix(tmp_path / "mp", splits={"dev": ["MPX9002"]}))
    assert [(r.case_id, r.split) for r in records] == [("MPX9002", "dev")]


def test_read_dataset_reads_medpix_and_rejects_unknown_formats(tmp_path):
    folder = _write_medpix(tmp_path / "mp")
    assert read_dataset(folder, "medpix") == read_medpix(folder)
    assert read_dataset(str(folder), "medpix")[0].case_id == "MPX9001"
    with pytest.raises(ValueError, match="'nope'"):
        read_dataset(folder, "nope")


def test_a_listed_image_missing_on_disk_is_an_error_naming_it(tmp_path):
    folder = _write_medpix(tmp_path / "mp", skip_images=("MPX9001_synpic2",))
    with pytest.raises(FileNotFoundError, match="MPX9001_synpic2.png") as info:
        read_medpix(folder)
    assert "MPX9001" in str(info.value)


@pytest.mark.parametrize("name", ["Case_topic.json", "Descriptions.json", "splits.json"])
def test_malformed_json_is_an_error_naming_the_file(tmp_path, name):
    folder = _write_medpix(tmp_path / "mp", splits={"dev": ["MPX9002"]})
    (folder / name).write_text('[{"U_id": "MPX9001",', encoding="utf-8")
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        read_medpix(folder)


def test_wrongly_shaped_json_and_missing_files_are_clear_errors(tmp_path):
    folder = _write_medpix(tmp_path / "mp")
    (folder / "Case_topic.json").write_text('{"U_id": "MPX9001"}', encoding="utf-8")
    with pytest.raises(ValueError, match="Case_topic.json.*list"):
        read_medpix(folder)
    (folder / "Case_topic.json").write_text('[{"TAC": []}]', encoding="utf-8")
    with pytest.raises(ValueError, match="record 0 has no 'U_id'"):
        read_medpix(folder)
    (folder / "Descriptions.json").unlink()
    with pytest.raises(FileNotFoundError, match="Descriptions.json"):
        read_medpix(folder)
    with pytest.raises(FileNotFoundError, match="not found"):
        read_medpix(tmp_path / "absent")


def test_a_folder_without_any_case_with_images_is_an_error(tmp_path):
    folder = _write_medpix(tmp_path / "mp", cases=[CASES[2]])
    with pytest.raises(ValueError, match="no MedPix case with images"):
        read_medpix(folder)


# --- the real MedPix 2.0 data ------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_records(shared_data):
    return read_dataset(shared_data / "medpix-2.0", "medpix")


def test_real_medpix_splits_and_counts(real_records):
    by_split = Counter(r.split for r in real_records)
    assert by_split == {"train": 535, "dev": 67}
    images = Counter()
    for r in real_records:
        images[r.split] += len(r.images)
    assert images == {"train": 1653, "dev": 197}
    assert len({r.case_id for r in real_records}) == 602


def test_real_medpix_records_are_complete(real_records):
    for r in real_records:
        assert r.mask == "medpix"
        assert len(r.image_meta) == len(r.images)
        assert all(Path(p).is_file() for p in r.images)
        assert r.meta["region"] in LOCATION_CATEGORIES
        assert {m["region"] for m in r.image_meta} <= LOCATION_CATEGORIES
        assert set(r.meta["modality"].split(",")) <= {"CT", "MR"}
        assert r.report.splitlines()[0].startswith(("HISTORY: ", "FINDINGS: ", "IMPRESSION: "))


def test_real_medpix_image_loses_its_bright_watermark_and_footer(real_records):
    path = real_records[0].images[0]
    raw, masked = load_image(path), load_image(path, "medpix")
    _, height, width = raw.shape
    box_w = min(WATERMARK_WIDTH, int(width * 0.5))
    box_h = min(WATERMARK_HEIGHT, int(height * 0.15))
    footer = min(FOOTER_ROWS, int(height * 0.1))
    assert raw[:, :box_h, width - box_w :].max() > 0.5, "the real watermark is bright"
    assert raw[:, height - footer :].max() > 0.5, "the real footer text is bright"
    assert (masked[:, :box_h, width - box_w :] == 0).all() and (masked[:, height - footer :] == 0).all()
    np.testing.assert_array_equal(masked[:, box_h : height - footer, : width - box_w],
                                  raw[:, box_h : height - footer, : width - box_w])
