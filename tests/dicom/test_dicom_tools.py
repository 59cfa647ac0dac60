"""medcm.dicom.read checked against real third-party DICOM tools: DCMTK (dcm2pnm, dcmconv) and
dicom3tools (dciodvfy). CI installs both from Debian; elsewhere these tests skip."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from medcm.dicom.read import read_instance
from medcm.dicom.write import write_image

UNCOMPRESSED_SAMPLES = [
    "CR_chest_440_nometa__fo-dicom_CR-MONO1-10-chest.dcm",  # MONOCHROME1, no file meta
    "CT_512__pydicom-data_693_UNCR.dcm",
    "CT_ankle_512__fo-dicom_CT-MONO2-16-ankle.dcm",
]


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (Debian packages dcmtk and dicom3tools; .ci/run installs them)")
    return path


def _dcm2pnm(source: Path, out: Path, *window: str) -> np.ndarray:
    subprocess.run([_tool("dcm2pnm"), *window, "+ot", str(source), str(out)], check=True, capture_output=True)
    return np.asarray(Image.open(out), dtype=np.float32)


@pytest.mark.parametrize("name", UNCOMPRESSED_SAMPLES)
def test_display_pipeline_matches_dcmtk_rendering_with_the_file_window(shared_data, tmp_path, name):
    source = shared_data / "dicom-samples" / name
    reference = _dcm2pnm(source, tmp_path / "ref.pgm", "+Wi", "1")
    ours = read_instance(source).pixels[0] * 255
    assert np.abs(ours - reference).max() <= 1.0  # same grey levels up to rounding


def test_default_ct_window_matches_dcmtk_soft_tissue_window(shared_data, tmp_path):
    source = shared_data / "dicom-samples" / "CT_512__pydicom-data_693_UNCR.dcm"
    ds = pydicom.dcmread(source)
    del ds.WindowCenter, ds.WindowWidth
    ds.save_as(tmp_path / "nowindow.dcm")
    reference = _dcm2pnm(source, tmp_path / "ref.pgm", "+Ww", "40", "400")
    ours = read_instance(tmp_path / "nowindow.dcm").pixels[0] * 255
    assert np.abs(ours - reference).max() <= 1.0


def test_dataset_written_without_file_meta_by_dcmtk_reads(shared_data, tmp_path):
    source = shared_data / "dicom-samples" / "CT_ankle_512__fo-dicom_CT-MONO2-16-ankle.dcm"
    bare = tmp_path / "bare.dcm"
    subprocess.run([_tool("dcmconv"), "-F", "+ti", str(source), str(bare)], check=True, capture_output=True)
    assert bare.read_bytes()[128:132] != b"DICM"
    np.testing.assert_array_equal(read_instance(bare).pixels, read_instance(source).pixels)


@pytest.mark.parametrize("shape, monochrome1", [((32, 24), False), ((32, 24), True), ((3, 32, 24), False)])
def test_written_images_validate_with_dciodvfy(tmp_path, shape, monochrome1):
    path = write_image(tmp_path / "x.dcm", np.random.default_rng(0).random(shape), modality="OT", monochrome1=monochrome1)
    report = subprocess.run([_tool("dciodvfy"), str(path)], capture_output=True, text=True)
    errors = [line for line in (report.stdout + report.stderr).splitlines() if line.startswith("Error")]
    assert errors == []


@pytest.mark.parametrize("preset", ["lung", "bone"])
def test_window_presets_match_dcmtk(shared_data, tmp_path, preset):
    from medcm.dicom.display import WINDOW_PRESETS

    source = shared_data / "dicom-samples" / "CT_512__pydicom-data_693_UNCR.dcm"
    center, width = WINDOW_PRESETS[preset]
    reference = _dcm2pnm(source, tmp_path / "ref.pgm", "+Ww", str(center), str(width))
    ours = read_instance(source, window=(center, width)).pixels[0] * 255
    assert np.abs(ours - reference).max() <= 1.0


@pytest.mark.parametrize("name", ["CT_512__pydicom-data_693_UNCR.dcm", "CT_chest_jpegll__notZaki_CT_JPEG70.dcm",
                                  "MR_head_64x64x10__pydicom-data_emri_small.dcm"])
def test_deidentified_copy_adds_no_dciodvfy_error(shared_data, tmp_path, name):
    """The Basic Profile's dummies, emptied and removed attributes keep a real file as valid as it was."""
    from medcm.dicom.deid import DeidConfig, deidentify

    from pydicom.dataset import Dataset

    ds = pydicom.dcmread(shared_data / "dicom-samples" / name)
    for keyword in ("ReferencedStudySequence", "ReferencedPerformedProcedureStepSequence"):  # X/Z, X/Z/D
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = "1.2.840.10008.3.1.2.3.1", "1.2.826.0.1.3680043.9.1"
        setattr(ds, keyword, [item])
    source, copy = tmp_path / "source.dcm", tmp_path / "copy.dcm"
    ds.save_as(source, enforce_file_format=True)
    deidentify(ds, DeidConfig(b"0123456789abcdef")).dataset.save_as(copy, enforce_file_format=True)

    def errors(path: Path) -> set[str]:
        report = subprocess.run([_tool("dciodvfy"), str(path)], capture_output=True, text=True)
        return {line.split(" - ", 1)[-1] for line in (report.stdout + report.stderr).splitlines()
                if line.startswith("Error") and "InstanceUID" not in line}  # UID values differ by design

    assert errors(copy) - errors(source) == set()
