"""The DICOM receiver: C-STORE from DCMTK and pynetdicom, C-ECHO, allowed AEs, refusals, quiet-time ingest."""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import BasicTextSRStorage, CTImageStorage, Verification

from db.store import CaseStore
from medcm.dicom.deid import DeidConfig, pseudonymous_uid
from medcm.engine.facade import Engine
from medcm.engine.receiver import CANNOT_UNDERSTAND, Receiver

KEY = b"receiver-test-key-0123456789"
PLANTED_NAME, PLANTED_ID = "PLANTRECEIVED^GIVEN", "PAT-RECEIVED-0042"
ALLOWED = ["SENDER", "PYSCU"]


def _ct(study_uid: str, number: int) -> pydicom.Dataset:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, study_uid + ".1"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{study_uid}.1.{number}"
    ds.PatientName, ds.PatientID, ds.InstanceNumber = PLANTED_NAME, PLANTED_ID, number
    return ds


def _study(folder: Path, n: int = 3) -> tuple[str, list[Path]]:
    """A CT study of `n` instances written to `folder`: its UID and files."""
    folder.mkdir(parents=True)
    study_uid = generate_uid(prefix="1.2.826.0.1.3680043.8.498.")[:50]
    files = []
    for number in range(1, n + 1):
        path = folder / f"{number}.dcm"
        _ct(study_uid, number).save_as(path, enforce_file_format=True)
        files.append(path)
    return study_uid, files


@pytest.fixture
def engine(tmp_path):
    store = CaseStore(f"sqlite:///{tmp_path / 'cases.db'}")
    yield Engine(store, device="cpu", deid=DeidConfig(KEY))
    store.close()


@pytest.fixture
def receiver(engine, tmp_path):
    scp = Receiver(engine, tmp_path / "spool", port=0, allowed_aes=ALLOWED, quiet_seconds=0.0)
    scp.start(background_flush=False)  # the tests flush by hand instead of waiting
    yield scp
    scp.stop()


def _storescu(port: int, files: list[Path], calling: str = "SENDER") -> subprocess.CompletedProcess:
    if shutil.which("storescu") is None:
        pytest.skip("DCMTK's storescu is not installed (apt-get install dcmtk; CI installs it)")
    return subprocess.run(["storescu", "-aet", calling, "-aec", "MEDCM", "127.0.0.1", str(port), *map(str, files)],
                          capture_output=True, text=True, timeout=30)


