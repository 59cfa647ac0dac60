"""Synthetic DICOM for the viewer's tests: a small CT series whose slices differ, and colour ultrasound.

Every slice or frame shows something different (a disc that moves and grows), so a test can tell by
pixels alone which one is displayed.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
US_MULTIFRAME_STORAGE = "1.2.840.10008.5.1.4.1.1.3.1"


def _dataset(sop_class: str, modality: str, study_uid: str, series_uid: str) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, generate_uid()
    ds.Modality, ds.PatientID, ds.PatientName, ds.BurnedInAnnotation = modality, "VIEWER-TEST", "Test^Viewer", "NO"
    ds.StudyDate, ds.SeriesNumber = "20260101", 1
    return ds


def disc(size: int, k: int, count: int) -> np.ndarray:
    """A bool [size, size] mask: a disc that moves right and grows with `k` of `count`."""
    yy, xx = np.mgrid[:size, :size]
    cx, cy, r = size * (0.25 + 0.5 * k / max(count - 1, 1)), size * 0.5, size * (0.08 + 0.12 * k / max(count - 1, 1))
    return (xx - cx) ** 2 + (yy - cy) ** 2 < r * r


def ct_series(folder: Path, slices: int = 7, size: int = 96, spacing: float = 5.0, patient_id: str = "VIEWER-TEST",
              study_date: str = "20260101", modality: str = "CT") -> list[Path]:
    """An axial CT series of `slices` files `spacing` mm apart (HU: air background, a 60 HU body, a bright disc
    differing per slice: at the same fraction of the stack, two series show the same disc); `modality="MR"`
    stores the same pixels as an MR series."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    paths = []
    for k in range(slices):
        ds = _dataset(MR_IMAGE_STORAGE if modality == "MR" else CT_IMAGE_STORAGE, modality, study, series)
        ds.PatientID, ds.StudyDate = patient_id, study_date
        hu = np.full((size, size), -1000, dtype=np.int16)
        hu[size // 8: -size // 8, size // 8: -size // 8] = 60
        hu[disc(size, k, slices)] = 900
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.ImageOrientationPatient, ds.ImagePositionPatient = [1, 0, 0, 0, 1, 0], [0, 0, spacing * k]
        ds.PixelSpacing, ds.SliceThickness, ds.InstanceNumber, ds.BodyPartExamined = [0.8, 0.8], spacing, k + 1, "CHEST"
        ds.PixelData = hu.tobytes()
        paths.append(folder / f"slice{k:03d}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


def ct_series_zip(path: Path, slices: int = 7, size: int = 96, **series) -> Path:
    """`ct_series` (with `series`' options) zipped as one study (slices written in reverse order: the viewer
    must sort them)."""
    files = ct_series(path.with_suffix(""), slices, size, **series)
    with zipfile.ZipFile(path, "w") as archive:
        for file in reversed(files):
            archive.write(file, file.name)
    return path


def colour_ultrasound(path: Path, frames: int = 4, size: int = 96, photometric: str = "RGB") -> Path:
    """A multi-frame RGB ultrasound cine: grey speckle with a red and a blue Doppler blob, moving per frame."""
    ds = _dataset(US_MULTIFRAME_STORAGE, "US", generate_uid(), generate_uid())
    rng = np.random.default_rng(0)
    rgb = np.zeros((frames, size, size, 3), dtype=np.uint8)
    for k in range(frames):
        grey = rng.integers(20, 90, (size, size), dtype=np.uint8)
        rgb[k] = grey[..., None]
        rgb[k][disc(size, k, frames)] = (230, 30, 30)
        rgb[k][disc(size, frames - 1 - k, frames)[::-1]] = (30, 60, 230)
    ds.Rows = ds.Columns = size
    ds.NumberOfFrames, ds.FrameTime, ds.FrameIncrementPointer = frames, 40.0, pydicom.tag.Tag("FrameTime")
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if photometric == "YBR_FULL":
        from pydicom.pixels import convert_color_space

        rgb = convert_color_space(rgb, "RGB", "YBR_FULL")
        ds.PhotometricInterpretation = "YBR_FULL"
    ds.PixelData = rgb.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
