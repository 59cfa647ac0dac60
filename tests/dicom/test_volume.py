"""Series → volume: sorting along the normal, spacing, rescale, enhanced multi-frame, and every bad case."""

from __future__ import annotations

import random
import shutil
import zipfile

import numpy as np
import pydicom
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, EnhancedCTImageStorage, ExplicitVRLittleEndian, generate_uid

from medcm.dicom.read import DicomReadError
from medcm.dicom.volume import VolumeError, assemble_volume, is_volume_series
from medcm.dicom.series import read_volumes

SIZE, N, STEP = 16, 8, 2.5
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def stored_pixels(index: int, rows: int = SIZE, columns: int = SIZE) -> np.ndarray:
    """Stored values [rows, columns] that encode the slice index (and the column, to catch flips)."""
    return (1000 + 10 * index + np.tile(np.arange(columns, dtype=np.uint16), (rows, 1))).astype(np.uint16)


def base_dataset(sop_class: str, series_uid: str, modality: str = "CT") -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3.4", series_uid
    ds.Modality, ds.BodyPartExamined, ds.PatientID = modality, "CHEST", "ANON"
    ds.FrameOfReferenceUID = "1.2.3.4.5"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    return ds


def make_slice(index: int, series_uid: str = "1.2.3.4.100", *, position: tuple[float, ...] | None = None,
               orientation: tuple[float, ...] | None = AXIAL, pixel_spacing: tuple[float, float] = (0.8, 0.7),
               rows: int = SIZE, columns: int = SIZE, slope: float = 1.0, intercept: float = -1024.0,
               modality: str = "CT") -> Dataset:
    """A CT Image Storage slice; by default at z = index * STEP, axial."""
    ds = base_dataset(CTImageStorage, series_uid, modality)
    ds.InstanceNumber = index + 1
    if orientation is not None:
        ds.ImageOrientationPatient = list(orientation)
        normal = np.cross(orientation[:3], orientation[3:])
        ds.ImagePositionPatient = [round(float(v), 6) for v in (position or (-20.0, 10.0, 0.0) + index * STEP * normal)]
    ds.PixelSpacing, ds.SliceThickness = list(pixel_spacing), STEP
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.Rows, ds.Columns = rows, columns
    ds.PixelData = stored_pixels(index, rows, columns).tobytes()
    return ds


def series(n: int = N, **kwargs) -> list[Dataset]:
    return [make_slice(i, **kwargs) for i in range(n)]


def expected_hu(order: list[int], slope: float = 1.0, intercept: float = -1024.0) -> np.ndarray:
    return np.stack([stored_pixels(i) * slope + intercept for i in order]).astype(np.float32)


def shuffled(items: list, seed: int = 0) -> list:
    items = list(items)
    random.Random(seed).shuffle(items)
    return items


# --- the shared synthetic series ----------------------------------------------------------------

def test_shared_series_assembles_in_order(shared_data):
    folder = shared_data / "dicom-series-synthetic"
    volumes, errors = read_volumes(folder)
    assert errors == [] and len(volumes) == 1
    vol = volumes[0]
    assert vol.voxels.shape == (128, 128, 128) and vol.voxels.dtype == np.float32
    assert vol.spacing == (1.0, 1.0, 1.0) and vol.origin == (-63.0, 0.0, 0.0)
    assert_allclose(vol.direction, [[0, -1, 0], [1, 0, 0], [0, 0, 1]])
    assert vol.warnings == () and vol.modality == "MR"
    by_uid = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: f.name for f in folder.glob("*.dcm")}
    assert [by_uid[uid] for uid in vol.sop_instance_uids] == [f"slice{i}.dcm" for i in range(128)]
    assert_array_equal(vol.voxels[5], pydicom.dcmread(folder / "slice5.dcm").pixel_array)


def test_shared_series_shuffled_copy_gives_identical_volume(shared_data, tmp_path):
    folder = shared_data / "dicom-series-synthetic"
    files = sorted(folder.glob("*.dcm"))
    for k, f in enumerate(shuffled(files, seed=7)):
        shutil.copy(f, tmp_path / f"{random.Random(k).getrandbits(40):x}_{k}.dcm")
    (reference,), _ = read_volumes(folder)
    (copy,), errors = read_volumes(tmp_path)
    assert errors == []
    assert_array_equal(copy.voxels, reference.voxels)
    assert copy.sop_instance_uids == reference.sop_instance_uids and copy.spacing == reference.spacing


