"""Tests for medcm.dicom.decode: a corrupt stream that aborts GDCM costs one error line, not the process."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless

import medcm.dicom.decode as decode
from medcm.dicom.read import DicomReadError, read_instance
from medcm.dicom.write import write_image


def _j2k(path: Path, corrupt: bool = False) -> Path:
    write_image(path, np.random.default_rng(0).random((64, 64)))
    ds = pydicom.dcmread(path)
    ds.compress(JPEG2000Lossless)
    if corrupt:  # keep the codestream's first bytes, overwrite the rest: GDCM aborts on it
        data = bytearray(ds.PixelData)
        data[40:-10] = b"\x55" * (len(data) - 50)
        ds.PixelData = bytes(data)
    ds.save_as(path)
    return path


def test_a_corrupt_jpeg_2000_is_one_error_and_the_process_lives(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                                                ) -> None:
    """Before, pydicom fell back to GDCM in this process, which called std::terminate (the server died)."""
    path = _j2k(tmp_path / "corrupt.dcm", corrupt=True)
    with caplog.at_level(logging.DEBUG, logger="pydicom"), pytest.raises(DicomReadError) as info:
        read_instance(path)
    message = str(info.value)
    assert message.startswith(f"{path}: cannot decode pixel data in transfer syntax 1.2.840.10008.1.2.4.90")
    assert "pylibjpeg: " in message and "gdcm: failed in its own process" in message and "\n" not in message
    assert not [r for r in caplog.records if r.name.startswith("pydicom") and r.levelno >= logging.WARNING]


def test_gdcm_decodes_in_a_child_process_when_the_in_process_plugins_cannot(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path = _j2k(tmp_path / "ok.dcm")
    expected = read_instance(path).pixels
    monkeypatch.setattr(decode, "_plugins", lambda ts: [])  # as if only GDCM could read it
    assert np.array_equal(read_instance(path).pixels, expected)
    ds = pydicom.dcmread(path)
    with pytest.raises(decode.DecodeError, match="no decoder plugin"):
        decode.decode_pixels(ds)  # without the file's bytes there is no child process to ask
