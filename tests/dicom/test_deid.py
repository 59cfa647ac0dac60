"""Tests for medcm.dicom.deid: planted identifiers must not survive, keyed mappings must be stable."""

from __future__ import annotations

import datetime as dt
import io

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

from medcm.dicom.basic_profile import RETAINED_CHARACTERISTICS, TABLE_ACTIONS
from medcm.dicom.deid_text import identifier_keys
from medcm.dicom.deid import BurnedInAnnotationError, DeidConfig, deidentify, identifiers_of, scrub_report
from medcm.dicom.read import read_instance

KEY = b"site-secret-0123456789"
CT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2"
# Set by _ct itself (the pseudonym sources), not by the table loop; kept by the Retain Patient Characteristics option.
_SKIP_PLANT = {"PatientName", "PatientID"} | RETAINED_CHARACTERISTICS
_NUMBERS = ("US", "SS", "UL", "SL", "FL", "FD", "IS", "DS")


def _plant_value(vr: str, n: int) -> object:
    """A value of `vr` that nothing else in the file holds, findable in its bytes (numbers: n + 7000)."""
    if vr == "SQ":
        item = Dataset()  # a kept sequence's (X/Z/U*) items are cleaned by the table too
        item.PersonName = f"PLANTSQ{n:03d}^X"
        return Sequence([item])
    if vr in ("DA", "DT"):
        return "19330517" + ("101500" if vr == "DT" else "")
    if vr == "PN":
        return f"PLANTPN{n:03d}^X"
    if vr == "UI":
        return f"1.2.826.0.1.3680043.99.{5000 + n}"
    if vr in ("OB", "OW", "UN"):
        return f"PLANTBYTES{n:03d}".encode()
    if vr in _NUMBERS:
        return str(n + 7000) if vr in ("IS", "DS") else n + 7000
    return f"PLANT{n:03d}" if vr != "UR" else f"http://plant{n:03d}.example"


def _table_attributes() -> list[tuple[BaseTag, str]]:
    """Every exact row of the Basic Profile table with the VR to plant it as (LO for tags pydicom does not know)."""
    out = []
    for tag in sorted(TABLE_ACTIONS):
        try:
            vr = pydicom.datadict.dictionary_VR(tag).split(" or ")[0]
        except KeyError:
            vr = "LO"
        out.append((tag, vr))
    return out


def _ct(patient_id: str = "PAT-REAL-0001", study_uid: str = "1.2.826.0.1.3680043.99.1") -> Dataset:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    ds.PatientID = patient_id
    ds.PatientName = "PLANTFAMILY^PLANTGIVEN"
    ds.StudyInstanceUID = study_uid
    for n, (tag, vr) in enumerate(_table_attributes()):
        if pydicom.datadict.keyword_for_tag(tag) in _SKIP_PLANT or vr in ("TM", "AT", "AS") or tag.group in (0, 2):
            continue  # times of day are kept (whole-day date shift); no AT/AS row identifies anyone; no command
            # set in a file, and the file meta's one row (MediaStorageSOPInstanceUID) is set below
        if vr == "UI" and tag in ds:
            continue  # the file's own study, series, instance and frame of reference UIDs stay theirs
        ds.add_new(tag, vr, _plant_value(vr, n))
    ds.StudyDate, ds.SeriesDate, ds.AcquisitionDate = "20210312", "20210313", "20210320"
    ds.AcquisitionDateTime = "20210320101500.5"
    block = ds.private_block(0x0011, "PLANT CREATOR", create=True)
    block.add_new(0x01, "LO", "PLANTPRIVATE")
    ref = Dataset()
    ref.ReferencedSOPClassUID = CT_SOP_CLASS
    ref.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.99.777"
    ref.PersonName = "PLANTNESTED^NAME"
    ds.ReferencedImageSequence = Sequence([ref])
    ds.add_new(0x60000010, "US", 128)  # an overlay plane (rows) with its data and comment: removed whole
    ds.add_new(0x60003000, "OW", b"PLANTOVERLAY" * 4)
    ds.add_new(0x60004000, "LT", "PLANTOVERLAYCOMMENT")
    ds.add_new(0x50000022, "LO", "PLANTCURVE")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def _bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def _planted_strings(ds: Dataset) -> list[str]:
    found = ["PLANTFAMILY", "PLANTGIVEN", "PLANTPRIVATE", "PLANTNESTED", "PLANTOVERLAY", "PLANTCURVE",
             "PAT-REAL-0001", "19330517", "20210312", "20210313", "20210320", str(ds.SOPInstanceUID),
             str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.FrameOfReferenceUID),
             "1.2.826.0.1.3680043.99.777"]
    rows = len(TABLE_ACTIONS)
    found += [f"PLANT{n:03d}" for n in range(rows)] + [f"PLANTBYTES{n:03d}" for n in range(rows)]
    found += [f"PLANTSQ{n:03d}" for n in range(rows)] + [f"PLANTPN{n:03d}" for n in range(rows)]
    found += [f"plant{n:03d}.example" for n in range(rows)]
    found += [f"1.2.826.0.1.3680043.99.{5000 + n}" for n in range(rows)]
    return found


