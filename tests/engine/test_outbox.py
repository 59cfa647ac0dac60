"""The outbox: signed reports sent as DICOM SR by C-STORE, queued and retried when the destination is down."""

from __future__ import annotations

import json
from io import BytesIO

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pynetdicom.sop_class import BasicTextSRStorage

from db.store import CaseStore
from medcm.dicom.deid import DeidConfig
from medcm.engine.facade import Engine
from medcm.engine.outbox import DELIVERED, QUEUED, Destination, Outbox, StowDestination, parse_destination
from pacs_peers import StorageSCP, free_port, ingest_study  # tests/pacs_peers.py

KEY = b"outbox-test-key-0123456789"
TEXT = "FINDINGS: Clear lungs.\nIMPRESSION: No acute disease."


@pytest.fixture
def scp():
    server = StorageSCP().start()
    yield server
    server.stop()


@pytest.fixture
def store(tmp_path):
    case_store = CaseStore(f"sqlite:///{tmp_path / 'cases.db'}")
    yield case_store
    case_store.close()


def make_engine(store: CaseStore, outbox: Outbox) -> Engine:
    return Engine(store, device="cpu", deid=DeidConfig(KEY), outbox=outbox)


def test_parse_destination():
    assert parse_destination("PACS@10.0.0.5:104") == Destination("PACS", "10.0.0.5", 104)
    assert str(parse_destination(" ORTHANC@pacs.example.org:4242 ")) == "ORTHANC@pacs.example.org:4242"
    for bad in ("PACS@host", "host:104", "PACS@host:0", "PACS@host:70000", "WAYTOOLONGAETITLE1@h:104", "@h:104"):
        with pytest.raises(ValueError, match="--send-to"):
            parse_destination(bad)


def test_parse_a_stow_rs_destination():
    assert parse_destination("HTTP://pacs.example.org:8042/dicom-web/") == \
        StowDestination("http://pacs.example.org:8042/dicom-web")
    assert parse_destination("https://medcm@pacs/dicom-web") == StowDestination("https://pacs/dicom-web", "medcm")
    with pytest.raises(ValueError, match="MEDCM_DICOMWEB_PASSWORD"):
        parse_destination("https://medcm:secret@pacs/dicom-web")


def test_a_stow_rs_item_keeps_its_url_across_restarts(tmp_path):
    dest = StowDestination("http://127.0.0.1:9/dicom-web", "medcm")
    Outbox(tmp_path, [dest]).enqueue(b"SR bytes", "1.2.3", 1)
    (item,) = Outbox(tmp_path, []).pending()
    assert item.destination == dest and item.path.parent.name == "stow_127.0.0.1_9_dicom-web"
    (outcome,) = Outbox(tmp_path, [], timeout=2).send_pending()
    assert outcome.status == QUEUED and outcome.error.startswith("STOW-RS to http://127.0.0.1:9/dicom-web: ")
    assert Outbox(tmp_path, []).pending()[0].attempts == 1


def test_a_signed_report_is_sent_as_a_verified_sr(store, scp, tmp_path):
    outbox = Outbox(tmp_path / "outbox", [scp.destination], timeout=5)
    engine = make_engine(store, outbox)
    study_uid = ingest_study(engine, tmp_path / "study")
    report = engine.sign(study_uid, TEXT, "dr_a")
    (received,) = scp.received
    assert received.StudyInstanceUID == study_uid and received.VerificationFlag == "VERIFIED"
    assert received.SOPClassUID == BasicTextSRStorage
    assert outbox.pending() == []
    assert (tmp_path / "outbox" / "sent" / scp.destination.slug / f"{study_uid}-v{report.version}.dcm").is_file()
    (event,) = store.events(study_uid, kind="send")
    assert event["user"] == "dr_a"
    assert event["detail"] == {"destination": str(scp.destination), "version": report.version, "status": DELIVERED}


def test_a_failed_send_is_queued_and_delivered_on_retry(store, tmp_path):
    port = free_port()
    outbox = Outbox(tmp_path / "outbox", [Destination("PACS", "127.0.0.1", port)], timeout=5)
    engine = make_engine(store, outbox)
    study_uid = ingest_study(engine, tmp_path / "study")
    report = engine.sign(study_uid, TEXT, "dr_a")  # the destination is down: signing still succeeds
    assert report.status == "signed"
    (item,) = outbox.pending()
    assert (item.study_uid, item.version, item.attempts) == (study_uid, report.version, 1) and item.last_error
    assert json.loads(item.path.with_suffix(".json").read_text())["attempts"] == 1
    (event,) = store.events(study_uid, kind="send")
    assert event["detail"]["status"] == QUEUED and event["detail"]["error"]

    server = StorageSCP(port).start()
    try:
        (outcome,) = outbox.send_pending()
        assert outcome.status == DELIVERED and outcome.error is None
        assert len(server.received) == 1 and server.received[0].StudyInstanceUID == study_uid
    finally:
        server.stop()
    assert outbox.pending() == []


def test_a_refusing_destination_keeps_the_item_pending(tmp_path):
    server = StorageSCP(status=0xA700).start()  # out of resources
    try:
        outbox = Outbox(tmp_path / "outbox", [server.destination], timeout=5)
        sr = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))  # any file: the SCP refuses
        sr.SOPClassUID = BasicTextSRStorage
        sr.file_meta.MediaStorageSOPClassUID = BasicTextSRStorage
        buffer = BytesIO()
        sr.save_as(buffer, enforce_file_format=True)
        outbox.enqueue(buffer.getvalue(), "1.2.3", 1)
        (outcome,) = outbox.send_pending()
    finally:
        server.stop()
    assert outcome.status == QUEUED and "0xA700" in outcome.error
    assert outbox.pending()[0].attempts == 1


def test_enqueueing_twice_keeps_one_item(tmp_path):
    destinations = [Destination("PACS", "127.0.0.1", 104), Destination("ARCHIVE", "10.0.0.9", 11112)]
    outbox = Outbox(tmp_path / "outbox", destinations)
    first = outbox.enqueue(b"sr", "1.2.3", 2)
    assert outbox.enqueue(b"sr", "1.2.3", 2) == first and len(first) == 2
    items = outbox.pending()
    assert len(items) == 2 and {item.destination for item in items} == set(destinations)
    assert outbox.pending([destinations[1]])[0].destination == destinations[1]
