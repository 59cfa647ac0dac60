"""Finding volumes in files: stacks within one series, a case's files grouped by series, zip member names,
and the scrolling order of a stored series."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
from numpy.testing import assert_array_equal
from test_volume import AXIAL, N, expected_hu, make_slice, series, shuffled

from medcm.dicom.read import DicomReadError
from medcm.dicom.series import (
    StoredFile,
    group_series,
    is_stored_volume,
    read_volume,
    read_volumes,
    slice_order,
    split_stacks,
)
from medcm.dicom.volume import VolumeError
from medcm.dicom.write import write_image

SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)


def two_echoes() -> list:
    """8 positions × echoes 1 and 2 in ONE series; echo 2's stored values are 500 higher."""
    slices = []
    for echo in (1, 2):
        for ds in series(modality="MR"):
            ds.EchoNumbers = echo
            ds.PixelData = (np.frombuffer(ds.PixelData, np.uint16) + 500 * (echo - 1)).astype(np.uint16).tobytes()
            slices.append(ds)
    return shuffled(slices, seed=1)


def with_localizer() -> list:
    """A three-plane localizer (three 12×12 slices, three orientations) in the series of 8 axial slices."""
    scouts = [make_slice(0, orientation=o, rows=12, columns=12) for o in (SAGITTAL, CORONAL, AXIAL)]
    return shuffled(series() + scouts, seed=2)


def save(datasets, folder) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, ds in enumerate(datasets):
        path = folder / f"im{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        names.append(str(path))
    return names


def test_split_stacks_separates_echoes_and_localizers():
    echoes = split_stacks(two_echoes())
    assert [len(s) for s in echoes] == [N, N]
    assert {tuple({int(ds.EchoNumbers) for ds in s}) for s in echoes} == {(1,), (2,)}
    assert [len(s) for s in split_stacks(with_localizer())] == [N, 1, 1, 1]
    plain = series()
    assert split_stacks(plain) == [plain]


def test_a_two_echo_series_gives_two_volumes_instead_of_an_error(tmp_path):
    save(two_echoes(), tmp_path / "mr")
    volumes, errors = read_volumes(tmp_path / "mr")
    assert errors == [] and len(volumes) == 2
    by_level = sorted(volumes, key=lambda v: float(v.voxels.mean()))
    assert_array_equal(by_level[0].voxels, expected_hu(list(range(N))))
    assert_array_equal(by_level[1].voxels, expected_hu(list(range(N))) + 500)
    assert all(v.spacing[0] == pytest.approx(2.5) for v in volumes)
    note = volumes[0].warnings[-1]
    assert note.startswith("series 1.2.3.4.100: holds 2 stacks") and "2 volume(s) of 8, 8 slices" in note


def test_a_localizer_in_the_series_is_left_out_with_a_note(tmp_path):
    save(with_localizer(), tmp_path / "ct")
    (volume,), errors = read_volumes(tmp_path / "ct")
    assert errors == [] and volume.voxels.shape == (N, 16, 16)
    assert_array_equal(volume.voxels, expected_hu(list(range(N))))
    assert volume.warnings[-1].endswith("3 slice(s) in stacks too small for a volume left out")


def test_group_series_finds_the_volume_among_a_cases_files(tmp_path):
    names = save(with_localizer(), tmp_path / "ct")
    other = write_image(tmp_path / "xray.dcm", np.full((20, 20), 0.5), modality="CR")
    png = tmp_path / "photo.png"
    png.write_bytes(b"not decoded here")
    broken = tmp_path / "broken.dcm"
    broken.write_text("not DICOM")
    files = [str(png), *names[:5], str(other), *names[5:], str(broken)]
    groups = group_series(files)
    volume = [g for g in groups if g.is_volume]
    assert len(volume) == 1 and len(volume[0].files) == N and volume[0].series_uid == "1.2.3.4.100"
    assert sorted(volume[0].files) == sorted(n for n in names if read_volume([n], "one").voxels.shape[1] == 16)
    singles = [g for g in groups if not g.is_volume]
    assert len(singles) == 6  # the PNG, three localizer slices, the radiograph, the unreadable file
    assert groups[0].files == (str(png),) and groups[0].series_uid == ""
    assert [g.files[0] for g in groups] == sorted((g.files[0] for g in groups), key=files.index)