def _send(port: int, datasets: list[pydicom.Dataset], calling: str = "PYSCU") -> list[int]:
    """C-STORE each dataset with a pynetdicom SCU; the statuses the receiver answered."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDCM")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def test_a_study_sent_with_storescu_is_ingested_de_identified_once_quiet(receiver, engine, tmp_path):
    study_uid, files = _study(tmp_path / "pacs")
    done = _storescu(receiver.port, files)
    assert done.returncode == 0, done.stderr
    assert len(list((receiver.spool / study_uid).glob("*.dcm"))) == 3  # spooled, not yet ingested
    assert receiver.flush(quiet_seconds=3600) == [] and engine.store.list_studies() == []  # not quiet yet
    (received,) = receiver.flush()
    stored_uid = pseudonymous_uid(study_uid, DeidConfig(KEY))
    assert received.studies == (stored_uid,) and received.added_instances == 3 and not received.errors
    assert received.user == "dicom:SENDER" and received.drafts == {}  # no checkpoint: nothing to draft
    (study,) = engine.store.list_studies()
    assert study.study_uid == stored_uid and study.patient_id.startswith("ANON-") and study.status == "new"
    stored = b"".join(Path(instance.path).read_bytes() for instance in engine.store.get_study(stored_uid).instances)
    assert len(stored) > 0
    secrets = [PLANTED_NAME.split("^")[0], PLANTED_ID, study_uid, *(f"{study_uid}.1.{n}" for n in (1, 2, 3))]
    assert [s for s in secrets if s.encode() in stored] == []
    assert [p for p in receiver.spool.rglob("*") if p.is_file()] == []  # the spool is emptied after ingest
    assert engine.store.events(stored_uid, kind="ingest")[0]["user"] == "dicom:SENDER"


def test_a_pynetdicom_send_is_stored_and_a_second_send_stores_nothing_new(receiver, engine, tmp_path):
    study_uid, files = _study(tmp_path / "pacs", n=2)
    datasets = [pydicom.dcmread(f) for f in files]
    assert _send(receiver.port, datasets) == [0, 0]
    (first,) = receiver.flush()
    assert first.added_instances == 2 and first.user == "dicom:PYSCU"
    assert _send(receiver.port, datasets) == [0, 0]
    (second,) = receiver.flush()
    assert second.added_instances == 0 and second.skipped_instances == 2
    assert len(engine.store.get_study(first.studies[0]).instances) == 2


def test_without_deidentification_the_received_files_are_kept_where_the_store_finds_them(tmp_path):
    store = CaseStore(f"sqlite:///{tmp_path / 'plain.db'}")
    engine = Engine(store, device="cpu", deid=None, files_dir=tmp_path / "files")
    scp = Receiver(engine, tmp_path / "plain-spool", port=0, quiet_seconds=0.0)
    scp.start(background_flush=False)
    try:
        _, files = _study(tmp_path / "pacs", n=2)
        assert _send(scp.port, [pydicom.dcmread(f) for f in files]) == [0, 0]
        (received,) = scp.flush()
        paths = [Path(i.path) for i in store.get_study(received.studies[0]).instances]
        assert len(paths) == 2 and all(p.is_file() and tmp_path / "files" / "received" in p.parents for p in paths)
        assert [p for p in scp.spool.rglob("*") if p.is_file()] == []
    finally:
        scp.stop()
        store.close()


def test_c_echo_answers_and_a_calling_ae_not_allowed_is_rejected(receiver, tmp_path, caplog):
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="MEDCM")
    assert assoc.is_established and assoc.send_c_echo().Status == 0
    assoc.release()
    if shutil.which("echoscu"):
        echo = subprocess.run(["echoscu", "-aet", "SENDER", "-aec", "MEDCM", "127.0.0.1", str(receiver.port)],
                              capture_output=True, text=True, timeout=30)
        assert echo.returncode == 0, echo.stderr
    _, files = _study(tmp_path / "pacs", n=1)
    with caplog.at_level(logging.WARNING, logger="medcm.engine.receiver"):
        intruder = AE(ae_title="INTRUDER")
        intruder.add_requested_context(CTImageStorage)
        assert intruder.associate("127.0.0.1", receiver.port, ae_title="MEDCM").is_rejected
        if shutil.which("storescu"):
            assert _storescu(receiver.port, files, calling="INTRUDER").returncode != 0
    assert "refused an association from AE 'INTRUDER'" in caplog.text
    assert [p for p in receiver.spool.rglob("*") if p.is_file()] == [] and receiver.flush() == []


def _refusals(study_uid: str) -> dict[str, tuple[pydicom.Dataset, int]]:
    """Datasets the receiver must refuse, by what is wrong, with the failure status expected."""
    no_pixels = _ct(study_uid, 11)
    del no_pixels.PixelData
    truncated = _ct(study_uid, 12)
    truncated.PixelData = truncated.PixelData[:100]
    burned_in = _ct(study_uid, 13)
    burned_in.BurnedInAnnotation = "YES"
    bad_study_uid = _ct(study_uid, 14)
    bad_study_uid.StudyInstanceUID = "1.2.3.x"
    return {"no pixels": (no_pixels, CANNOT_UNDERSTAND), "truncated": (truncated, CANNOT_UNDERSTAND),
            "burned in": (burned_in, CANNOT_UNDERSTAND), "bad study UID": (bad_study_uid, CANNOT_UNDERSTAND)}


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # the bad UID, on purpose
def test_refused_instances_get_a_failure_status_one_log_line_and_lose_nothing_stored(receiver, engine, tmp_path,
                                                                                   caplog):
    study_uid, files = _study(tmp_path / "pacs", n=2)
    assert _send(receiver.port, [pydicom.dcmread(f) for f in files]) == [0, 0]
    (first,) = receiver.flush()
    refusals = _refusals(study_uid)
    with caplog.at_level(logging.WARNING, logger="medcm.engine.receiver"):
        statuses = _send(receiver.port, [ds for ds, _ in refusals.values()])
    assert dict(zip(refusals, statuses)) == {what: status for what, (_, status) in refusals.items()}
    lines = [r.getMessage() for r in caplog.records if r.name == "medcm.engine.receiver"]
    assert len(lines) == len(refusals)
    assert all("from AE PYSCU" in line and f"{study_uid}.1.1" in line for line in lines)  # names the instance
    assert [p for p in receiver.spool.rglob("*") if p.is_file()] == [] and receiver.flush() == []
    assert len(engine.store.get_study(first.studies[0]).instances) == 2  # what was stored is still there


def test_a_report_is_not_an_image_so_its_presentation_context_is_rejected(receiver):
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(BasicTextSRStorage)
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="MEDCM")
    try:
        assert assoc.is_established
        assert {str(cx.abstract_syntax) for cx in assoc.accepted_contexts} == {str(CTImageStorage)}
    finally:
        assoc.release()


def test_a_failed_ingest_keeps_the_files_and_a_restarted_receiver_ingests_and_drafts_them(engine, tmp_path,
                                                                                          monkeypatch):
    spool = tmp_path / "spool"
    scp = Receiver(engine, spool, port=0, quiet_seconds=0.0, draft=True)
    scp.start(background_flush=False)
    try:
        study_uid, files = _study(tmp_path / "pacs", n=2)
        assert _send(scp.port, [pydicom.dcmread(f) for f in files]) == [0, 0]
        with monkeypatch.context() as patch:
            patch.setattr(engine, "ingest", _database_down)
            assert scp.flush() == []
            assert scp.flush() == []  # retried only after RETRY_SECONDS
        assert len(list(spool.rglob("*.dcm"))) == 2  # claimed, not lost
    finally:
        scp.stop()
    drafted = []
    monkeypatch.setattr(engine, "draft_for_study", lambda uid, save, user: drafted.append((uid, save, user)) or
                        SimpleNamespace(abstention=None, text=lambda: "FINDINGS: Clear lungs."))
    again = Receiver(engine, spool, port=0, quiet_seconds=0.0, draft=True)
    again.start(background_flush=False)
    try:
        (received,) = again.flush()
    finally:
        again.stop()
    stored_uid = pseudonymous_uid(study_uid, DeidConfig(KEY))
    assert received.added_instances == 2 and received.user == "dicom:unknown AE"  # senders are not kept on disk
    assert drafted == [(stored_uid, True, "dicom:unknown AE")] and received.drafts == {stored_uid: "drafted"}
    assert list(spool.rglob("*.dcm")) == []


def _database_down(*args, **kwargs):
    raise OSError("database is down")
