"""Report export (`medcm.dicom.sr`) as DICOM SR, text and JSON, and the `medcm export` command."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import subprocess
from datetime import timezone

import numpy as np
import pydicom
import pytest
from pydicom.valuerep import DT

from db.store import CaseStore
from medcm.cli.commands import main
from medcm.dicom.read import read_instance
from medcm.dicom.write import write_image
from medcm.dicom.sr import (
    BASIC_TEXT_SR,
    EXPORT_FORMATS,
    export_filename,
    export_report,
    pick_report,
    report_sr,
)
from medcm.engine.records import instance_record

STUDY = "1.2.826.0.1.3680043.8.498.100"
SERIES = ("1.2.826.0.1.3680043.8.498.101", "1.2.826.0.1.3680043.8.498.102")
SECTIONS = [
    ("INDICATION", "Cough for two weeks."),
    ("FINDINGS", "Small right pleural effusion. No pneumothorax."),
    ("IMPRESSION", "Right pleural effusion."),
    ("NOTE", "Discussed with the ward."),
]
TEXT = "\n".join(f"{name}: {text}" for name, text in SECTIONS)
SECTION_CODES = [("121110", "Cough for two weeks."), ("121071", "Small right pleural effusion. No pneumothorax."),
                 ("121073", "Right pleural effusion."), ("121071", "NOTE: Discussed with the ward.")]


@pytest.fixture
def store(tmp_path):
    """A store with one study of three instances in two series, and no report yet."""
    records = []
    for n, (series, sop) in enumerate([(SERIES[0], "1"), (SERIES[0], "2"), (SERIES[1], "1")]):
        path = write_image(tmp_path / f"i{n}.dcm", np.full((8, 8), n / 3), patient_id="PSN-0042", modality="CR",
                           study_uid=STUDY, series_uid=series, sop_instance_uid=f"{series}.{sop}")
        records.append(instance_record(read_instance(path), None))
    with CaseStore(f"sqlite:///{tmp_path / 'cases.db'}") as case_store:
        case_store.ingest(records)
        yield case_store


@pytest.fixture
def draft(store):
    return store.save_draft(STUDY, TEXT, SECTIONS, author="medcm-draft")


@pytest.fixture
def signed(store, draft):
    return store.sign_report(STUDY, TEXT, SECTIONS, signer="Rivera^Ana")


def sr_of(store, report):
    """The exported SR read back from its bytes."""
    return pydicom.dcmread(io.BytesIO(export_report(store.get_study(STUDY), report, "sr")))


def text_items(ds):
    """(code value, text) of every TEXT item in the content tree, depth first."""
    found = []
    for item in ds.get("ContentSequence", []):
        if item.ValueType == "TEXT":
            found.append((item.ConceptNameCodeSequence[0].CodeValue, item.TextValue))
        found += text_items(item)
    return found


def test_draft_is_unverified_partial_without_observer(store, draft):
    ds = sr_of(store, draft)
    assert (ds.VerificationFlag, ds.CompletionFlag, ds.PreliminaryFlag) == ("UNVERIFIED", "PARTIAL", "PRELIMINARY")
    assert "VerifyingObserverSequence" not in ds
    assert ds.ContentDate == draft.created_at.astimezone(timezone.utc).strftime("%Y%m%d")


def test_signed_is_verified_by_the_signer_at_the_signing_time(store, signed):
    ds = sr_of(store, signed)
    assert (ds.VerificationFlag, ds.CompletionFlag, ds.PreliminaryFlag) == ("VERIFIED", "COMPLETE", "FINAL")
    (observer,) = ds.VerifyingObserverSequence
    assert str(observer.VerifyingObserverName) == "Rivera^Ana"
    assert observer.VerifyingOrganization == "medcm"
    (ident,) = observer.VerifyingObserverIdentificationCodeSequence
    assert (ident.CodeValue, ident.CodingSchemeDesignator, ident.CodeMeaning) == ("Rivera^Ana", "99MEDCM", "Rivera^Ana")
    assert ds.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99MEDCM"
    assert DT(observer.VerificationDateTime) == signed.signed_at
    assert ds.ContentTime == signed.signed_at.astimezone(timezone.utc).strftime("%H%M%S.%f")


def test_sr_header_patient_study_and_series(store, signed):
    ds = sr_of(store, signed)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID == BASIC_TEXT_SR
    assert ds.StudyInstanceUID == STUDY
    assert ds.SeriesInstanceUID not in SERIES and ds.Modality == "SR"
    assert (str(ds.PatientName), ds.PatientID) == ("PSN-0042^", "PSN-0042")  # a PN with a delimiter
    assert ds.PatientBirthDate == ds.PatientSex == ds.ReferringPhysicianName == ds.AccessionNumber == ""
    assert ds.Manufacturer == "medcm" and ds.InstanceNumber == signed.version
    assert "SpecificCharacterSet" not in ds  # plain ASCII keeps the default repertoire
    # the test files carry no study date, time or ID: the date the study was stored, midnight, a hash
    assert ds.StudyDate == store.get_study(STUDY).created_at.astimezone(timezone.utc).strftime("%Y%m%d")
    assert ds.StudyTime == "000000"
    assert len(ds.StudyID) == 16 and ds.StudyID.isdigit() and ds.StudyID == sr_of(store, signed).StudyID
    dated = dataclasses.replace(store.get_study(STUDY), study_date="20240131", description="CHEST PA")
    assert (report_sr(dated, signed).StudyDate, report_sr(dated, signed).StudyDescription) == ("20240131", "CHEST PA")


def test_sections_are_coded_text_items_in_report_order(store, signed):
    ds = sr_of(store, signed)
    title = ds.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning) == (
        "18748-4", "LN", "Diagnostic Imaging Report")
    assert ds.ValueType == "CONTAINER" and ds.ContinuityOfContent == "SEPARATE"
    assert text_items(ds) == SECTION_CODES


def test_evidence_references_every_source_instance(store, signed):
    ds = sr_of(store, signed)
    (study_item,) = ds.CurrentRequestedProcedureEvidenceSequence
    assert study_item.StudyInstanceUID == STUDY
    referenced = {(s.SeriesInstanceUID, r.ReferencedSOPClassUID, r.ReferencedSOPInstanceUID)
                  for s in study_item.ReferencedSeriesSequence for r in s.ReferencedSOPSequence}
    expected = {(i.series_uid, i.metadata["sop_class_uid"], i.sop_instance_uid) for i in store.get_study(STUDY).instances}
    assert referenced == expected and len(expected) == 3


def test_uids_are_deterministic_and_differ_between_draft_and_signed(store, draft):
    study = store.get_study(STUDY)
    first, again = export_report(study, draft, "sr"), export_report(study, draft, "sr")
    assert first == again
    signed = store.sign_report(STUDY, TEXT, SECTIONS, signer="Rivera^Ana")
    draft_ds, signed_ds = report_sr(study, draft), report_sr(study, signed)
    assert signed_ds.SeriesInstanceUID == draft_ds.SeriesInstanceUID
    assert signed_ds.SOPInstanceUID != draft_ds.SOPInstanceUID
    assert signed_ds.SOPInstanceUID == report_sr(study, store.latest_report(STUDY)).SOPInstanceUID


def test_non_ascii_text_is_written_as_utf8(store):
    report = store.sign_report(STUDY, "FINDINGS: Épanchement pleural.", [("FINDINGS", "Épanchement pleural.")],
                               signer="Müller^Jörg")
    ds = sr_of(store, report)
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert text_items(ds) == [("121071", "Épanchement pleural.")]
    assert str(ds.VerifyingObserverSequence[0].VerifyingObserverName) == "Müller^Jörg"


def test_study_date_comes_from_the_instances_and_the_study_id_is_per_study(store, signed):
    study = store.get_study(STUDY)
    dated = [dataclasses.replace(i, metadata={**i.metadata, "study_date": d})
             for i, d in zip(study.instances, ["20230102", "20230101", "bad"])]
    ds = report_sr(dataclasses.replace(study, instances=tuple(dated)), signed)
    assert (ds.StudyDate, ds.StudyTime) == ("20230101", "000000")
    other = "1.2.826.0.1.3680043.8.498.200"
    assert report_sr(dataclasses.replace(study, study_uid=other, instances=()),
                     dataclasses.replace(signed, study_uid=other)).StudyID != ds.StudyID


@pytest.mark.parametrize("login, name", [
    ("Rivera^Ana", "Rivera^Ana"), ("ana.rivera", "Rivera^Ana"), ("dr.a", "A^^^Dr"), ("arivera", "Arivera^"),
    ("j_p_smith@example.org", "Smith^J^P"), ("prof.dr.jan-de-vries", "Vries^Jan^De^Prof Dr"),
])
def test_observer_name_is_a_person_name_and_the_login_its_code(store, login, name):
    report = store.sign_report(STUDY, TEXT, SECTIONS, signer=login)
    (observer,) = sr_of(store, report).VerifyingObserverSequence
    assert str(observer.VerifyingObserverName) == name
    (ident,) = observer.VerifyingObserverIdentificationCodeSequence
    assert (ident.get("CodeValue") or ident.LongCodeValue, ident.CodeMeaning) == (login, login)


def test_content_references_the_source_images(store, signed):
    ds = sr_of(store, signed)
    images = [item for item in ds.ContentSequence if item.ValueType == "IMAGE"]
    assert all(item.RelationshipType == "CONTAINS" for item in images)
    referenced = [(r.ReferencedSOPClassUID, r.ReferencedSOPInstanceUID)
                  for item in images for r in item.ReferencedSOPSequence]
    expected = [(i.metadata["sop_class_uid"], i.sop_instance_uid) for i in store.get_study(STUDY).instances]
    assert referenced == expected and len(expected) == 3


def dciodvfy(store, report, tmp_path):
    """dciodvfy's Error and Warning lines for the exported SR."""
    path = tmp_path / "report.dcm"
    path.write_bytes(export_report(store.get_study(STUDY), report, "sr"))
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60, check=False)
    output = done.stdout + done.stderr
    assert "BasicTextSR" in output
    return [line for line in output.splitlines() if line.startswith(("Error", "Warning"))]


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")
@pytest.mark.parametrize("status", ["draft", "signed"])
@pytest.mark.parametrize("signer", ["Rivera^Ana", "dr.a"])
def test_dciodvfy_finds_no_errors_and_no_missing_study_or_observer(store, draft, status, signer, tmp_path):
    report = store.sign_report(STUDY, TEXT, SECTIONS, signer=signer) if status == "signed" else draft
    lines = dciodvfy(store, report, tmp_path)
    assert [line for line in lines if line.startswith("Error")] == []
    # a private coding scheme is never in dciodvfy's list; every other warning is a defect
    expected = "Warning - Unrecognized defined term <99MEDCM> for value 1 of attribute <Coding Scheme Designator>"
    assert [line for line in lines if line != expected] == []


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")
def test_dciodvfy_on_a_study_with_two_images(store, tmp_path):
    study = store.get_study(STUDY)
    two = dataclasses.replace(study, instances=study.instances[:2])
    report = store.sign_report(STUDY, TEXT, SECTIONS, signer="dr.a")
    path = tmp_path / "two.dcm"
    path.write_bytes(export_report(two, report, "sr"))
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60, check=False)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith(("Error", "Warning"))]
    assert [line for line in lines if line.startswith("Error")] == []
    words = ("Study Date", "Study Time", "Study ID", "Observer", "Person Name")
    assert [line for line in lines if any(word in line for word in words)] == []
    assert len([i for i in pydicom.dcmread(path).ContentSequence if i.ValueType == "IMAGE"]) == 2