def _planted_numbers(ds: Dataset) -> dict[BaseTag, str]:
    return {elem.tag: str(elem.value) for elem in ds
            if elem.VR in _NUMBERS and elem.tag in TABLE_ACTIONS and elem.keyword not in RETAINED_CHARACTERISTICS}


def test_no_planted_identifier_survives_serialisation():
    ds = _ct()
    result = deidentify(ds, DeidConfig(KEY))
    original = _bytes(ds)
    planted = [s for s in _planted_strings(ds) if s.encode() in original]
    assert all(s in planted for s in _planted_strings(ds)[:16])
    assert len(planted) >= 450, len(planted)  # one per text, UID, byte or sequence row: not vacuous
    data = _bytes(result.dataset)
    leaks = [s for s in planted if s.encode() in data]
    assert leaks == []
    out = pydicom.dcmread(io.BytesIO(data))
    numbers = _planted_numbers(ds)
    assert len(numbers) >= 15
    kept = {tag: str(out[tag].value) for tag in numbers if tag in out and str(out[tag].value) not in ("", "0")}
    assert kept == {}
    assert not any(0x5000 <= elem.tag.group <= 0x60FF for elem in out)  # curves and overlays
    assert out.PatientIdentityRemoved == "YES"
    assert out.PatientName == out.PatientID == result.pseudonym
    assert out.DeidentificationMethod == "medcm PS3.15 2026c Basic Profile; dates shifted; UIDs remapped"
    codes = [item.CodeValue for item in out.DeidentificationMethodCodeSequence]
    assert "113100" in codes and "113107" in codes and "113105" not in codes
    assert not any(elem.tag.is_private for elem in out.iterall())
    assert "InstitutionName" in result.removed and "StudyInstanceUID" in result.replaced
    assert out.PatientSex == ds.PatientSex and "StudyDescription" not in out


def test_table_actions_by_kind():
    ds = _ct()
    ds.AcquisitionTime = "101500"
    out = deidentify(ds, DeidConfig(KEY)).dataset
    assert "OrderEnteredBy" not in out and "StationAETitle" not in out and "PersonTelephoneNumbers" not in out  # X
    assert out.ConsultingPhysicianName == "" and out.ReviewerName == ""  # Z, and X/Z resolved to Z
    assert out.AccessionNumber == "" and out.InstitutionName == ""  # Z, and X/Z/D resolved to Z
    assert out.ContentSequence == [] and out.ClinicalTrialSubjectID == "ANONYMOUS"  # D: a dummy, an empty sequence
    assert out.AcquisitionDeviceProcessingDescription == "ANONYMOUS"  # X/D resolved to D
    assert str(out.AnnotationGroupUID).startswith("2.25.")  # D on a UID: remapped
    assert out.ReferencedImageSequence[0].ReferencedSOPInstanceUID.startswith("2.25.")  # X/Z/U*: kept, remapped
    assert out.ReferencedImageSequence[0].PersonName == "ANONYMOUS"  # its items cleaned by the table (D)
    assert out.AcquisitionTime == "101500" and out.AcquisitionDate != "20210320"  # Modified Dates option


