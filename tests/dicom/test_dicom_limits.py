"""The DICOM reader's own defences: absurd declared sizes, unsafe zip members, files disguised as DICOM."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEGLSLossless, RLELossless

from medcm.dicom import read as dicom
from medcm.dicom.read import MAX_IMAGE_PIXELS, MAX_INFLATED_BYTES, DicomImage, DicomReadError, read_instance
from medcm.dicom.walk import iter_dicom
from medcm.dicom.write import write_image


def _dicom(path: Path, **attributes: object) -> Path:
    write_image(path, np.zeros((8, 8)))
    ds = pydicom.dcmread(path)
    compress = attributes.pop("compress", None)
    if compress:
        ds.compress(compress)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.save_as(path)
    return path


def _no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(ds: pydicom.Dataset, label: str, source: bytes | None = None) -> np.ndarray:
        raise AssertionError(f"{label}: decoder called for a refused image")
    monkeypatch.setattr(dicom, "_decode", refuse)


# --- absurd declared image sizes -------------------------------------------------------------------


@pytest.mark.parametrize("compress", [None, RLELossless, JPEGLSLossless])
def test_absurd_rows_and_columns_refused_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          compress: str | None) -> None:
    path = _dicom(tmp_path / "huge.dcm", compress=compress, Rows=60000, Columns=60000)
    assert path.stat().st_size < 2048  # a tiny file declaring 3.6e9 pixels
    _no_decoding(monkeypatch)
    with pytest.raises(DicomReadError) as info:
        read_instance(path)
    assert str(info.value) == (f"{path}: declared image size 60000×60000×1 (3.6e+09 pixels) is over the "
                               "134217728-pixel limit; refused before decoding")


def test_absurd_frame_count_and_samples_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_decoding(monkeypatch)
    frames = _dicom(tmp_path / "frames.dcm", NumberOfFrames=2**23)  # 8 * 8 * 2**23 = 2**29 pixels
    with pytest.raises(DicomReadError, match=r"8×8×8388608 \(5.4e\+08 pixels\) is over the 134217728-pixel"):
        read_instance(frames)
    colour = _dicom(tmp_path / "colour.dcm", Rows=16384, Columns=16384, SamplesPerPixel=3)
    with pytest.raises(DicomReadError, match=r"16384×16384×1×3 samples \(8.1e\+08 pixels\)"):
        read_instance(colour)


@pytest.mark.parametrize(("rows", "columns"), [(0, 8), (8, 0)])
def test_zero_rows_or_columns_refused(tmp_path: Path, rows: int, columns: int) -> None:
    path = _dicom(tmp_path / "empty.dcm", Rows=rows, Columns=columns)
    with pytest.raises(DicomReadError) as info:
        read_instance(path)
    assert str(info.value) == (f"{path}: declared image size {rows}×{columns}×1 has no pixels; "
                               "expected Rows and Columns >= 1")


def test_image_within_the_limit_still_reads(tmp_path: Path) -> None:
    assert (MAX_IMAGE_PIXELS, MAX_INFLATED_BYTES) == (2**27, 2**28)
    image = read_instance(_dicom(tmp_path / "ok.dcm", compress=JPEGLSLossless))
    assert image.pixels.shape == (1, 8, 8)


def _padded(path: Path, frames: int, deflate: bool = False) -> Path:
    """An 8 x 8 16-bit image without NumberOfFrames whose pixel data holds `frames` frames (ramp values)."""
    write_image(path, np.zeros((8, 8)))
    ds = pydicom.dcmread(path)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = (np.arange(64 * frames) % 4096).astype("<u2").tobytes()
    if deflate:
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


def test_frames_the_pixel_data_holds_count_against_the_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No NumberOfFrames, padded pixel data: pydicom decodes every frame the data holds (issue 18: 3,641 frames,
    3.2 GB); the limit counts them before decoding."""
    within = read_instance(_padded(tmp_path / "three.dcm", 3))
    assert within.pixels.shape == (3, 8, 8)
    monkeypatch.setattr(dicom, "MAX_IMAGE_PIXELS", 64 * 100)
    _no_decoding(monkeypatch)
    path = _padded(tmp_path / "padded.dcm", 101)
    with pytest.raises(DicomReadError) as info:
        read_instance(path)
    assert str(info.value) == (f"{path}: declared image size 8×8×1, 101 frames by its pixel data length, (6.5e+03 "
                               "pixels) is over the 6400-pixel limit; refused before decoding")