@pytest.mark.skipif(shutil.which("dsrdump") is None, reason="dsrdump (dcmtk) not installed")
def test_dsrdump_reads_the_report(store, signed, tmp_path):
    path = tmp_path / "report.dcm"
    path.write_bytes(export_report(store.get_study(STUDY), signed, "sr"))
    done = subprocess.run(["dsrdump", "+Pl", "+Pc", str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "Basic Text SR" in done.stdout and "VERIFIED" in done.stdout
    assert "Small right pleural effusion. No pneumothorax." in " ".join(done.stdout.split())
    assert done.stdout.count("<contains IMAGE:") == 3 and "Rivera^Ana,99MEDCM" in done.stdout
    done = subprocess.run(["dsrdump", "+Pl", "+Pc", "+Pu", str(path)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert all(i.sop_instance_uid in done.stdout for i in store.get_study(STUDY).instances)


def test_text_export_has_a_status_header_then_the_report(store, draft):
    study = store.get_study(STUDY)
    text = export_report(study, draft, "txt").decode("utf-8")
    assert f"Study: {STUDY}" in text and "PSN-0042" in text and "UNVERIFIED DRAFT" in text
    assert text.endswith(TEXT + "\n")
    signed = store.sign_report(STUDY, TEXT, SECTIONS, signer="Rivera^Ana")
    header = export_report(study, signed, "txt").decode("utf-8").split("\n\n")[0]
    assert f"Status: SIGNED by Rivera^Ana at {signed.signed_at.isoformat()}" in header


def test_json_export(store, draft):
    study = store.get_study(STUDY)
    data = json.loads(export_report(study, draft, "json"))
    assert (data["status"], data["verified"], data["signed_by"], data["signed_at"]) == ("draft", False, None, None)
    signed = store.sign_report(STUDY, TEXT, SECTIONS, signer="Rivera^Ana")
    raw = export_report(study, signed, "json")
    data = json.loads(raw)
    assert list(data) == ["study_uid", "patient_id", "version", "status", "verified", "author", "signed_by",
                          "signed_at", "created_at", "sections", "text", "source_instances"]
    assert (data["study_uid"], data["patient_id"], data["verified"]) == (STUDY, "PSN-0042", True)
    assert data["signed_at"] == signed.signed_at.isoformat() and data["signed_at"].endswith("+00:00")
    assert data["sections"] == [{"name": n, "text": t} for n, t in SECTIONS] and data["text"] == TEXT
    assert data["source_instances"] == [i.sop_instance_uid for i in study.instances]
    assert raw == export_report(study, signed, "json")


def test_filenames(draft, signed):
    assert export_filename(signed, "sr") == f"report-{STUDY}-v2.dcm"  # signed over the model's draft (v1)
    assert [export_filename(draft, f).rsplit(".", 1)[1] for f in EXPORT_FORMATS] == ["dcm", "txt", "json"]
    assert export_filename(draft, "txt").endswith("-v1-draft.txt")


def test_bad_inputs_raise_one_line_errors(store, draft):
    study = store.get_study(STUDY)
    with pytest.raises(ValueError, match="export format 'pdf': unknown; expected one of sr, txt, json"):
        export_report(study, draft, "pdf")
    with pytest.raises(ValueError, match="has no signed report;"):
        pick_report(STUDY, store.report_versions(STUDY), signed_only=True)
    with pytest.raises(ValueError, match=r"has no report version 7; expected one of \[1\]"):
        pick_report(STUDY, store.report_versions(STUDY), version=7)
    uidless = dataclasses.replace(study, study_uid="unknown-study:scans")
    other = dataclasses.replace(draft, study_uid="unknown-study:scans")
    with pytest.raises(ValueError, match="study_uid 'unknown-study:scans': not a valid DICOM UID"):
        report_sr(uidless, other)
    with pytest.raises(ValueError, match="belongs to study 'unknown-study:scans'"):
        export_report(study, other, "txt")


def test_cli_writes_the_file_and_logs_one_export_event(store, signed, tmp_path, capsys):
    out = tmp_path / "out" / "report.dcm"
    out.parent.mkdir()
    code = main(["export", STUDY, "--db", str(tmp_path / "cases.db"), "--format", "sr", "--out", str(out),
                 "--version", "2", "--signed-only", "--user", "alice"])
    assert code == 0
    assert capsys.readouterr().out.strip() == (
        f"wrote {out} (sr; study {STUDY}, report version 2, signed by Rivera^Ana)")
    assert pydicom.dcmread(out).VerificationFlag == "VERIFIED"
    assert [p.name for p in out.parent.iterdir()] == ["report.dcm"]  # no temporary file left
    (event,) = store.events(kind="export")
    assert (event["user"], event["study_uid"]) == ("alice", STUDY)
    assert event["detail"] == {"format": "sr", "version": 2, "report_id": signed.id}


@pytest.mark.parametrize("argv, message", [
    (["1.2.3.4", "--format", "txt"], "error: study '1.2.3.4': not in the store"),
    ([STUDY, "--format", "json", "--version", "9"], f"error: study '{STUDY}': has no report version 9"),
    ([STUDY, "--format", "json", "--signed-only"], f"error: study '{STUDY}': has no signed report"),
])
def test_cli_errors_are_one_line(store, draft, tmp_path, capsys, argv, message):
    out = tmp_path / "x.out"
    assert main(["export", *argv, "--db", str(tmp_path / "cases.db"), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
    assert not out.exists() and store.events(kind="export") == []


def test_cli_rejects_an_unknown_format(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["export", STUDY, "--db", str(tmp_path / "cases.db"), "--format", "pdf", "--out", "x"])
    assert "invalid choice: 'pdf'" in capsys.readouterr().err
