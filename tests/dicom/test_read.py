"""Tests for medcm.dicom.read, display and walk: pixel pipeline numbers, codecs, real files, bad input, grouping."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import convert_color_space, get_encoder
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from medcm.dicom.display import default_window, to_display
from medcm.dicom.read import DicomImage, DicomReadError, read_instance
from medcm.dicom.walk import ReadResult, iter_dicom, read_studies
from medcm.dicom.write import write_image

SOP_CLASS = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "CR": "1.2.840.10008.5.1.4.1.1.1",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
}


def make_ds(arr: np.ndarray, modality: str = "MR", photometric: str = "MONOCHROME2",
            bits_stored: int | None = None, **attrs: object) -> Dataset:
    """A valid single- or multi-frame image dataset holding `arr` ([H,W], [F,H,W], [..,3])."""
    arr = np.ascontiguousarray(arr)
    colour = photometric not in ("MONOCHROME1", "MONOCHROME2")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SOP_CLASS[modality]
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.Modality = "P1", modality
    is_multi = arr.ndim == (4 if colour else 3)
    if is_multi:
        ds.NumberOfFrames = arr.shape[0]
    ds.Rows, ds.Columns = arr.shape[int(is_multi)], arr.shape[int(is_multi) + 1]
    ds.SamplesPerPixel = 3 if colour else 1
    if colour:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(arr.dtype.kind == "i")
    ds.PixelData = arr.tobytes()
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def save(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def roundtrip(tmp_path: Path, ds: Dataset, name: str = "x.dcm") -> DicomImage:
    return read_instance(save(ds, tmp_path / name))


def bundled(name: str) -> str:
    path = get_testdata_file(name, download=False)  # never touch the network
    if path is None:
        pytest.skip(f"pydicom test file {name} is not bundled with this pydicom")
    return path


# ------------------------------------------------------------------ pixel pipeline


def test_monochrome1_rescale_and_window(tmp_path: Path) -> None:
    stored = np.array([[0, 50, 100], [125, 150, 4095]], dtype=np.uint16)
    ds = make_ds(stored, "CR", "MONOCHROME1", bits_stored=12, RescaleSlope=2,
                 RescaleIntercept=-100, WindowCenter=100, WindowWidth=201)
    img = roundtrip(tmp_path, ds)
    # y = 2x - 100; v = clip((y - 99.5) / 200 + 0.5); MONOCHROME1 shows 1 - v.
    expected = [[1.0, 0.9975, 0.4975], [0.2475, 0.0, 0.0]]
    assert img.pixels.dtype == np.float32 and img.pixels.shape == (1, 2, 3)
    assert_allclose(img.pixels[0], expected, atol=1e-6)
    assert img.meta.photometric == "MONOCHROME1" and img.meta.bits_stored == 12


@pytest.mark.parametrize("bits_stored", [12, 16])
@pytest.mark.parametrize(("body_part", "expected"), [
    # soft tissue (40, 400): clip((HU - 39.5) / 399 + 0.5)
    ("ABDOMEN", [0.0, 0.340852130, 0.501253133, 0.551378446, 1.0]),
    # brain (40, 80): clip((HU - 39.5) / 79 + 0.5)
    ("HEAD", [0.0, 0.0, 0.506329114, 0.759493671, 1.0]),
])
def test_signed_ct_default_windows(tmp_path: Path, bits_stored: int, body_part: str,
                                   expected: list[float]) -> None:
    stored = np.array([[-1000, 1000, 1064, 1084, 1500]], dtype=np.int16)  # HU = x - 1024
    ds = make_ds(stored, "CT", bits_stored=bits_stored, RescaleSlope=1,
                 RescaleIntercept=-1024, BodyPartExamined=body_part)
    assert_allclose(roundtrip(tmp_path, ds).pixels[0, 0], expected, atol=1e-6)


def test_default_window_table() -> None:
    assert default_window("CT", "head") == (40.0, 80.0)
    assert default_window("CT", "BRAIN") == (40.0, 80.0)
    assert default_window("CT", "CHEST") == (40.0, 400.0)
    assert default_window("CT", "") == (40.0, 400.0)
    assert default_window("MR", "HEAD") is None
    assert default_window("CR", "CHEST") is None


@pytest.mark.parametrize(("function", "expected"), [
    # 1 / (1 + exp(-4 (x - 100) / 50))
    ("SIGMOID", [0.017986210, 0.5, 0.731058579, 0.982013790, 0.310025519]),
    # clip((x - 100) / 50 + 0.5)
    ("LINEAR_EXACT", [0.0, 0.5, 0.75, 1.0, 0.3]),
    # clip((x - 99.5) / 49 + 0.5)
    ("LINEAR", [0.0, 0.510204082, 0.765306122, 1.0, 0.306122449]),
])
def test_voi_lut_functions(tmp_path: Path, function: str, expected: list[float]) -> None:
    # Stored values are doubled so the rescale (slope 0.5) yields 112.5 exactly.
    stored = np.array([[100, 200, 225, 300, 180]], dtype=np.uint16)
    ds = make_ds(stored, WindowCenter=100, WindowWidth=50, VOILUTFunction=function,
                 RescaleSlope=0.5, RescaleIntercept=0)
    assert_allclose(roundtrip(tmp_path, ds).pixels[0, 0], expected, atol=1e-6)


def test_voi_lut_sequence_wins_over_window(tmp_path: Path) -> None:
    item = Dataset()
    item.LUTDescriptor = [4, 10, 16]
    item.add_new(0x00283006, "US", [0, 1000, 3000, 4000])  # LUT Data
    ds = make_ds(np.array([[5, 10, 11, 12, 13, 20]], dtype=np.uint16),
                 WindowCenter=0, WindowWidth=2, VOILUTSequence=[item])
    # Inputs below first-mapped (10) take entry 0, above the table the last entry.
    assert_allclose(roundtrip(tmp_path, ds).pixels[0, 0], [0, 0, 0.25, 0.75, 1, 1], atol=1e-6)


def test_multiframe_percentiles_over_all_frames(tmp_path: Path) -> None:
    frames = np.stack([np.full((4, 5), v, np.uint16) for v in (100, 200, 300)])
    img = roundtrip(tmp_path, make_ds(frames))
    assert img.pixels.shape == (3, 4, 5) and img.meta.frames == 3
    assert_allclose(img.pixels[:, 0, 0], [0.0, 0.5, 1.0], atol=1e-6)
    assert all(np.ptp(f) == 0 for f in img.pixels)


def test_constant_image_is_zero_without_warnings(tmp_path: Path) -> None:
    with np.errstate(all="raise"):
        img = roundtrip(tmp_path, make_ds(np.full((3, 3), 7, np.uint16)))
    assert_array_equal(img.pixels, 0)


def test_to_display_accepts_2d_and_rejects_bad_shapes() -> None:
    ds = make_ds(np.zeros((2, 2), np.uint16), "CT", RescaleSlope=1, RescaleIntercept=0)
    out = to_display(ds, np.array([[40, 240], [-200, 0]], np.int16))
    assert out.shape == (1, 2, 2) and out.dtype == np.float32
    assert_allclose(out[0], [[0.50125313, 1.0], [0.0, 0.40100251]], atol=1e-6)
    with pytest.raises(ValueError, match="SamplesPerPixel=1"):
        to_display(ds, np.zeros((2, 2, 2, 2)))


RGB = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [10, 20, 30]]])
LUMA = [[0.299, 0.587], [0.114, (0.299 * 10 + 0.587 * 20 + 0.114 * 30) / 255]]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_rgb_luminance(tmp_path: Path, dtype: type) -> None:
    scale = 1 if dtype is np.uint8 else 257  # 255 * 257 = 65535, same fractions
    img = roundtrip(tmp_path, make_ds((RGB * scale).astype(dtype), photometric="RGB",
                                      WindowCenter=0, WindowWidth=1))  # window ignored
    assert img.pixels.shape == (1, 2, 2)
    assert_allclose(img.pixels[0], LUMA, atol=1e-6)


def test_ybr_full_is_converted_before_luminance(tmp_path: Path) -> None:
    ybr = convert_color_space(RGB.astype(np.uint8), "RGB", "YBR_FULL")
    img = roundtrip(tmp_path, make_ds(ybr, photometric="YBR_FULL"))
    assert_allclose(img.pixels[0], LUMA, atol=1.5 / 255)  # 8-bit YBR rounding


def test_bundled_colour_files() -> None:
    ybr422 = read_instance(bundled("SC_ybr_full_422_uncompressed.dcm"))  # 2 bytes/pixel stored
    rle = read_instance(bundled("SC_rgb_rle.dcm"))
    jpeg = read_instance(bundled("SC_rgb_jpeg_dcmtk.dcm"))  # JPEG Baseline, lossy
    palette = read_instance(bundled("examples_palette.dcm"))
    assert ybr422.pixels.shape == rle.pixels.shape == jpeg.pixels.shape == (1, 100, 100)
    assert np.abs(jpeg.pixels - rle.pixels).mean() < 2 / 255
    assert_allclose(ybr422.pixels, rle.pixels, atol=3 / 255)
    assert palette.pixels.shape == (1, 350, 800) and 0 <= palette.pixels.min() < palette.pixels.max() <= 1


@pytest.mark.parametrize(("orientation", "plane"), [
    ([1, 0, 0, 0, 1, 0], "axial"),
    ([1, 0, 0, 0, 0, -1], "coronal"),
    ([0, 1, 0, 0, 0, -1], "sagittal"),
    ([1, 0, 0, 0, 0.7071, 0.7071], "oblique"),  # 45 degrees between axial and coronal
    ([1, 0, 0, 1, 0, 0], ""),  # degenerate: parallel row and column
])
def test_plane_and_metadata(tmp_path: Path, orientation: list[float], plane: str) -> None:
    ds = make_ds(np.eye(2, dtype=np.uint16), "CT", ImageOrientationPatient=orientation,
                 ImagerPixelSpacing=[0.2, 0.3], InstanceNumber="7", StudyDate="20240131",
                 ViewPosition="PA", BodyPartExamined="CHEST", SeriesDescription="AX 5mm")
    meta = roundtrip(tmp_path, ds).meta
    assert meta.plane == plane
    assert (meta.pixel_spacing, meta.instance_number, meta.study_date) == ((0.2, 0.3), 7, "20240131")
    assert (meta.view, meta.body_part, meta.series_description) == ("PA", "CHEST", "AX 5mm")
    assert (meta.sop_class_uid, meta.patient_id, meta.frames) == (SOP_CLASS["CT"], "P1", 1)


@pytest.mark.parametrize("shape, monochrome1", [((9, 7), False), ((9, 7), True), ((2, 9, 7), False)])
def test_write_image_roundtrip(tmp_path: Path, shape: tuple[int, ...], monochrome1: bool) -> None:
    pixels = np.random.default_rng(2).random(shape)
    path = write_image(tmp_path / "sub" / "w.dcm", pixels, modality="DX", patient_id="S1",
                       monochrome1=monochrome1)
    img = read_instance(path)
    assert img.meta.photometric == ("MONOCHROME1" if monochrome1 else "MONOCHROME2")
    frames = shape[0] if len(shape) == 3 else 1
    assert (img.meta.modality, img.meta.patient_id, img.meta.frames) == ("DX", "S1", frames)
    assert_allclose(img.pixels, pixels.reshape(frames, 9, 7), atol=1e-5)
    with pytest.raises(ValueError, match="MONOCHROME2 only"):
        write_image(tmp_path / "bad.dcm", np.zeros((2, 4, 4)), monochrome1=True)
    with pytest.raises(ValueError, match=r"expected \[0, 1\]"):
        write_image(tmp_path / "bad.dcm", pixels + 0.5)
    with pytest.raises(ValueError, match="expected \\[H, W\\]"):
        write_image(tmp_path / "bad.dcm", np.zeros(4))


def test_write_image_with_given_uids_is_byte_reproducible(tmp_path: Path) -> None:
    pixels = np.random.default_rng(3).random((9, 7))
    uids = {"study_uid": "2.25.1", "series_uid": "2.25.2", "sop_instance_uid": "2.25.3"}
    first = write_image(tmp_path / "a.dcm", pixels, modality="CT", body_part="THORAX", **uids)
    second = write_image(tmp_path / "b.dcm", pixels, modality="CT", body_part="THORAX", **uids)
    assert first.read_bytes() == second.read_bytes()  # no timestamps, no random UIDs
    meta = read_instance(first).meta
    assert (meta.study_uid, meta.series_uid, meta.sop_instance_uid) == ("2.25.1", "2.25.2", "2.25.3")
    assert pydicom.dcmread(first).file_meta.MediaStorageSOPInstanceUID == "2.25.3"
    random_uids = read_instance(write_image(tmp_path / "c.dcm", pixels)).meta
    assert random_uids.study_uid not in ("2.25.1", random_uids.series_uid, random_uids.sop_instance_uid)
    for bad in ("abc", "1.02.3", "1." + "2" * 70):
        with pytest.raises(ValueError, match=r"study_uid '.*' is not a DICOM UID"):
            write_image(tmp_path / "bad.dcm", pixels, study_uid=bad)


# ------------------------------------------------------------------ compressed data


@pytest.mark.parametrize("uid", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
@pytest.mark.parametrize(("dtype", "bits"), [(np.uint8, 8), (np.uint16, 12), (np.int16, 16)])
def test_compress_roundtrip_is_lossless(tmp_path: Path, uid: str, dtype: type, bits: int) -> None:
    encoder = get_encoder(uid)
    if not encoder.is_available:
        pytest.skip(f"no encoder plugin for {uid.name}: missing {encoder.missing_dependencies}")
    info = np.iinfo(dtype)
    lo, hi = (max(info.min, -(2 ** (bits - 1))), min(info.max, 2 ** (bits - 1) - 1)) \
        if info.min < 0 else (0, 2**bits - 1)
    arr = np.random.default_rng(0).integers(lo, hi + 1, (2, 64, 48)).astype(dtype)
    plain = roundtrip(tmp_path, make_ds(arr, bits_stored=bits), "plain.dcm")
    ds = make_ds(arr, bits_stored=bits)
    ds.compress(uid)
    packed = roundtrip(tmp_path, ds, "packed.dcm")
    assert packed.meta.transfer_syntax == uid
    assert_array_equal(pydicom.dcmread(tmp_path / "packed.dcm").pixel_array, arr)
    assert_array_equal(packed.pixels, plain.pixels)


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm",
                                  "MR_small_jp2klossless.dcm"])
def test_bundled_lossless_files_match_uncompressed(name: str) -> None:
    reference = read_instance(bundled("MR_small.dcm"))
    img = read_instance(bundled(name))
    assert img.pixels.shape == (1, 64, 64)
    assert_array_equal(img.pixels, reference.pixels)


@pytest.mark.parametrize("name", ["JPEG2000.dcm", "JPGExtended.dcm"])
def test_bundled_lossy_files_decode(name: str) -> None:
    img = read_instance(bundled(name))
    assert img.pixels.shape == (1, 1024, 256) and img.pixels.std() > 0.05


# ------------------------------------------------------------------ real sample files


@pytest.mark.parametrize("name", ["CT_chest_jpegll__notZaki_CT_JPEG70.dcm", "CR_chest_1955x1841_j2k__pydicom-data_RG1_J2KI.dcm"])
def test_declared_decoders_agree_on_compressed_samples(shared_data: Path, name: str) -> None:
    """Both declared decoder stacks (pylibjpeg plugins and python-gdcm) are installed and agree."""
    from pydicom.pixels import pixel_array

    ds = pydicom.dcmread(shared_data / "dicom-samples" / name)
    by_pylibjpeg = pixel_array(ds, decoding_plugin="pylibjpeg")
    by_gdcm = pixel_array(ds, decoding_plugin="gdcm")
    np.testing.assert_array_equal(by_pylibjpeg, by_gdcm)


@pytest.fixture(scope="module")
def samples(shared_data: Path) -> dict[str, DicomImage]:
    """The six real files in ../shared/data/dicom-samples (skipped where that folder is absent)."""
    folder = shared_data / "dicom-samples"
    if not folder.is_dir():
        pytest.skip(f"sample DICOM folder {folder} is absent")
    items = list(iter_dicom(folder))
    errors = [i for i in items if isinstance(i, DicomReadError)]
    assert not errors, errors  # LICENSE*.txt files must be skipped, not reported
    return {Path(i.meta.path).name.split("__")[0]: i for i in items}


def test_samples_all_read_with_metadata_matching_pydicom(samples: dict[str, DicomImage]) -> None:
    assert len(samples) == 6
    for img in samples.values():
        ds = pydicom.dcmread(img.meta.path, force=True)
        assert img.meta.modality == ds.Modality
        assert (img.meta.rows, img.meta.columns) == (ds.Rows, ds.Columns)
        assert img.pixels.shape == (int(ds.get("NumberOfFrames", 1)), ds.Rows, ds.Columns)
        assert 0 <= img.pixels.min() and img.pixels.max() <= 1 and img.pixels.std() > 0.05
        spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
        if spacing and min(spacing) > 0:
            assert img.meta.pixel_spacing == (float(spacing[0]), float(spacing[1]))
        else:  # absent, or "0\0" in the J2K CR, means unknown
            assert img.meta.pixel_spacing is None
    assert samples["CT_512"].meta.pixel_spacing == (0.478516, 0.478516)
    assert samples["CT_512"].meta.plane == "axial"
    assert samples["CT_chest_jpegll"].meta.plane == "coronal"


def test_sample_cr_without_file_meta_is_inverted(samples: dict[str, DicomImage]) -> None:
    img = samples["CR_chest_440_nometa"]
    assert img.meta.modality == "CR" and img.meta.photometric == "MONOCHROME1"
    assert img.meta.transfer_syntax == ImplicitVRLittleEndian
    ds = pydicom.dcmread(img.meta.path, force=True)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    raw = ds.pixel_array.astype(np.float64)
    # Its own window (550, 1024), then MONOCHROME1 inversion.
    expected = 1 - np.clip((raw - 549.5) / 1023 + 0.5, 0, 1)
    assert_allclose(img.pixels[0], expected, atol=1e-6)
    assert np.corrcoef(raw.ravel(), img.pixels.ravel())[0, 1] < -0.9


def test_sample_shapes_and_codecs(samples: dict[str, DicomImage]) -> None:
    j2k = samples["CR_chest_1955x1841_j2k"]
    assert j2k.pixels.shape == (1, 1955, 1841)
    assert j2k.meta.transfer_syntax == "1.2.840.10008.1.2.4.91"
    mr = samples["MR_head_64x64x10"]
    assert mr.pixels.shape == (10, 64, 64) and mr.meta.frames == 10
    ct = samples["CT_chest_jpegll"]
    assert ct.meta.transfer_syntax == "1.2.840.10008.1.2.4.70"  # JPEG Lossless SV1
    raw = pydicom.dcmread(ct.meta.path).pixel_array
    assert ct.pixels.shape == (1, *raw.shape) == (1, 400, 512)


# ------------------------------------------------------------------ bad input


def _bad_files(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "text.dcm").write_text("this is not DICOM\n" * 20)
    (folder / "empty.dcm").write_bytes(b"")
    good = save(make_ds(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)), folder / "tmp.dcm")
    data = good.read_bytes()
    (folder / "truncated.dcm").write_bytes(data[: len(data) - 4096])
    good.unlink()
    nopix = make_ds(np.zeros((2, 2), np.uint16))
    del nopix.PixelData
    save(nopix, folder / "nopixels.dcm")
    unknown = make_ds(np.zeros((2, 2), np.uint16))
    unknown.file_meta.TransferSyntaxUID = "1.2.3.4.5"
    unknown.save_as(folder / "unknown_ts.dcm", implicit_vr=False, little_endian=True,
                    enforce_file_format=True)
    mpeg = make_ds(np.zeros((2, 2), np.uint16))
    mpeg.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder
    mpeg.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(60)])
    save(mpeg, folder / "mpeg2.dcm")
    return {p.stem: p for p in folder.iterdir()}


@pytest.mark.parametrize(("stem", "pattern", "chained"), [
    ("text", "not a DICOM file", True),
    ("empty", "not a DICOM file", True),
    ("truncated", "truncated pixel data: expected 8192 bytes, got 4096", False),
    ("nopixels", "no pixel data", False),
    ("unknown_ts", r"1\.2\.3\.4\.5 \(unknown to pydicom\).*not supported", True),
    ("mpeg2", r"MPEG2.*pylibjpeg and python-gdcm", True),
])
def test_bad_files_raise_dicom_read_error(tmp_path: Path, stem: str, pattern: str,
                                          chained: bool) -> None:
    path = _bad_files(tmp_path)[stem]
    with pytest.raises(DicomReadError, match=pattern) as info:
        read_instance(path)
    err = info.value
    assert err.path == str(path) and str(err) == f"{path}: {err.reason}"
    assert (err.__cause__ is not None) == chained


def test_missing_path_and_bytes_source(tmp_path: Path) -> None:
    with pytest.raises(DicomReadError, match="cannot read file") as info:
        read_instance(tmp_path / "nope.dcm")
    assert isinstance(info.value.__cause__, FileNotFoundError)
    with pytest.raises(FileNotFoundError, match="nope"):
        iter_dicom(tmp_path / "nope")  # eager: no need to start iterating
    data = save(make_ds(np.eye(3, dtype=np.uint16)), tmp_path / "a.dcm").read_bytes()
    img = read_instance(data, name="upload/a.dcm")
    assert img.meta.path == "upload/a.dcm" and img.pixels.shape == (1, 3, 3)
    with pytest.raises(DicomReadError, match=r"^<bytes>: not a DICOM file"):
        read_instance(b"garbage")
    err = pickle.loads(pickle.dumps(DicomReadError("a.dcm", "why")))
    assert (err.path, err.reason, str(err)) == ("a.dcm", "why", "a.dcm: why")


def test_folder_with_good_and_bad_files_keeps_going(tmp_path: Path) -> None:
    ds = make_ds(np.eye(4, dtype=np.uint16))
    for number in (2, 1):
        ds.SOPInstanceUID, ds.InstanceNumber = generate_uid(), number
        save(ds, tmp_path / f"good{number}.dcm")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "text.dcm").write_text("hello")
    (bad / "empty.dcm").write_bytes(b"")
    (bad / "half.dcm").write_bytes((tmp_path / "good1.dcm").read_bytes()[:-16])
    (tmp_path / "DICOMDIR").write_bytes(b"ignored")
    (tmp_path / ".hidden.dcm").write_bytes(b"ignored")
    (tmp_path / "notes.txt").write_text("ignored")
    items = list(iter_dicom(tmp_path))
    assert sorted(Path(e.path).name for e in items if isinstance(e, DicomReadError)) == [
        "empty.dcm", "half.dcm", "text.dcm"]
    result = read_studies(tmp_path)
    assert len(result.errors) == 3 and len(result.studies) == 1
    (series,) = result.studies[0].series
    assert [i.meta.instance_number for i in series.instances] == [1, 2]


# ------------------------------------------------------------------ grouping


def _study_tree(root: Path) -> dict[str, str]:
    """2 studies, 3 series, nested folders; returns {series_uid: study_uid}."""
    layout = {}
    rng = np.random.default_rng(1)
    for study_no, series_count in ((1, 2), (2, 1)):
        study_uid = generate_uid()
        for series_no in range(series_count):
            series_uid = generate_uid()
            layout[series_uid] = study_uid
            for file_no, number in enumerate((3, None, 1, 2)):
                ds = make_ds(rng.integers(0, 4096, (4, 4)).astype(np.uint16),
                             StudyInstanceUID=study_uid, SeriesInstanceUID=series_uid)
                if number is not None:
                    ds.InstanceNumber = number
                save(ds, root / f"study{study_no}" / f"s{series_no}" / "deep" / f"f{file_no}.dcm")
    return layout


def _check_grouping(result: ReadResult, layout: dict[str, str], prefix: str) -> None:
    assert [len(s.series) for s in result.studies] == [2, 1]
    for study in result.studies:
        for series in study.series:
            assert layout[series.series_uid] == study.study_uid
            assert [i.meta.instance_number for i in series.instances] == [1, 2, 3, None]
            assert all(i.meta.series_uid == series.series_uid for i in series.instances)
            assert all(i.meta.path.startswith(prefix) for i in series.instances)
            assert series.instances[-1].meta.path.endswith("/deep/f1.dcm")


def test_grouping_folder_and_zip(tmp_path: Path) -> None:
    layout = _study_tree(tmp_path / "tree")
    result = read_studies(tmp_path / "tree")
    assert result.errors == ()
    _check_grouping(result, layout, str(tmp_path / "tree"))
    archive = tmp_path / "x.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for file in sorted((tmp_path / "tree").rglob("*.dcm")):
            zf.write(file, file.relative_to(tmp_path / "tree").as_posix())
        zf.writestr("__MACOSX/study1/._f0.dcm", b"junk")
        zf.writestr("broken.dcm", b"junk")
    result = read_studies(archive)
    assert [e.path for e in result.errors] == [f"{archive}:broken.dcm"]
    _check_grouping(result, layout, f"{archive}:study")
    assert result.studies[0].series[0].instances[0].meta.path == f"{archive}:study1/s0/deep/f2.dcm"


def test_missing_uids_group_per_folder(tmp_path: Path) -> None:
    for folder in ("a", "a", "b"):
        ds = make_ds(np.eye(2, dtype=np.uint16))
        del ds.StudyInstanceUID, ds.SeriesInstanceUID
        save(ds, tmp_path / folder / f"{ds.SOPInstanceUID}.dcm")
    result = read_studies(tmp_path)
    assert [s.study_uid for s in result.studies] == [
        f"unknown-study:{tmp_path / 'a'}", f"unknown-study:{tmp_path / 'b'}"]
    assert [len(s.series[0].instances) for s in result.studies] == [2, 1]
    assert result.studies[0].series[0].series_uid == f"unknown-series:{tmp_path / 'a'}"
