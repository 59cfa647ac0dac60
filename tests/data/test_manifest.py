from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from medcm.config import PreprocessConfig
from medcm.config import REPORT_FINDINGS, AuxHeadConfig
from medcm.data.manifest import ImageReadError, PairedImageDataset, load_image, read_manifest, records_to_pairs, split_records
from medcm.dicom.write import write_image


def _write_manifest(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_manifest_resolves_relative_paths_and_defaults(tmp_path):
    (tmp_path / "sub").mkdir()
    manifest = _write_manifest(tmp_path / "sub" / "m.jsonl", [
        {"image": "a.png", "report": "FINDINGS: x."},
        {"images": ["b.dcm", "/abs/c.dcm"], "report": "y", "case_id": 7, "split": "dev", "meta": {"region": "Head"}},
        "",
    ])
    first, second = read_manifest(manifest)
    assert first.images == (str(tmp_path / "sub" / "a.png"),) and first.case_id == "line1" and first.split is None
    assert second.images == (str(tmp_path / "sub" / "b.dcm"), "/abs/c.dcm")
    assert (second.case_id, second.split, second.meta) == ("7", "dev", {"region": "Head"})


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "m.jsonl:1: not valid JSON"),
        ("[1, 2]", "m.jsonl:1: expected a JSON object, got list"),
        ('{"report": "x"}', "m.jsonl:1: expected 'image'"),
        ('{"images": [], "report": "x"}', "m.jsonl:1: expected 'image'"),
        ('{"image": "a.png", "report": "  "}', "m.jsonl:1: field 'report' must be a non-empty string"),
        ('{"image": "a.png", "report": "x", "meta": [1]}', "m.jsonl:1: field 'meta' must be an object"),
    ],
)
def test_manifest_errors_name_file_and_line(tmp_path, line, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        read_manifest(_write_manifest(tmp_path / "m.jsonl", [line]))


def test_missing_and_empty_manifests(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_manifest(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="no records"):
        read_manifest(_write_manifest(tmp_path / "m.jsonl", [""]))


def _records(tmp_path, n=40):
    lines = [{"image": f"{i}.png", "report": f"FINDINGS: case {i // 2}.", "case_id": f"c{i // 2}", "split": "train" if i < 30 else "dev"}
             for i in range(n)]
    return read_manifest(_write_manifest(tmp_path / "m.jsonl", lines))


def test_named_splits(tmp_path):
    train, val = split_records(_records(tmp_path), "train", "dev", 0.1, 0)
    # Lines of one case merge into one record with both images.
    assert len(train) == 15 and len(val) == 5 and all(len(r.images) == 2 for r in train + val)
    with pytest.raises(ValueError, match=r"split 'test' has no records; the data has splits \['dev', 'train'\]"):
        split_records(_records(tmp_path), "test", None, 0.1, 0)


def test_held_out_fraction_keeps_cases_whole_and_is_seeded(tmp_path):
    records = _records(tmp_path)
    train, val = split_records(records, None, None, 0.3, seed=1)
    assert {r.case_id for r in train}.isdisjoint({r.case_id for r in val})
    assert 0 < len(val) < len(records) and len(train) + len(val) == len(records)
    assert split_records(records, None, None, 0.3, seed=1) == (train, val)
    assert split_records(records, None, None, 0.3, seed=2) != (train, val)


def test_lines_of_one_case_must_agree(tmp_path):
    lines = [{"image": "a.png", "report": "FINDINGS: x.", "case_id": "c1"},
             {"image": "b.png", "report": "FINDINGS: y.", "case_id": "c1"}]
    with pytest.raises(ValueError, match=r"m.jsonl: case_id 'c1' appears on several lines with different 'report'"):
        read_manifest(_write_manifest(tmp_path / "m.jsonl", lines))


def test_csv_manifest_splits_images_and_keeps_extra_columns_as_meta(tmp_path):
    (tmp_path / "m.csv").write_text(
        "image,report,study_id,patient_id,split,region\n"
        "a.png;sub/b.dcm,\"FINDINGS: Small effusion, left.\",S1,P1,train,Thorax\n"
        ",,,,,\n"
        "c.jpg,FINDINGS: Normal.,S2,,dev,\n", encoding="utf-8")
    first, second = read_manifest(tmp_path / "m.csv")
    assert first.images == (str(tmp_path / "a.png"), str(tmp_path / "sub" / "b.dcm"))
    assert (first.report, first.case_id, first.patient_id, first.split, first.meta) == (
        "FINDINGS: Small effusion, left.", "S1", "P1", "train", {"region": "Thorax"})
    assert (second.case_id, second.patient_id, second.meta) == ("S2", None, {})


@pytest.mark.parametrize("text, message", [
    ("path,report\na.png,x\n", r"m.csv: CSV header \['path', 'report'\] lacks 'image'"),
    ("image,report\na.png,x,extra\n", "m.csv:2: more values than the 2 header columns"),
    ("image,report\na.png,\n", "m.csv:2: field 'report' must be a non-empty string"),
])
def test_csv_manifest_errors_name_file_and_line(tmp_path, text, message):
    (tmp_path / "m.csv").write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        read_manifest(tmp_path / "m.csv")


def test_pairs_use_training_text_and_skip_empty_reports(tmp_path):
    records = read_manifest(_write_manifest(tmp_path / "m.jsonl", [
        {"images": ["a.png", "b.png"], "report": "INDICATION: cough.\nFINDINGS: Small left effusion.\nIMPRESSION: Effusion.", "meta": {"r": "Thorax"}},
        {"image": "c.png", "report": "INDICATION: cough."},
    ]))
    pairs = records_to_pairs(records, label_field="r")
    assert [(p.text, p.label) for p in pairs] == [("Small left effusion. Effusion.", "Thorax")] * 2


def test_report_findings_label_every_image_of_a_case(tmp_path):
    records = read_manifest(_write_manifest(tmp_path / "m.jsonl", [
        {"images": ["a.png", "b.png"], "report": "FINDINGS: Small left effusion. No pneumothorax.", "meta": {"r": "x"}},
        {"image": "c.png", "report": "FINDINGS: The lungs are clear. No effusion."},
    ]))
    pairs = records_to_pairs(records, label_field=REPORT_FINDINGS)
    assert [p.label for p in pairs] == [("effusion", "effusion:left", "fluid", "fluid:left")] * 2 + [("normal",)]


def test_report_findings_need_a_multi_label_head():
    with pytest.raises(ValueError, match="multi_label"):
        AuxHeadConfig(field=REPORT_FINDINGS)


def test_load_raster_images(tmp_path):
    gradient = np.tile(np.arange(256, dtype=np.uint8), (4, 1))
    Image.fromarray(gradient).save(tmp_path / "g8.png")
    Image.fromarray((gradient.astype(np.uint16) * 257)).save(tmp_path / "g16.png")
    Image.fromarray(np.stack([gradient] * 3, axis=-1)).save(tmp_path / "rgb.jpg", quality=100)
    expected = gradient[None].astype(np.float32) / 255
    np.testing.assert_allclose(load_image(tmp_path / "g8.png"), expected, atol=1e-6)
    np.testing.assert_allclose(load_image(tmp_path / "g16.png"), expected, atol=1e-6)
    np.testing.assert_allclose(load_image(tmp_path / "rgb.jpg"), expected, atol=0.02)


def test_load_dicom_goes_through_the_display_pipeline(tmp_path):
    pixels = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    write_image(tmp_path / "x.dcm", pixels, monochrome1=True)
    np.testing.assert_allclose(load_image(tmp_path / "x.dcm")[0], pixels, atol=1e-4)


@pytest.mark.parametrize("name, content, reason", [
    ("bad.png", b"not a png", "cannot read image"),
    ("bad.dcm", b"plain text, not DICOM", "not a DICOM file"),
])
def test_unreadable_images_raise_with_the_path(tmp_path, name, content, reason):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ImageReadError, match=reason) as info:
        load_image(tmp_path / name)
    assert info.value.path == str(tmp_path / name) and info.value.__cause__ is not None


def test_dataset_drops_unreadable_images_and_keeps_the_rest(tmp_path):
    Image.fromarray(np.full((10, 20), 255, dtype=np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"junk")
    records = read_manifest(_write_manifest(tmp_path / "m.jsonl", [
        {"images": ["ok.png", "bad.png"], "report": "FINDINGS: Normal."},
    ]))
    dataset = PairedImageDataset(records_to_pairs(records), PreprocessConfig(image_size=32))
    assert len(dataset) == 1 and len(dataset.errors) == 1 and "bad.png" in str(dataset.errors[0])
    image, index = dataset[0]
    assert image.shape == (1, 32, 32) and index == 0
    assert float(image[0, 16, 16]) == 1.0 and float(image[0, 0, 16]) == 0.0  # padded above, white inside
