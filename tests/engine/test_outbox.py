"""The outbox: signed reports sent as DICOM SR by C-STORE, queued and retried when the destination is down."""

from __future__ import annotations

import json
import socket
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import BasicTextSRStorage

from db.store import CaseStore
from medcm.dicom.deid import DeidConfig
from medcm.engine.facade import Engine
from medcm.engine.outbox import DELIVERED, QUEUED, Destination, Outbox, parse_destination

KEY = b"outbox-test-key-0123456789"
TEXT = "FINDINGS: Clear lungs.\nIMPRESSION: No acute disease."


class StorageSCP:
    """A Basic Text SR storage SCP on a local port, recording what it received; stoppable and restartable."""

    def __init__(self, port: int = 0, status: int = 0x0000) -> None:
        self.port, self.status, self.received = port, status, []
        self._server = None

    def _on_store(self, event) -> int:
        self.received.append(event.dataset)
        return self.status

    def start(self) -> StorageSCP:
        ae = AE(ae_title="PACS")
        ae.add_supported_context(BasicTextSRStorage, ExplicitVRLittleEndian)
        self._server = ae.start_server(("127.0.0.1", self.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        self.port = self._server.server_address[1]
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    @property
    def destination(self) -> Destination:
        return Destination("PACS", "127.0.0.1", self.port)


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ingest_study(engine: Engine, folder: Path) -> str:
    """A tiny CT study ingested (de-identified): its stored UID."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    uid = generate_uid(prefix="1.2.826.0.1.3680043.8.498.")[:50]
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid, uid + ".1"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid + ".1.1"
    folder.mkdir(parents=True)
    ds.save_as(folder / "1.dcm", enforce_file_format=True)
    result = engine.ingest([folder])
    assert not result.errors
    return result.study_uids[uid]


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
