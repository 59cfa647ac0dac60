"""medcm against a real PACS: Debian's Orthanc (with its DICOMweb plugin) on free loopback ports.

Orthanc C-STOREs a study to medcm's receiver, and DCMTK's storescu sends one: each is stored, de-identified,
embedded and drafted. Signing sends the SR to Orthanc, which then holds it VERIFIED in the study, and DCMTK's
dsrdump reads the copy fetched back. `medcm fetch` pulls a study from Orthanc's DICOMweb by UID. With Orthanc
killed, a signed report waits in the outbox (C-STORE and STOW-RS destinations) while the background sender fails, and `medcm outbox --retry`
delivers it once Orthanc is back on the same ports. Skipped only where Orthanc is not installed.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from db.store import CaseStore
from medcm.cli.commands import main
from medcm.config import AbstentionConfig
from medcm.dicom.deid import DeidConfig
from medcm.engine.facade import Engine
from medcm.engine.outbox import DELIVERED, Outbox, StowDestination
from medcm.engine.receiver import Receiver
from medcm.engine.sender import OutboxSender
from pacs_peers import ORTHANC_DICOMWEB_PLUGIN, Orthanc, free_port, orthanc_or_skip  # tests/pacs_peers.py

KEY = b"orthanc-test-key-0123456789"
REPORT = "FINDINGS: Clear lungs. No effusion.\nIMPRESSION: No acute disease."


def ct_study(folder: Path, patient: str) -> tuple[Path, pydicom.Dataset]:
    """A one-image CT study with fresh UIDs and the patient's name `patient`, saved as `folder/1.dcm`."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    uid = generate_uid(prefix="1.2.826.0.1.3680043.8.498.")[:50]
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid, uid + ".1"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid + ".1.1"
    ds.PatientName, ds.PatientID = patient, patient.split("^")[0]
    folder.mkdir(parents=True)
    ds.save_as(folder / "1.dcm", enforce_file_format=True)
    return folder / "1.dcm", ds


@pytest.fixture(scope="module")
def pacs(tmp_path_factory, untrained_checkpoint):
    """Orthanc (knowing medcm's receiver as modality "medcm"), and an engine whose outbox C-STOREs to Orthanc.

    The store holds one reported study, so a received study has something to draft from.
    """
    orthanc_or_skip()
    folder = tmp_path_factory.mktemp("pacs")
    receiver_port = free_port()
    orthanc = Orthanc(folder / "orthanc", {"medcm": ("MEDCM", "127.0.0.1", receiver_port)}).start()
    store = CaseStore(f"sqlite:///{folder / 'cases.db'}")
    outbox = Outbox(folder / "outbox", [orthanc.destination], timeout=5)
    engine = Engine(store, checkpoint=untrained_checkpoint(volume=False), device="cpu", deid=DeidConfig(KEY),
                    abstention=AbstentionConfig(below_percentile=0.0), outbox=outbox)
    reference, _ = ct_study(folder / "reference", "REFERENCE^R")
    assert not engine.ingest([reference], default_report=REPORT).errors
    receiver = Receiver(engine, folder / "spool", port=receiver_port, quiet_seconds=0.0, draft=True)
    receiver.start(background_flush=False)
    yield orthanc, engine, receiver, folder
    receiver.stop()
    store.close()
    orthanc.stop()


def check_stored(engine: Engine, study_uid: str, original: pydicom.Dataset) -> None:
    """Stored de-identified (a new UID, a pseudonym, no name in the file), with embeddings and a saved draft."""
    study = engine.store.get_study(study_uid)
    assert study_uid != original.StudyInstanceUID and study.patient_id.startswith("ANON-")
    (instance,) = study.instances
    stored = pydicom.dcmread(instance.path)
    assert str(stored.get("PatientName", "")) != str(original.PatientName) and "PLANT" not in str(stored)
    assert engine.store.image_embeddings([instance.sop_instance_uid], engine.model_id)
    assert study.status == "new" and engine.store.latest_report(study_uid).source == "draft"  # the model's draft
    assert engine.store.latest_report(study_uid).text


def test_orthanc_sends_a_study_to_the_receiver(pacs):
    orthanc, engine, receiver, folder = pacs
    path, ds = ct_study(folder / "from-orthanc", "PLANTORTHANC^GIVEN")
    orthanc_study = orthanc.upload(path)["ParentStudy"]
    job = orthanc.request("POST", "/modalities/medcm/store", {"Resources": [orthanc_study], "Synchronous": True})
    assert job["FailedInstancesCount"] == 0 and job["InstancesCount"] == 1
    (received,) = receiver.flush(0.0)
    (study_uid,) = received.studies
    assert received.user == "dicom:ORTHANC" and received.drafts == {study_uid: "drafted"}
    check_stored(engine, study_uid, ds)


