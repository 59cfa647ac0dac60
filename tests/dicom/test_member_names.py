"""The one rule for "archive.zip:member" names (`split_member_name`) and `read_dataset`, the one DICOM parser."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medcm.dicom import read
from medcm.dicom.read import DicomReadError, member_name, read_dataset, read_instance, read_source, split_member_name
from medcm.dicom.walk import iter_dicom
from medcm.dicom.write import write_image


def _dicom_bytes(tmp_path: Path, value: float = 0.5) -> bytes:
    return write_image(tmp_path / f"src-{value}.dcm", np.full((4, 4), value)).read_bytes()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """s.zip (members a/b.dcm and "in.zip:m.dcm"), a folder named "d.zip:y" holding s.zip, a file named odd.zip:1."""
    data = _dicom_bytes(tmp_path)
    with zipfile.ZipFile(tmp_path / "s.zip", "w") as zf:
        zf.writestr("a/b.dcm", data)
        zf.writestr("in.zip:m.dcm", data)
    (tmp_path / "d.zip:y").mkdir()
    with zipfile.ZipFile(tmp_path / "d.zip:y" / "s.zip", "w") as zf:
        zf.writestr("m.dcm", data)
    (tmp_path / "odd.zip:1").write_bytes(data)
    return tmp_path


@pytest.mark.parametrize(("name", "expected"), [
    ("plain.dcm", None),
    ("s.zip", None),
    ("s.zip:", None),  # no member
    ("s.zip:a/b.dcm", ("s.zip", "a/b.dcm")),
    ("S.ZIP:a/b.dcm", ("S.ZIP", "a/b.dcm")),  # the suffix in any case, as the folder walk takes it
    ("s.zip:in.zip:m.dcm", ("s.zip", "in.zip:m.dcm")),  # a member path holding ".zip:" (a greedy rule fails)
    ("d.zip:y/s.zip:m.dcm", ("d.zip:y/s.zip", "m.dcm")),  # a folder name holding ".zip:" (a lazy rule fails)
    ("gone.zip:in.zip:m.dcm", ("gone.zip", "in.zip:m.dcm")),  # no archive exists: the shortest
    ("odd.zip:1", None),  # an existing file is a file, whatever its name holds
])
def test_split_member_name_table(tree: Path, name: str, expected: tuple[str, str] | None) -> None:
    got = split_member_name(str(tree / name))
    assert got == (None if expected is None else (str(tree / expected[0]), expected[1]))
    if expected is not None:
        assert member_name(*got) == str(tree / name)


def test_every_name_the_walk_gives_reads_again(tree: Path) -> None:
    images = [item for item in iter_dicom(tree) if not isinstance(item, DicomReadError)]
    names = sorted(image.meta.path for image in images)
    assert names == sorted(str(tree / n) for n in ("d.zip:y/s.zip:m.dcm", "odd.zip:1", "s.zip:a/b.dcm",
                                                     "s.zip:in.zip:m.dcm", "src-0.5.dcm"))
    for image in images:
        again = read_instance(image.meta.path)
        assert again.meta == image.meta and np.array_equal(again.pixels, image.pixels)
        assert read_dataset(image.meta.path, headers_only=True).SOPInstanceUID == image.meta.sop_instance_uid


def test_read_dataset_modes_and_errors(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tree / "src-0.5.dcm"
    header = read_dataset(path, headers_only=True)
    assert "PixelData" not in header and header.Rows == 4
    full = read_dataset(str(path))
    assert "PixelData" in full and full.file_meta.TransferSyntaxUID
    with pytest.raises(DicomReadError, match=r"nowhere\.dcm: no such file; expected a DICOM file or an "):
        read_dataset(tree / "nowhere.dcm")
    with pytest.raises(DicomReadError, match=r"s\.zip:a/gone\.dcm: cannot read zip member") as info:
        read_dataset(f"{tree / 's.zip'}:a/gone.dcm", headers_only=True)
    assert isinstance(info.value.__cause__, KeyError)
    # Preamble-less bytes without an image: refused by the default read, parsed when forced.
    ds = pydicom.Dataset()
    ds.PatientID, ds.StudyInstanceUID = "P", "1.2.3"
    ds.set_original_encoding(True, True)
    bare = tree / "bare.dcm"
    ds.save_as(bare, enforce_file_format=False)
    with pytest.raises(DicomReadError, match=r"bare\.dcm: not a DICOM file \(no DICM header"):
        read_dataset(bare)
    assert read_dataset(bare.read_bytes(), "x", force=True).PatientID == "P"
    assert read_dataset(bare, headers_only=True).StudyInstanceUID == "1.2.3"
    monkeypatch.setattr(read, "MAX_ZIP_MEMBER", 16)
    with pytest.raises(DicomReadError, match=r"s\.zip:a/b\.dcm: zip member is \d+ bytes, over the 16 limit"):
        read_source(f"{tree / 's.zip'}:a/b.dcm")
