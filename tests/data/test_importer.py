"""`medcm import`: manifests (JSONL, CSV) and MedPix folders into a real SQLite case store."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from db.store import CaseStore
from medcm.data.manifest import ManifestRecord, load_image, read_dataset
from medcm.dicom.read import read_instance
from medcm.dicom.write import write_image
from medcm.engine.facade import Engine
from medcm.data.importer import (
    BATCH_CASES,
    case_folder,
    case_uid,
    dicom_code_string,
    dicom_modality,
    import_records,
)
from medcm.data.medpix import mask_medpix
from paired_archive import REPORTS, grey, write_manifest, write_sources


def _engine(tmp_path: Path, checkpoint: Path | None = None) -> Engine:
    return Engine(CaseStore(f"sqlite:///{tmp_path / 'cases.db'}"), checkpoint=checkpoint, device="cpu")


@pytest.mark.parametrize("kind", ["jsonl", "csv"])
def test_manifest_import_stores_cases_pixels_and_tags(tmp_path, kind):
    records = read_dataset(write_manifest(tmp_path / "data", kind), "manifest")
    engine = _engine(tmp_path)
    result = import_records(engine, records, tmp_path / "files")
    assert (result.cases, result.studies, result.added_instances, result.added_reports) == (3, 3, 4, 3)
    assert (result.skipped_instances, result.added_embeddings, result.errors) == (0, 0, ())
    store = engine.store
    assert len(store.list_studies()) == 3
    for record in records:
        (study_uid,) = result.case_studies[record.case_id]
        assert store.latest_report(study_uid).text == REPORTS[record.case_id]
        instances = store.get_study(study_uid).instances
        assert len(instances) == len(record.images)
        for source, instance in zip(record.images, instances):
            stored = read_instance(instance.path)
            np.testing.assert_allclose(stored.pixels, load_image(source), atol=1e-4)
    c1 = store.get_study(result.case_studies["c1"][0])
    assert (c1.modalities, c1.body_parts, c1.description, c1.patient_id) == (("CT",), ("THORAX",), "Effusion", "c1")
    assert [Path(i.path).name for i in c1.instances] == ["1.dcm", "2.dcm"]
    c2 = store.get_study(result.case_studies["c2"][0])  # DICOM: stored as it is, its own UIDs and tags
    assert (c2.modalities, c2.body_parts, c2.patient_id) == (("MR",), ("HEAD",), "P2")
    assert c2.instances[0].path == str(tmp_path / "data" / "images" / "c2.dcm")
    assert read_instance(c2.instances[0].path).meta.study_uid == c2.study_uid
    c3 = store.get_study(result.case_studies["c3/x"][0])
    assert (c3.modalities, c3.body_parts) == (("MR",), ())  # "mri" → MR; no region, no body part
    assert Path(c3.instances[0].path).parent.name == case_folder("c3/x") != "c3_x"

    again = import_records(engine, records, tmp_path / "files")
    assert (again.added_instances, again.skipped_instances, again.added_reports, again.errors) == (0, 4, 0, ())
    assert again.case_studies == result.case_studies


def test_broken_image_is_one_error_and_the_rest_imports(tmp_path):
    folder = tmp_path / "data"
    cases = write_sources(folder)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    record = ManifestRecord(images=(str(folder / "broken.png"), *(str(folder / n) for n in cases["c1"])),
                            report=REPORTS["c1"], case_id="c1")
    missing = ManifestRecord(images=(str(folder / "gone.dcm"),), report="FINDINGS: x.", case_id="gone")
    result = import_records(_engine(tmp_path), [record, missing], tmp_path / "files")
    assert (result.cases, result.added_instances, result.added_reports) == (1, 2, 1)
    assert len(result.errors) == 2
    assert result.errors[0].startswith(f"{folder / 'broken.png'}: cannot read image")
    assert result.errors[1].startswith(f"{folder / 'gone.dcm'}: cannot read file")
    assert sorted(p.name for p in (tmp_path / "files" / "c1").iterdir()) == ["2.dcm", "3.dcm"]  # by position


def test_changed_source_is_refused_and_the_stored_file_kept(tmp_path):
    folder = tmp_path / "data"
    write_sources(folder)
    record = ManifestRecord(images=(str(folder / "c1a.png"),), report=REPORTS["c1"], case_id="c1")
    engine = _engine(tmp_path)
    first = import_records(engine, [record], tmp_path / "files")
    stored = (tmp_path / "files" / "c1" / "1.dcm").read_bytes()
    Image.fromarray((grey(9) * 255).astype(np.uint8)).save(folder / "c1a.png")
    again = import_records(engine, [record], tmp_path / "files")
    assert first.added_instances == 1 and again.added_instances == 0
    assert len(again.errors) == 1 and "exists with other content" in again.errors[0]
    assert (tmp_path / "files" / "c1" / "1.dcm").read_bytes() == stored
    assert [p.name for p in (tmp_path / "files" / "c1").iterdir()] == ["1.dcm"]  # no staging file left


def test_a_refused_batch_is_one_error_and_the_next_batch_imports(tmp_path, monkeypatch):
    folder = tmp_path / "data"
    cases = write_sources(folder)
    dicom = ManifestRecord(images=(str(folder / "c2.dcm"),), report=REPORTS["c2"], case_id="c2")
    engine = _engine(tmp_path)
    assert import_records(engine, [dicom], tmp_path / "files").added_instances == 1
    meta = read_instance(folder / "c2.dcm").meta  # now change its pixels under the same UIDs
    write_image(folder / "c2.dcm", grey(8), patient_id="P2", study_uid=meta.study_uid, series_uid=meta.series_uid,
                sop_instance_uid=meta.sop_instance_uid)
    png = ManifestRecord(images=(str(folder / cases["c1"][0]),), report=REPORTS["c1"], case_id="c1")
    monkeypatch.setattr("medcm.data.importer.BATCH_CASES", 1)
    result = import_records(engine, [dicom, png], tmp_path / "files")
    assert (result.cases, result.added_instances, result.added_reports, list(result.case_studies)) == (1, 1, 1, ["c1"])
    assert len(result.errors) == 1
    assert result.errors[0].startswith("cases 'c2'…'c2' (1): none stored, the store refused their batch: instance ")


def test_batches_and_embeddings_with_a_checkpoint(tmp_path, tiny_model, tiny_config):
    from medcm.checkpoint import save_checkpoint

    source = tmp_path / "a.png"
    Image.fromarray((grey(5) * 255).astype(np.uint8)).save(source)
    records = [ManifestRecord(images=(str(source),), report=f"FINDINGS: case {i}.", case_id=f"k{i}")
               for i in range(BATCH_CASES + 2)]  # two batches
    engine = _engine(tmp_path, save_checkpoint(tmp_path / "ckpt", tiny_model, tiny_config))
    result = import_records(engine, records, tmp_path / "files")
    n = len(records)
    assert (result.cases, result.studies, result.added_instances, result.added_reports) == (n, n, n, n)
    assert result.added_embeddings == 2 * n  # an image and a report per case
    assert engine.store.count_embeddings("image", engine.model_id) == n


def _medpix_folder(folder: Path, cases: list[dict], descriptions: list[dict], images: dict[str, Path]) -> Path:
    (folder / "images").mkdir(parents=True)
    (folder / "Case_topic.json").write_text(json.dumps(cases), encoding="utf-8")
    (folder / "Descriptions.json").write_text(json.dumps(descriptions), encoding="utf-8")
    for name, source in images.items():
        os.symlink(source, folder / "images" / f"{name}.png")
    return folder


def test_medpix_masks_burned_in_text_in_the_stored_copy(tmp_path):
    source = tmp_path / "src.png"
    Image.fromarray(np.full((300, 400), 200, np.uint8)).save(source)
    case = {"U_id": "MPX1", "TAC": ["MPX1_a"], "MRI": ["MPX1_b"],
            "Case": {"Title": "T", "Findings": "Something.", "Case Diagnosis": "D"}}
    descriptions = [{"image": "MPX1_a", "Type": "CT", "Location Category": "Spine and Muscles"},
                    {"image": "MPX1_b", "Type": "MR", "Location Category": "Head"}]
    folder = _medpix_folder(tmp_path / "medpix", [case], descriptions, {"MPX1_a": source, "MPX1_b": source})
    engine = _engine(tmp_path)
    result = import_records(engine, read_dataset(folder, "medpix"), tmp_path / "files")
    assert (result.cases, result.added_instances, result.added_reports, result.errors) == (1, 2, 1, ())
    study = engine.store.get_study(result.case_studies["MPX1"][0])
    assert (sorted(study.modalities), sorted(study.body_parts)) == (["CT", "MR"], ["HEAD", "SPINE"])
    pixels = read_instance(study.instances[0].path).pixels
    masked = mask_medpix(np.ones_like(pixels)) == 0
    assert masked.any() and np.all(pixels[masked] == 0)
    np.testing.assert_allclose(pixels[~masked], 200 / 255, atol=1e-4)


def test_medpix_slice_of_the_real_data(tmp_path, shared_data):
    medpix = shared_data / "medpix-2.0"
    cases = json.loads((medpix / "Case_topic.json").read_text(encoding="utf-8"))[:3]
    names = {name for case in cases for name in (case.get("TAC") or []) + (case.get("MRI") or [])}
    descriptions = [d for d in json.loads((medpix / "Descriptions.json").read_text(encoding="utf-8"))
                    if d["image"] in names]
    folder = _medpix_folder(tmp_path / "medpix", cases, descriptions,
                            {name: medpix / "images" / f"{name}.png" for name in names})
    records = read_dataset(folder, "medpix")
    result = import_records(_engine(tmp_path), records, tmp_path / "files")
    assert (result.cases, result.studies, result.added_reports, result.errors) == (3, 3, 3, ())
    assert result.added_instances == len(names) == sum(len(r.images) for r in records)
    watermark_seen = False
    for record in records:
        for index, image in enumerate(record.images):
            stored = read_instance(tmp_path / "files" / record.case_id / f"{index + 1}.dcm").pixels
            masked = mask_medpix(np.ones_like(stored)) == 0
            assert np.all(stored[masked] == 0)
            np.testing.assert_allclose(stored, load_image(image, "medpix"), atol=1e-4)
            watermark_seen |= bool(load_image(image)[masked].max() > 0)  # the mask hid real pixels
    assert watermark_seen


@pytest.mark.parametrize("value, expected", [
    ("Thorax", "THORAX"), ("Spine and Muscles", "SPINE"), ("Reproductive and Urinary System", "REPRODUCTIVE"),
    ("head/neck", "HEAD NECK"), ("Côte", "COTE"), ("", ""), ("ABCDEFGHIJKLMNOPQRST", "ABCDEFGHIJKLMNOP"),
])
def test_body_part_is_a_valid_code_string(value, expected):
    assert dicom_code_string(value) == expected


def test_modalities_and_derived_uids():
    assert [dicom_modality(m) for m in ("CT", " mr ", "MRI", "PET", "X-ray", "")] == ["CT", "MR", "MR", "PT", "OT", "OT"]
    uid = case_uid("c1", "image", 0)
    assert uid == case_uid("c1", "image", 0) != case_uid("c1", "image", 1)
    assert case_uid("ab", "c") != case_uid("a", "bc")
    assert uid.startswith("2.25.") and len(uid) <= 64 and all(part.isdigit() for part in uid.split("."))
    assert case_folder("MPX1009") == "MPX1009" and case_folder("../x").startswith("___x-")
