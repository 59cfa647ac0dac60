"""What the viewer is sent: values after the modality LUT, colour kept (RGB, YBR, palette), windows, geometry, frames."""

from __future__ import annotations

import json
import struct

import numpy as np
import pydicom
import pytest

from medcm.dicom.display import WINDOW_PRESETS
from medcm.dicom.read import DicomReadError
from medcm.dicom.viewer_data import encode_frame, middle_index, read_viewer_frames, viewer_presets
from viewer_samples import colour_ultrasound, ct_series, disc  # tests/viewer_samples.py


def _decode(body: bytes) -> tuple[dict, np.ndarray]:
    """`encode_frame`'s bytes back into the header and the pixels, as the browser reads them."""
    (length,) = struct.unpack("<I", body[:4])
    header = json.loads(body[4:4 + length])
    start = -(-(4 + length) // 8) * 8
    assert body[4 + length:start] == b"\0" * (start - 4 - length)
    shape = (header["rows"], header["columns"]) + ((3,) if header["samples"] == 3 else ())
    return header, np.frombuffer(body[start:], dtype=np.dtype(header["dtype"]).newbyteorder("<")).reshape(shape)


@pytest.mark.parametrize(("count", "middle"), [(1, 0), (2, 0), (4, 1), (5, 2), (300, 149)])
def test_a_series_opens_on_its_middle_frame(count, middle):
    assert middle_index(count) == middle


def test_middle_of_nothing_is_refused():
    with pytest.raises(ValueError, match="middle of 0 frames"):
        middle_index(0)


@pytest.mark.parametrize(("modality", "colour", "expected"), [
    ("CT", False, WINDOW_PRESETS), ("ct ", False, WINDOW_PRESETS), ("MR", False, {}), ("US", False, {}),
    ("MG", False, {}), ("CR", False, {}), ("CT", True, {}),
])
def test_hounsfield_presets_are_offered_for_ct_only(modality, colour, expected):
    assert viewer_presets(modality, colour) == expected


def test_ct_keeps_hounsfield_units_as_int16_with_geometry_and_its_window(tmp_path):
    path = ct_series(tmp_path, slices=3, size=32)[1]
    ds = pydicom.dcmread(path)
    ds.RescaleIntercept, ds.PixelData = -1024, (np.frombuffer(ds.PixelData, np.int16) + 1024).astype(np.int16).tobytes()
    ds.WindowCenter, ds.WindowWidth = 50, 350
    ds.save_as(path)
    frames = read_viewer_frames(path)
    assert (frames.pixels.shape, frames.pixels.dtype, frames.colour) == ((1, 32, 32), np.int16, False)
    assert frames.pixels.min() == -1000 and frames.pixels.max() == 900  # the rescale applied: HU
    assert frames.pixels[0][disc(32, 1, 3)].min() == 900
    assert (frames.window, frames.invert, frames.modality) == ((50.0, 350.0), False, "CT")
    assert frames.spacing == (0.8, 0.8) and frames.orientation == (1, 0, 0, 0, 1, 0)


def test_ct_without_a_window_gets_the_soft_tissue_default(tmp_path):
    frames = read_viewer_frames(ct_series(tmp_path, slices=3, size=32)[0])
    assert frames.window == (40.0, 400.0)


def test_fractional_rescale_gives_float32_and_mr_without_a_window_gets_percentiles(tmp_path):
    path = ct_series(tmp_path, slices=3, size=32)[0]
    ds = pydicom.dcmread(path)
    ds.Modality, ds.RescaleSlope, ds.RescaleIntercept = "MR", 0.5, 0.5
    ds.save_as(path)
    frames = read_viewer_frames(path)
    assert frames.pixels.dtype == np.float32 and frames.pixels.max() == 450.5
    low, high = np.percentile(frames.pixels, [0.5, 99.5])
    assert frames.window == pytest.approx(((low + high) / 2, high - low))


def test_a_monochrome1_radiograph_is_marked_inverted_with_its_patient_orientation(tmp_path):
    path = ct_series(tmp_path, slices=3, size=32)[0]
    ds = pydicom.dcmread(path)
    ds.Modality, ds.PhotometricInterpretation, ds.PatientOrientation = "CR", "MONOCHROME1", ["L", "F"]
    del ds.ImageOrientationPatient
    ds.save_as(path)
    frames = read_viewer_frames(path)
    assert (frames.invert, frames.orientation, frames.patient_orientation) == (True, None, ("L", "F"))
    assert _decode(encode_frame(frames, 0))[0]["patient_orientation"] == ["L", "F"]


@pytest.mark.parametrize("photometric", ["RGB", "YBR_FULL"])
def test_colour_ultrasound_stays_colour_frame_by_frame(tmp_path, photometric):
    frames = read_viewer_frames(colour_ultrasound(tmp_path / "us.dcm", frames=4, size=48, photometric=photometric))
    assert (frames.pixels.shape, frames.pixels.dtype, frames.colour) == ((4, 48, 48, 3), np.uint8, True)
    red = frames.pixels[0][disc(48, 0, 4)]
    assert np.abs(red.astype(int) - (230, 30, 30)).max() <= 3  # YBR converted back to RGB, within rounding
    assert not np.array_equal(frames.pixels[0], frames.pixels[3])
    assert (frames.window, frames.invert, frames.frame_time_ms) == ((127.5, 256.0), False, 40.0)


def test_palette_colour_is_expanded_through_its_lookup_tables(tmp_path):
    path = ct_series(tmp_path, slices=3, size=32)[0]
    ds = pydicom.dcmread(path)
    index = np.zeros((32, 32), dtype=np.uint8)
    index[disc(32, 0, 3)] = 1
    ds.Modality, ds.PhotometricInterpretation = "US", "PALETTE COLOR"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    del ds.RescaleSlope, ds.RescaleIntercept
    for k, values in enumerate(((0, 65535), (0, 0), (0, 32768))):  # red, green, blue: index 1 is (255, 0, 128)
        ds.add_new(0x00281101 + k, "US", [2, 0, 16])
        ds.add_new(0x00281201 + k, "OW", np.array(values, dtype="<u2").tobytes())
    ds.PixelData = index.tobytes()
    ds.save_as(path)
    frames = read_viewer_frames(path)
    assert (frames.pixels.shape, frames.pixels.dtype, frames.colour) == ((1, 32, 32, 3), np.uint8, True)
    assert tuple(frames.pixels[0][disc(32, 0, 3)][0]) == (255, 0, 128) and tuple(frames.pixels[0, 0, 0]) == (0, 0, 0)


def test_encode_frame_round_trips_grey_and_colour(tmp_path):
    ct = read_viewer_frames(ct_series(tmp_path / "ct", slices=3, size=32)[2])
    header, pixels = _decode(encode_frame(ct, 0))
    assert (header["rows"], header["columns"], header["samples"], header["dtype"]) == (32, 32, 1, "int16")
    assert header["window"] == [40.0, 400.0] and header["spacing"] == [0.8, 0.8] and header["invert"] is False
    np.testing.assert_array_equal(pixels, ct.pixels[0])
    us = read_viewer_frames(colour_ultrasound(tmp_path / "us.dcm", frames=3, size=24))
    header, pixels = _decode(encode_frame(us, 2))
    assert (header["samples"], header["dtype"], header["orientation"]) == (3, "uint8", None)
    np.testing.assert_array_equal(pixels, us.pixels[2])
    with pytest.raises(IndexError, match=r"frame 3: the image has 3 frame\(s\), 0 to 2"):
        encode_frame(us, 3)


def test_an_unreadable_file_names_itself(tmp_path):
    path = tmp_path / "broken.dcm"
    path.write_bytes(b"not dicom")
    with pytest.raises(DicomReadError, match="broken.dcm"):
        read_viewer_frames(path)