def test_read_volume_from_zip_member_names_equals_from_files(tmp_path):
    names = save(series(), tmp_path / "ct")
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name in names:
            zf.write(name, arcname=f"ct/{name.rsplit('/', 1)[1]}")
    members = [f"{archive}:ct/im{i:03d}.dcm" for i in shuffled(range(N), seed=3)]
    assert [g.is_volume for g in group_series(members)] == [True]
    assert_array_equal(read_volume(members).voxels, read_volume(names).voxels)
    with pytest.raises(DicomReadError, match=r"study\.zip:ct/missing\.dcm: cannot read zip member"):
        read_volume([f"{archive}:ct/missing.dcm"])
    with pytest.raises(DicomReadError, match="no such file"):
        read_volume([str(tmp_path / "nowhere.dcm")])
    with pytest.raises(VolumeError, match="no files"):
        read_volume([])


# --- a stored series shown as one volume, and its scrolling order ---------------------------------


@pytest.mark.parametrize(("modalities", "frames", "expected"), [
    (["CT"] * 3, 1, True),
    (["MR"] * 5, 1, True),
    (["PT"] * 3, 1, True),
    (["CT"] * 2, 1, False),  # too few slices
    (["CT"] * 3, 4, False),  # multi-frame files are scrolled by frame, not as slices
    (["CR"] * 3, 1, False),  # not a volume modality
    (["CT", "CT", ""], 1, False),  # one file of unknown modality
    ([], 1, False),
])
def test_is_stored_volume_table(modalities, frames, expected):
    files = [StoredFile(f"/s/{i}.dcm", modality, frames) for i, modality in enumerate(modalities)]
    assert is_stored_volume(files) is expected


def test_slice_order_follows_positions_and_names_a_missing_slice(tmp_path):
    indexes = [5, 2, 0, 3, 1, 4]
    datasets = [make_slice(i) for i in indexes]
    for ds in datasets:
        ds.InstanceNumber = 1  # numbers that would give no order
    files = [StoredFile(name, "CT", 1, 1) for name in save(datasets, tmp_path / "ct")]
    order = slice_order(files, "series 1 (CT)")
    assert order.by_position and [indexes[k] for k in order.order] == [0, 1, 2, 3, 4, 5] and order.problems == ()
    assert order.spacing_mm == pytest.approx(2.5)
    gappy = [f for f, index in zip(files, indexes) if index != 3]  # slice 3 at 7.5 mm is gone
    order = slice_order(gappy, "series 1 (CT)")
    assert order.spacing_mm == pytest.approx(2.5)  # the median gap: one missing slice does not change it
    assert order.problems == ("series 1 (CT): gap of 5 mm after the slice at 5 mm, 2.0× the median spacing 2.5 mm: "
                              "about 1 slice(s) missing",)


def test_slice_order_falls_back_to_instance_numbers_from_zip_members(tmp_path):
    datasets = [make_slice(i, orientation=None) for i in range(4)]  # no plane geometry: no positions
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i, name in enumerate(save(datasets, tmp_path / "ct")):
            zf.write(name, arcname=f"ct/{i}.dcm")
    numbers = [3, None, 1, 2]
    files = [StoredFile(f"{archive}:ct/{i}.dcm", "CT", 1, number) for i, number in enumerate(numbers)]
    order = slice_order(files, "series 1")
    assert not order.by_position and order.order == (2, 3, 0, 1) and order.problems == ()  # None last
    assert order.spacing_mm is None
    files[0] = StoredFile(str(tmp_path / "gone.dcm"), "CT", 1, 3)  # one unreadable header: numbers again
    assert slice_order(files, "series 1").order == (2, 3, 0, 1)
