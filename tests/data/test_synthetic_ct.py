"""Tests of the synthetic CT volume data set: DICOM geometry, manifest, determinism, finding signatures."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medcm.data.synthetic_ct import FINDINGS, HU, SLICE_MM, make_volume_case, make_volume_cases, write_volume_dataset
from medcm.dicom.series import read_volumes

DEPTH, SIZE = 16, 48


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic-volume")
    return write_volume_dataset(folder, n_train=4, n_dev=2, seed=3, depth=DEPTH, size=SIZE)


def _lines(manifest):
    return [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]


def test_manifest_lines(dataset):
    lines = _lines(dataset)
    assert [line["split"] for line in lines] == ["train"] * 4 + ["dev"] * 2
    assert [line["case_id"] for line in lines[:2]] == ["case-train-00000", "case-train-00001"]
    assert [line["meta"]["finding"] for line in lines[:4]] == list(FINDINGS)
    for line in lines:
        assert len(line["images"]) == DEPTH
        assert all((dataset.parent / image).is_file() for image in line["images"])
        assert line["report"].startswith("FINDINGS: ") and "\nIMPRESSION: " in line["report"]
        folder = dataset.parent / line["case_id"]
        assert (folder / "report.txt").read_text(encoding="utf-8").strip() == line["report"]
        if line["meta"]["finding"] != "normal":
            assert line["meta"]["side"] in line["report"].lower()


def test_series_assemble_with_geometry_and_hounsfield_units(dataset):
    lines = _lines(dataset)
    volumes, errors = read_volumes(dataset.parent / lines[1]["case_id"])
    assert errors == [] and len(volumes) == 1
    volume = volumes[0]
    assert volume.voxels.shape == (DEPTH, SIZE, SIZE) and volume.modality == "CT" and volume.warnings == ()
    assert volume.spacing == pytest.approx((SLICE_MM, 360 / SIZE, 360 / SIZE))
    assert volume.voxels.min() >= -1024 and volume.voxels.max() < 1000
    corner, centre = volume.voxels[:, :3, :3], volume.voxels[:, SIZE // 2 - 1 : SIZE // 2 + 1, SIZE // 2]
    assert abs(float(corner.mean()) - HU["air"]) < 30  # outside the body
    assert abs(float(centre.mean()) - HU["soft"]) < 30  # mediastinum
    assert (volume.voxels > 500).mean() > 0.02  # ribs and spine
    expected = make_volume_cases(2, seed=3, depth=DEPTH, size=SIZE)[1].voxels
    np.testing.assert_array_equal(volume.voxels, expected.astype(np.float32))  # slice 0 inferior, as generated


def test_deterministic_per_seed(tmp_path):
    first = write_volume_dataset(tmp_path / "a", 2, 1, seed=5, depth=8, size=32)
    second = write_volume_dataset(tmp_path / "b", 2, 1, seed=5, depth=8, size=32)
    other = write_volume_dataset(tmp_path / "c", 2, 1, seed=6, depth=8, size=32)
    assert first.read_bytes() == second.read_bytes() != other.read_bytes()  # reports differ with the seed
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.dcm"))
    assert len(files) == 3 * 8
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert (tmp_path / "a" / files[0]).read_bytes() != (tmp_path / "c" / files[0]).read_bytes()


def _pair(finding, seed):
    """A case and a normal case drawn from the same random state: same anatomy (drawn first), other noise."""
    case = make_volume_case(finding, np.random.default_rng(seed), depth=24, size=64)
    return case, make_volume_case("normal", np.random.default_rng(seed), depth=24, size=64).voxels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nodule_is_a_blob_on_a_few_slices(seed):
    case, normal = _pair("nodule", seed)
    assert 2 <= len(case.finding_slices) <= 5
    assert case.level in ("upper", "lower") and case.level in case.report
    soft_in_lung = [int(((normal[k] < -500) & (case.voxels[k] > -300)).sum()) for k in range(24)]
    hit = [k for k, n in enumerate(soft_in_lung) if n >= 3]
    assert hit and set(hit) <= set(case.finding_slices)  # confined to a few slices
    assert max(soft_in_lung) <= 40  # a small blob, not a layer
    assert (np.mean(case.finding_slices) > 12) == (case.level == "upper")  # slice 0 is inferior


@pytest.mark.parametrize("seed", [0, 1])
def test_effusion_is_a_posterior_fluid_layer_over_many_slices(seed):
    case, normal = _pair("effusion", seed)
    assert len(case.finding_slices) >= 12 and case.finding_slices[0] == 0 and 12 in case.finding_slices
    lung, fluid = normal[12] < -500, (normal[12] < -500) & (case.voxels[12] > -300)
    assert fluid.sum() >= 20  # the middle slice shows it
    rows, columns = np.nonzero(fluid)
    lung_rows, lung_columns = np.nonzero(lung)
    assert (columns.mean() > lung_columns.mean()) == (case.side == "left")  # patient's left is image right
    assert rows.mean() > lung_rows.mean() + 3  # dependent: posterior, the lower rows


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fracture_is_a_rib_gap_on_a_few_slices(seed):
    case, normal = _pair("fracture", seed)
    assert 2 <= len(case.finding_slices) <= 4
    bone_lost = [int(((normal[k] > 400) & (case.voxels[k] < 200)).sum()) for k in range(24)]
    assert [k for k, n in enumerate(bone_lost) if n > 0] == list(case.finding_slices)
    assert min(bone_lost[k] for k in case.finding_slices) >= 6
    columns = np.nonzero((normal[case.finding_slices[0]] > 400) & (case.voxels[case.finding_slices[0]] < 200))[1]
    assert (columns.mean() > 32) == (case.side == "left")  # patient's left is image right


def test_normal_has_no_finding_and_unknown_finding_is_refused():
    case = make_volume_case("normal", np.random.default_rng(0), 24, 64)
    assert case.finding_slices == () and case.side == "" and case.voxels.dtype == np.int16
    with pytest.raises(ValueError, match="finding"):
        make_volume_case("mass", np.random.default_rng(0))
    with pytest.raises(ValueError, match="depth"):
        make_volume_case("normal", np.random.default_rng(0), depth=4)