def test_storescu_sends_a_study_to_the_receiver(pacs):
    if shutil.which("storescu") is None:
        pytest.skip("DCMTK's storescu is not installed (apt-get install dcmtk; CI installs it)")
    _, engine, receiver, folder = pacs
    path, ds = ct_study(folder / "from-storescu", "PLANTSTORESCU^GIVEN")
    sent = subprocess.run(["storescu", "-aet", "MODALITY", "-aec", "MEDCM", "127.0.0.1", str(receiver.port),
                           str(path)], capture_output=True, text=True, timeout=60)
    assert sent.returncode == 0, sent.stderr
    (received,) = receiver.flush(0.0)
    (study_uid,) = received.studies
    assert received.user == "dicom:MODALITY"
    check_stored(engine, study_uid, ds)


def orthanc_srs(orthanc: Orthanc, study_uid: str) -> list[dict]:
    """Orthanc's SR instances of the study `study_uid`, as simplified tags (with their Orthanc ID)."""
    found = orthanc.request("POST", "/tools/find", {"Level": "Instance", "Query": {"StudyInstanceUID": study_uid,
                                                                                   "Modality": "SR"}})
    return [{**orthanc.get(f"/instances/{oid}/tags?simplify"), "ID": oid} for oid in found]


def test_a_signed_report_reaches_orthanc_as_a_verified_sr(pacs, tmp_path):
    orthanc, engine, _, folder = pacs
    path, _ = ct_study(folder / "to-sign", "PLANTSIGN^GIVEN")
    study_uid = engine.ingest([path]).studies[0]
    engine.start_sending()  # as `medcm serve --send-to` does: the SR leaves in the background
    try:
        engine.sign(study_uid, REPORT, "dr_a")
        deadline = time.monotonic() + 60
        while engine.outbox.pending() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        engine.stop_sending()
    assert [status.state for status in engine.send_status(study_uid)] == ["sent"]
    (sr,) = orthanc_srs(orthanc, study_uid)
    assert sr["VerificationFlag"] == "VERIFIED" and sr["StudyInstanceUID"] == study_uid
    assert sr["ContentSequence"]  # the report's text items
    file = tmp_path / "sr.dcm"
    file.write_bytes(orthanc.get(f"/instances/{sr['ID']}/file"))
    if shutil.which("dsrdump") is None:
        pytest.skip("DCMTK's dsrdump is not installed (apt-get install dcmtk; CI installs it)")
    dump = subprocess.run(["dsrdump", str(file)], capture_output=True, text=True, timeout=60)
    assert dump.returncode == 0 and "VERIFIED" in dump.stdout.upper() and "Clear lungs" in dump.stdout, dump.stderr


def test_medcm_fetch_pulls_a_study_from_orthanc_dicomweb(pacs, tmp_path, capsys):
    if not ORTHANC_DICOMWEB_PLUGIN.is_file():
        pytest.skip("Orthanc's DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)")
    orthanc, _, _, folder = pacs
    path, ds = ct_study(folder / "to-fetch", "PLANTFETCH^GIVEN")
    orthanc.upload(path)
    db = tmp_path / "fetched.db"
    assert main(["fetch", "--from", orthanc.dicomweb_url, "--study", ds.StudyInstanceUID, "--db", str(db)]) == 0
    assert "stored study" in capsys.readouterr().out
    with CaseStore(f"sqlite:///{db}") as store:
        (study,) = store.list_studies()
        assert study.patient_id.startswith("ANON-") and study.study_uid != ds.StudyInstanceUID
        (event,) = store.events(study.study_uid, kind="ingest")
        assert event["user"] == "cli"
    assert main(["fetch", "--from", orthanc.dicomweb_url, "--study", "1.2.3.4", "--db", str(db)]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"DICOMweb {orthanc.dicomweb_url}, study 1.2.3.4: no such study" in error


def test_a_report_signed_while_orthanc_is_down_is_delivered_by_outbox_retry(pacs, capsys):
    orthanc, engine, _, folder = pacs
    destinations = [orthanc.destination]
    if ORTHANC_DICOMWEB_PLUGIN.is_file():
        destinations.append(StowDestination(orthanc.dicomweb_url))
    engine.outbox = Outbox(folder / "outbox-retry", destinations, timeout=3)
    path, _ = ct_study(folder / "while-down", "PLANTDOWN^GIVEN")
    study_uid = engine.ingest([path]).studies[0]
    orthanc.stop()
    try:
        engine.sign(study_uid, REPORT, "dr_b")
        pending = engine.outbox.pending()
        assert len(pending) == len(destinations) and all(item.attempts == 0 for item in pending)
        OutboxSender(engine.outbox, engine.store).run_once()  # the background sender's pass, while Orthanc is down
        pending = engine.outbox.pending()
        assert len(pending) == len(destinations) and all(item.attempts == 1 and item.last_error for item in pending)
        assert {event["detail"]["status"] for event in engine.store.events(study_uid, kind="send")} == {"queued"}
    finally:
        orthanc.start()  # the same storage, on the same ports
    code = main(["outbox", "--db", engine.store.url, "--outbox", str(engine.outbox.folder), "--retry"])
    out = capsys.readouterr().out
    assert code == 0 and out.count(DELIVERED) == len(destinations), out
    assert engine.outbox.pending() == []
    (sr,) = orthanc_srs(orthanc, study_uid)  # the same SR by both routes: Orthanc keeps it once
    assert sr["VerificationFlag"] == "VERIFIED"