def test_shared_enhanced_mr_without_functional_groups_falls_back(shared_data):
    """pydicom's emri_small: Enhanced MR, 10 frames, functional groups stripped: frame order, with warnings."""
    ds = pydicom.dcmread(shared_data / "dicom-samples" / "MR_head_64x64x10__pydicom-data_emri_small.dcm")
    vol = assemble_volume([ds], label="emri_small")
    assert vol.voxels.shape == (10, 64, 64) and vol.spacing == (1.2, 1.0, 1.0)
    assert vol.sop_instance_uids[1] == f"{ds.SOPInstanceUID}#2"
    assert any("InstanceNumber" in w for w in vol.warnings) and any("PixelSpacing" in w for w in vol.warnings)
    assert all(ds.SeriesInstanceUID in w and "emri_small" in w for w in vol.warnings)
    assert not is_volume_series([ds])


# --- generated classic series -------------------------------------------------------------------

def test_shuffled_series_sorted_with_spacing_rescale_and_metadata():
    datasets = series()
    vol = assemble_volume(shuffled(datasets), label="gen")
    assert_array_equal(vol.voxels, expected_hu(list(range(N))))
    assert vol.spacing == (STEP, 0.8, 0.7) and vol.origin == (-20.0, 10.0, 0.0)
    assert_allclose(vol.direction, np.eye(3))
    assert vol.sop_instance_uids == tuple(ds.SOPInstanceUID for ds in datasets)
    assert (vol.modality, vol.body_part, vol.window, vol.warnings) == ("CT", "CHEST", (40.0, 400.0), ())
    assert vol.study_uid == "1.2.3.4" and vol.series_uid == "1.2.3.4.100"
    assert is_volume_series(datasets) and not is_volume_series(datasets[:2])


def test_reversed_positions_put_lowest_position_first():
    datasets = [make_slice(i, position=(0.0, 0.0, -STEP * i)) for i in range(N)]
    vol = assemble_volume(shuffled(datasets))
    assert_array_equal(vol.voxels, expected_hu(list(range(N - 1, -1, -1))))
    assert vol.origin == (0.0, 0.0, -STEP * (N - 1)) and vol.spacing[0] == STEP


def test_oblique_series_ordered_along_normal():
    angle = np.deg2rad(30)
    orientation = (1.0, 0.0, 0.0, 0.0, float(np.cos(angle)), float(np.sin(angle)))
    vol = assemble_volume(shuffled(series(orientation=orientation)))
    assert_array_equal(vol.voxels, expected_hu(list(range(N))))
    assert vol.spacing[0] == pytest.approx(STEP, abs=1e-5) and vol.warnings == ()
    assert_allclose(vol.direction[2], [0.0, -np.sin(angle), np.cos(angle)], atol=1e-6)
    assert_allclose(vol.direction[1], orientation[3:])


def test_per_slice_rescale_applied():
    datasets = [make_slice(i, slope=1.0 + (i % 2), intercept=-1024.0 + 10 * i) for i in range(N)]
    vol = assemble_volume(shuffled(datasets))
    for i in range(N):
        assert_allclose(vol.voxels[i], stored_pixels(i) * (1.0 + (i % 2)) - 1024.0 + 10 * i)
    assert vol.voxels[0, 0, 0] == pytest.approx(1000 - 1024)  # HU of stored 1000 with slope 1, intercept -1024


def test_missing_slice_raises_or_warns_with_allow_gaps():
    datasets = [ds for i, ds in enumerate(series()) if i != 4]
    gap = r"series 1\.2\.3\.4\.100 \(gen\): gap of 5 mm between slices at 7\.5 and 12\.5 mm"
    with pytest.raises(VolumeError, match=gap):
        assemble_volume(datasets, label="gen")
    vol = assemble_volume(datasets, label="gen", allow_gaps=True)
    assert vol.voxels.shape[0] == N - 1 and vol.spacing[0] == STEP
    assert len(vol.warnings) == 1 and "1 slice(s) missing" in vol.warnings[0] and "1.2.3.4.100" in vol.warnings[0]


def test_identical_duplicate_dropped_with_warning():
    datasets = series()
    copy = make_slice(3)  # same position and pixels, another SOPInstanceUID
    vol = assemble_volume(shuffled([*datasets, copy]))
    assert_array_equal(vol.voxels, expected_hu(list(range(N))))
    assert len(vol.warnings) == 1 and "duplicate" in vol.warnings[0] and "1.2.3.4.100" in vol.warnings[0]