def test_a_deflated_dataset_reads_and_a_deflate_bomb_is_refused_while_inflating(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = read_instance(_padded(tmp_path / "deflated.dcm", 1, deflate=True))
    assert image.pixels.shape == (1, 8, 8)
    assert np.all(np.diff(image.pixels.ravel()) > 0)  # the ramp 0..63 survives inflating and display
    bomb = _padded(tmp_path / "bomb.dcm", 2**15, deflate=True)  # 4 MiB of pixel data
    assert bomb.stat().st_size < 200_000
    monkeypatch.setattr(dicom, "MAX_INFLATED_BYTES", 2**20)
    monkeypatch.setattr(pydicom, "dcmread", lambda *a, **k: pytest.fail("pydicom inflated the bomb"))
    with pytest.raises(DicomReadError) as info:
        read_instance(bomb)
    assert str(info.value) == (f"{bomb}: the deflated dataset inflates to more than 1048576 bytes; refused before "
                               "decoding (a decompression bomb?)")
    with pytest.raises(DicomReadError, match="inflates to more than"):
        read_instance(bomb.read_bytes(), "bomb-bytes")


# --- unsafe zip members (the CLI path does not call check_upload) ----------------------------------


def test_zip_traversal_and_link_members_yield_errors(tmp_path: Path) -> None:
    good = write_image(tmp_path / "good.dcm", np.zeros((8, 8))).read_bytes()
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name in ("good.dcm", "../evil.dcm", "/etc/x.dcm", "..\\evil.dcm", "C:/x.dcm"):
            zf.writestr(name, good)
        link = zipfile.ZipInfo("link.dcm")
        link.create_system, link.external_attr = 3, 0o120777 << 16
        zf.writestr(link, "/etc/passwd")
    items = list(iter_dicom(archive))
    assert [type(i) for i in items].count(DicomImage) == 1
    errors = {e.path: e.reason for e in items if isinstance(e, DicomReadError)}
    assert set(errors) == {f"{archive}:{n}" for n in ("../evil.dcm", "/etc/x.dcm", "..\\evil.dcm", "C:/x.dcm",
                                                      "link.dcm")}
    assert "'..' component" in errors[f"{archive}:../evil.dcm"]
    assert "'..' component" in errors[f"{archive}:..\\evil.dcm"]
    assert "absolute path" in errors[f"{archive}:/etc/x.dcm"]
    assert "drive letter" in errors[f"{archive}:C:/x.dcm"]
    assert "symbolic link" in errors[f"{archive}:link.dcm"]


# --- files disguised as DICOM ----------------------------------------------------------------------


def _png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", 8, 8, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 72)) + chunk(b"IEND", b"")


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("report.txt", "no acute findings")
    return buf.getvalue()


def _elf() -> bytes:
    header = b"\x7fELF\x02\x01\x01" + b"\0" * 9 + struct.pack("<HHI", 2, 0x3E, 1)
    return header + np.random.default_rng(0).integers(0, 256, 64 * 1024, dtype=np.uint8).tobytes()


DISGUISED = {
    "png": _png(),
    "pdf": b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n",
    "zip": _zip_bytes(),
    "text": b"FINDINGS: The lungs are clear.\nIMPRESSION: Normal chest.\n" * 50,
    "elf": _elf(),
    "empty": b"",
}


@pytest.mark.parametrize("kind", sorted(DISGUISED))
def test_disguised_files_refused_as_not_dicom(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"{kind}.dcm"
    path.write_bytes(DISGUISED[kind])
    with pytest.raises(DicomReadError) as info:
        read_instance(path)
    message = str(info.value)
    assert message.startswith(f"{path}: not a DICOM file") and "\n" not in message
    (error,) = list(iter_dicom(path))
    assert isinstance(error, DicomReadError) and error.reason.startswith("not a DICOM file")