def test_clean_descriptors_keeps_descriptions_scrubbed():
    ds = _ct()
    ds.StudyDescription = "CT CHEST for PLANTFAMILY MRN 12345678"
    ds.SeriesDescription = "AX LUNG 1.25mm"
    result = deidentify(ds, DeidConfig(KEY, clean_descriptors=True))
    out = result.dataset
    assert out.StudyDescription == "CT CHEST for [NAME] MRN [ID]" and out.SeriesDescription == "AX LUNG 1.25mm"
    assert "113105" in [item.CodeValue for item in out.DeidentificationMethodCodeSequence]
    assert "ImageComments" not in out  # a comment is not a descriptor: removed


def test_input_unchanged_and_pixels_identical(tmp_path):
    ds = _ct()
    before = _bytes(ds)
    result = deidentify(ds, DeidConfig(KEY))
    assert _bytes(ds) == before
    src, dst = tmp_path / "in.dcm", tmp_path / "out.dcm"
    src.write_bytes(before)
    result.dataset.save_as(dst, enforce_file_format=True)
    a, b = read_instance(src), read_instance(dst)
    np.testing.assert_array_equal(a.pixels, b.pixels)
    assert b.pixels.shape == (1, 128, 128)


def test_uids_remapped_consistently():
    config = DeidConfig(KEY)
    first = _ct()
    second = _ct()
    second.SOPInstanceUID = "1.2.826.0.1.3680043.99.888"
    second.ReferencedImageSequence[0].ReferencedSOPInstanceUID = first.SOPInstanceUID
    out1, out2 = deidentify(first, config).dataset, deidentify(second, config).dataset
    assert out1.StudyInstanceUID == out2.StudyInstanceUID != first.StudyInstanceUID
    assert out2.ReferencedImageSequence[0].ReferencedSOPInstanceUID == out1.SOPInstanceUID
    assert out1.file_meta.MediaStorageSOPInstanceUID == out1.SOPInstanceUID
    assert out1.SOPInstanceUID != out2.SOPInstanceUID
    for uid in (out1.SOPInstanceUID, out1.SeriesInstanceUID, out1.FrameOfReferenceUID):
        assert uid.startswith("2.25.") and len(uid) <= 64 and uid.is_valid
    assert out1.SOPClassUID == first.SOPClassUID == CT_SOP_CLASS
    assert out1.ReferencedImageSequence[0].ReferencedSOPClassUID == CT_SOP_CLASS
    assert out1.file_meta.TransferSyntaxUID == first.file_meta.TransferSyntaxUID
    other = deidentify(first, DeidConfig(b"another-secret-key-456")).dataset
    assert other.StudyInstanceUID != out1.StudyInstanceUID


def test_dates_shifted_per_patient_with_intervals_kept():
    config = DeidConfig(KEY, max_date_shift_days=30)
    a = deidentify(_ct(), config)
    b = deidentify(_ct(study_uid="1.2.826.0.1.3680043.99.2"), config)
    assert a.date_shift_days == b.date_shift_days
    assert -30 <= a.date_shift_days <= -1
    d = dt.date(2021, 3, 12) + dt.timedelta(days=a.date_shift_days)
    out = a.dataset
    assert out.StudyDate == d.strftime("%Y%m%d")
    day = dt.timedelta(days=1)
    assert out.SeriesDate == (d + day).strftime("%Y%m%d")
    assert out.AcquisitionDate == (d + 8 * day).strftime("%Y%m%d")
    assert out.AcquisitionDateTime == (d + 8 * day).strftime("%Y%m%d") + "101500.5"
    assert out.PatientBirthDate == ""
    assert out.StudyTime == _ct().StudyTime  # whole-day shifts leave times alone


def test_pseudonym_stable_per_patient_and_distinct_across_patients():
    config = DeidConfig(KEY)
    p1 = deidentify(_ct("PAT-1"), config).pseudonym
    assert p1 == deidentify(_ct("PAT-1", study_uid="1.2.3.4"), config).pseudonym
    assert p1 != deidentify(_ct("PAT-2"), config).pseudonym
    assert p1 != deidentify(_ct("PAT-1"), DeidConfig(b"another-secret-key-456")).pseudonym
    assert p1.startswith("ANON-") and len(p1) == 17 and int(p1[5:], 16) >= 0
    shifts = {deidentify(_ct(f"PAT-{i}"), config).date_shift_days for i in range(20)}
    assert len(shifts) > 1 and all(-365 <= s <= -1 for s in shifts)