def test_fallback_to_instance_number_with_warning():
    datasets = series(orientation=None)
    vol = assemble_volume(shuffled(datasets))
    assert_array_equal(vol.voxels, expected_hu(list(range(N))))
    assert vol.spacing[0] == STEP  # SliceThickness
    assert any("InstanceNumber" in w for w in vol.warnings)
    for ds in datasets:
        del ds.InstanceNumber
    with pytest.raises(VolumeError, match="neither ImagePositionPatient.*nor InstanceNumber"):
        assemble_volume(datasets)


def _conflicting_duplicate() -> list[Dataset]:
    other = make_slice(3)
    other.PixelData = stored_pixels(50).tobytes()
    return [*series(), other]


def _one_changed(**kwargs) -> list[Dataset]:
    datasets = series()
    datasets[5] = make_slice(5, **kwargs)
    return datasets


def _colour() -> list[Dataset]:
    datasets = series()
    datasets[2].SamplesPerPixel, datasets[2].PhotometricInterpretation = 3, "RGB"
    return datasets


@pytest.mark.parametrize("build, message", [
    (_conflicting_duplicate, r"at the same position \(7\.5 along the normal\) with different pixels"),
    (lambda: _one_changed(orientation=(1.0, 0.0, 0.0, 0.0, 0.9998, 0.02)), r"mixed ImageOrientationPatient"),
    (lambda: _one_changed(rows=20), r"mixed Rows×Columns in one series: 16×16 \(7 slices\); 20×16 \(1 slices\)"),
    (lambda: _one_changed(pixel_spacing=(0.8, 0.8)), r"mixed PixelSpacing"),
    (_colour, r"colour images \(RGB\)"),
    (lambda: [*series(), make_slice(9, series_uid="9.9")], r"belong to 2 series"),
])
def test_bad_series_fail_clearly(build, message):
    with pytest.raises(VolumeError, match=message) as info:
        assemble_volume(shuffled(build()), label="gen")
    assert "\n" not in str(info.value) and "(gen)" in str(info.value)


def test_sheared_stack_warns():
    """Gantry tilt: positions shift in-plane from slice to slice while the cosines stay axial."""
    vol = assemble_volume([make_slice(i, position=(0.0, 0.5 * i, STEP * i)) for i in range(N)])
    assert vol.spacing[0] == STEP and any("gantry tilt" in w and "1.2.3.4.100" in w for w in vol.warnings)


def test_monochrome1_inverted_with_warning():
    datasets = series()
    for ds in datasets:
        ds.PhotometricInterpretation = "MONOCHROME1"
    vol = assemble_volume(datasets)
    reference = expected_hu(list(range(N)))
    assert_allclose(vol.voxels, reference.min() + reference.max() - reference)
    assert any("MONOCHROME1" in w for w in vol.warnings)


# --- enhanced multi-frame -----------------------------------------------------------------------

def make_enhanced_ct(frame_order: list[int], series_uid: str = "1.2.3.4.200") -> Dataset:
    """An Enhanced CT file whose stored frame k is slice frame_order[k], with per-frame positions and rescale."""
    ds = base_dataset(EnhancedCTImageStorage, series_uid)
    ds.InstanceNumber, ds.NumberOfFrames, ds.Rows, ds.Columns = 1, len(frame_order), SIZE, SIZE
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    shared = Dataset()
    shared.PlaneOrientationSequence = Sequence([Dataset()])
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = list(AXIAL)
    shared.PixelMeasuresSequence = Sequence([Dataset()])
    shared.PixelMeasuresSequence[0].PixelSpacing, shared.PixelMeasuresSequence[0].SliceThickness = [0.6, 0.5], STEP
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for k, index in enumerate(frame_order):
        item = Dataset()
        item.FrameContentSequence = Sequence([Dataset()])
        item.FrameContentSequence[0].StackID = "1"
        item.FrameContentSequence[0].InStackPositionNumber = k + 1  # deliberately not the spatial order
        item.PlanePositionSequence = Sequence([Dataset()])
        item.PlanePositionSequence[0].ImagePositionPatient = [-20.0, 10.0, 100.0 + index * STEP]
        item.PixelValueTransformationSequence = Sequence([Dataset()])
        pvt = item.PixelValueTransformationSequence[0]
        pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = 2.0, -1000.0 - index, "HU"
        item.FrameVOILUTSequence = Sequence([Dataset()])
        item.FrameVOILUTSequence[0].WindowCenter, item.FrameVOILUTSequence[0].WindowWidth = 50 + index, 350
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = np.stack([stored_pixels(i) for i in frame_order]).tobytes()
    return ds


