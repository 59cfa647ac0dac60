"""Write greyscale pixels as a small, valid DICOM file: a 16-bit Secondary Capture image.

For synthetic data, demos and tests: what `write_image` writes, `medcm.dicom.read.read_instance`
reads back to within 1e-5.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import RE_VALID_UID, ExplicitVRLittleEndian, generate_uid

__all__ = ["write_image"]

_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"  # single-frame SC: a valid IOD with few requirements
_MULTIFRAME_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"


def write_image(path: str | os.PathLike, pixels: np.ndarray, *, patient_id: str = "ANON", modality: str = "OT",
                study_description: str = "", body_part: str = "", monochrome1: bool = False,
                study_uid: str | None = None, series_uid: str | None = None,
                sop_instance_uid: str | None = None) -> Path:
    """Write greyscale [H, W] or [F, H, W] pixels in [0, 1] as a 16-bit Secondary Capture DICOM file.

    The object validates with dicom3tools' dciodvfy. It carries a window spanning the full 16-bit
    range, so ``read_instance`` returns the input to within 1e-5, whichever photometric is chosen.

    Args:
        path: Destination file; parent folders are created.
        pixels: Display values in [0, 1].
        patient_id: PatientID.
        modality: Modality recorded in the series (the SOP class stays Secondary Capture).
        study_description: StudyDescription.
        body_part: BodyPartExamined.
        monochrome1: Store inverted, as MONOCHROME1 (single-frame only; exercises the reader's inversion).
        study_uid: StudyInstanceUID; default a new random UID.
        series_uid: SeriesInstanceUID; default a new random UID.
        sop_instance_uid: SOPInstanceUID; default a new random UID. Fixed UIDs (with fixed pixels
            and attributes) make the file byte-for-byte reproducible, as re-imports need.

    Returns:
        The path written.

    Raises:
        ValueError: If ``pixels`` is not 2-D/3-D, has values outside [0, 1] (NaN included), is
            multi-frame with ``monochrome1``, or a given UID is not a valid DICOM UID.
    """
    arr = np.asarray(pixels, dtype=np.float64)
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise ValueError(f"{path}: got pixels of shape {arr.shape}, expected [H, W] or [F, H, W]")
    if not (np.all(arr >= 0) and np.all(arr <= 1)):  # also rejects NaN
        raise ValueError(f"{path}: got pixel values in [{np.nanmin(arr)}, {np.nanmax(arr)}], expected [0, 1]")
    if arr.ndim == 3 and monochrome1:
        raise ValueError(f"{path}: multi-frame Secondary Capture allows MONOCHROME2 only; pass monochrome1=False")
    uids = {"study_uid": study_uid, "series_uid": series_uid, "sop_instance_uid": sop_instance_uid}
    for name, uid in uids.items():
        if uid is not None and (len(uid) > 64 or not RE_VALID_UID.match(uid)):
            raise ValueError(f"{path}: {name} {uid!r} is not a DICOM UID; expected digits and dots, 64 chars at most")
    ds = _secondary_capture_dataset(arr.ndim == 3, patient_id, modality, study_description, body_part,
                                    (study_uid, series_uid, sop_instance_uid))
    if arr.ndim == 3:
        ds.NumberOfFrames = arr.shape[0]
    ds.Rows, ds.Columns = arr.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.WindowCenter, ds.WindowWidth = 32768, 65536  # LINEAR: stored 0 -> 0.0, 65535 -> 1.0
    ds.PixelData = np.rint((1.0 - arr if monochrome1 else arr) * 65535).astype(np.uint16).tobytes()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out, enforce_file_format=True)
    return out


def _secondary_capture_dataset(multiframe: bool, patient_id: str, modality: str, study_description: str,
                               body_part: str, uids: tuple[str | None, str | None, str | None] = (None, None, None),
                               ) -> pydicom.Dataset:
    """Patient, study, series and SC equipment modules, with empty Type 2 attributes where unknown.

    `uids` are (study, series, SOP instance) UIDs; each None is replaced by a new random UID.
    """
    study_uid, series_uid, sop_uid = (uid or generate_uid() for uid in uids)
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = _MULTIFRAME_WORD_SC if multiframe else _SECONDARY_CAPTURE
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = sop_uid, study_uid, series_uid
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "", patient_id, "", ""
    ds.StudyDate, ds.StudyTime, ds.ReferringPhysicianName, ds.StudyID, ds.AccessionNumber = "", "", "", "", ""
    ds.StudyDescription, ds.Modality, ds.SeriesNumber, ds.InstanceNumber = study_description, modality, 1, 1
    ds.ConversionType, ds.PatientOrientation, ds.BurnedInAnnotation, ds.Laterality = "WSD", "", "NO", ""
    if body_part:
        ds.BodyPartExamined = body_part
    if multiframe:  # Multi-frame SC: frames are indexed by frame number alone
        ds.FrameIncrementPointer = pydicom.tag.Tag("FrameTime")
        ds.FrameTime = 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType, ds.PresentationLUTShape = 0, 1, "US", "IDENTITY"
    return ds