def test_burned_in_annotation_refused_or_flagged():
    ds = _ct()
    ds.BurnedInAnnotation = "YES"
    with pytest.raises(BurnedInAnnotationError, match=str(ds.SOPInstanceUID)):
        deidentify(ds, DeidConfig(KEY))
    assert issubclass(BurnedInAnnotationError, ValueError)
    result = deidentify(ds, DeidConfig(KEY, refuse_burned_in=False))
    assert result.burned_in is True
    ds.BurnedInAnnotation = "NO"
    assert deidentify(ds, DeidConfig(KEY)).burned_in is False


@pytest.mark.parametrize("kwargs, match", [
    ({"key": b"short"}, "at least 16 bytes, got 5 bytes"),
    ({"key": "a-string-not-bytes!!"}, "got str"),
    ({"key": KEY, "uid_root": "2.25"}, "uid_root"),
    ({"key": KEY, "max_date_shift_days": 0}, "max_date_shift_days"),
])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DeidConfig(**kwargs)


def test_identifiers_of_collects_names_and_ids():
    ds = _ct()
    ds.ReferringPhysicianName = "Dr^PLANTDOC"
    found = identifiers_of(ds)
    for s in ("PLANTFAMILY", "PLANTGIVEN", "PAT-REAL-0001", "PLANTNESTED", "PLANTDOC"):
        assert s in found
    assert "Dr" not in found


@pytest.mark.parametrize("text, expected", [
    ("Seen on 12/03/2021 for follow-up.", "Seen on [DATE] for follow-up."),
    ("Prior 2021-03-12 and 20210312.", "Prior [DATE] and [DATE]."),
    ("Compared with March 12, 2021 and 12 Mar 2021.", "Compared with [DATE] and [DATE]."),
    ("MRN: A12345, accession # 778899.", "MRN: [ID], accession # [ID]."),
    ("Ref 12345678 noted.", "Ref [ID] noted."),
    ("Call (555) 123-4567 or 555-123-4567.", "Call [PHONE] or [PHONE]."),
    ("Mail jdoe@hospital.org today.", "Mail [EMAIL] today."),
    ("Mr DOE, John was scanned.", "Mr [NAME], [NAME] was scanned."),
    ("Johnson sign is absent.", "Johnson sign is absent."),
    ("A 3.2 cm mass at T2; C5-C6 disc bulge; L4 stable; 1.5 x 2.3 cm.",
     "A 3.2 cm mass at T2; C5-C6 disc bulge; L4 stable; 1.5 x 2.3 cm."),
    ("Dose 12.5 mGy, 120 kVp, slice 5 mm.", "Dose 12.5 mGy, 120 kVp, slice 5 mm."),
])
def test_scrub_report(text, expected):
    assert scrub_report(text, known=["Doe", "JOHN"]) == expected


def test_scrub_report_with_dataset_identifiers():
    ds = _ct()
    text = "plantfamily plantgiven (PAT-REAL-0001) has a 4 mm nodule."
    assert scrub_report(text, identifiers_of(ds)) == "[NAME] [NAME] ([ID]) has a 4 mm nodule."


def test_keyed_identifiers_scrub_without_the_names_in_clear():
    keys = identifier_keys(["SMITH", "JOHN", "PAT-REAL-0001", "General Hospital", "x"], KEY)
    assert len(keys) == 4 and all(len(k) == 16 for k in keys)
    assert not any("SMITH" in k for k in keys) and identifier_keys(["smith"], KEY)[0] in keys
    text = "John Smith (PAT-REAL-0001) at General Hospital; Smithson and general anatomy fine."
    assert scrub_report(text, keyed=(keys, KEY)) == "[NAME] [NAME] ([ID]) at [NAME]; Smithson and general anatomy fine."
    assert scrub_report(text, keyed=(keys, b"another-secret-key-456")) == text  # another key: no match


def test_titled_names_are_scrubbed_but_not_modalities():
    text = "Discussed with Dr. Jane Doe and Mrs Lee. MR Brain and MS plaques; Dr MRI unchanged."
    assert scrub_report(text) == "Discussed with Dr. [NAME] and Mrs [NAME]. MR Brain and MS plaques; Dr MRI unchanged."