def test_enhanced_ct_frames_reordered_by_position(tmp_path):
    order = shuffled(list(range(N)), seed=3)
    path = tmp_path / "enhanced.dcm"
    make_enhanced_ct(order).save_as(path, enforce_file_format=True)
    (vol,), errors = read_volumes(tmp_path)
    assert errors == [] and vol.warnings == ()
    expected = np.stack([stored_pixels(i) * 2.0 - 1000.0 - i for i in range(N)]).astype(np.float32)
    assert_array_equal(vol.voxels, expected)
    assert vol.spacing == (STEP, 0.6, 0.5) and vol.origin == (-20.0, 10.0, 100.0)
    sop = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
    assert vol.sop_instance_uids == tuple(f"{sop}#{order.index(i) + 1}" for i in range(N))
    assert vol.window == (50.0, 350.0)


def test_enhanced_ct_with_missing_frame_fails_clearly():
    with pytest.raises(VolumeError, match=r"series 1\.2\.3\.4\.200: gap of 5 mm"):
        assemble_volume([make_enhanced_ct([0, 1, 2, 4, 5, 6])])


# --- reading a folder ---------------------------------------------------------------------------

def test_read_volumes_folder_with_two_series_a_short_one_and_a_broken_file(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for i, ds in enumerate(series(series_uid="1.2.3.4.1")):
        ds.save_as(tmp_path / "a" / f"{i}.dcm", enforce_file_format=True)
    for i, ds in enumerate(series(5, series_uid="1.2.3.4.2", modality="MR", pixel_spacing=(1.0, 1.0))):
        ds.save_as(tmp_path / "b" / f"im{i}", enforce_file_format=True)
    for i, ds in enumerate(series(2, series_uid="1.2.3.4.3")):
        ds.save_as(tmp_path / f"short{i}.dcm", enforce_file_format=True)
    (tmp_path / "broken.dcm").write_bytes(b"not a dicom file at all" * 20)
    (tmp_path / "notes.txt").write_text("skipped")
    volumes, errors = read_volumes(tmp_path)
    assert sorted((v.series_uid, v.voxels.shape[0], v.modality) for v in volumes) == [
        ("1.2.3.4.1", N, "CT"), ("1.2.3.4.2", 5, "MR")]
    assert len(errors) == 1 and isinstance(errors[0], DicomReadError) and "broken.dcm" in str(errors[0])
    assert len(read_volumes(tmp_path, min_slices=2)[0]) == 3


def test_read_volumes_zip_reports_failing_series(tmp_path):
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i, ds in enumerate(series()):
            if i != 3:
                path = tmp_path / f"{i}.dcm"
                ds.save_as(path, enforce_file_format=True)
                zf.write(path, f"exam/{i}.dcm")
    volumes, errors = read_volumes(archive)
    assert volumes == [] and len(errors) == 1 and isinstance(errors[0], VolumeError)
    assert str(errors[0]).startswith(f"series 1.2.3.4.100 ({archive}:exam): gap of 5 mm")


def test_read_volumes_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_volumes(tmp_path / "absent")


def test_spacing_problems_from_positions_alone():
    from medcm.dicom.volume import slice_positions, spacing_problems

    positions = slice_positions(shuffled(series()))
    assert sorted(positions) == [i * STEP for i in range(N)] and spacing_problems(positions, "s") == []
    assert spacing_problems([0, 2.5, 5, 12.5, 15], "s") == [
        "s: gap of 7.5 mm after the slice at 5 mm, 3.0× the median spacing 2.5 mm: about 2 slice(s) missing"]
    assert spacing_problems([0, 2.5, 2.5, 5], "s") == ["s: 1 slice(s) repeat another slice's position; "
                                                      "expected one slice per position"]
    tilted = series()
    tilted[3].ImageOrientationPatient = [1, 0, 0, 0, 0.9, 0.43589]
    assert slice_positions(tilted) is None  # mixed orientations: no single normal to sort along
