"""The outbox: signed reports queued as DICOM SR at signing, sent by C-STORE in the background, retried with backoff."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timedelta, timezone
from io import BytesIO

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pynetdicom.sop_class import BasicTextSRStorage

from db.store import CaseStore
from medcm.dicom.deid import DeidConfig
from medcm.engine.facade import Engine
from medcm.engine.outbox import (
    DELIVERED,
    QUEUED,
    Destination,
    Outbox,
    RetryPolicy,
    StowDestination,
    parse_destination,
)
from medcm.engine.sender import FAILED, PENDING, SENT, OutboxSender, SendStatus
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


def wait_for(condition, seconds: float = 20.0) -> None:
    """Poll `condition` until it holds (the background sender works in its own thread)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {seconds} s")
        time.sleep(0.02)


def test_a_signed_report_is_sent_as_a_verified_sr(store, scp, tmp_path):
    outbox = Outbox(tmp_path / "outbox", [scp.destination], timeout=5)
    engine = make_engine(store, outbox)
    study_uid = ingest_study(engine, tmp_path / "study")
    engine.start_sending()
    try:
        report = engine.sign(study_uid, TEXT, "dr_a")
        wait_for(lambda: engine.send_status(study_uid) and engine.send_status(study_uid)[0].state == SENT)
    finally:
        engine.stop_sending()
    (received,) = scp.received
    assert received.StudyInstanceUID == study_uid and received.VerificationFlag == "VERIFIED"
    assert received.SOPClassUID == BasicTextSRStorage
    assert outbox.pending() == []
    assert (tmp_path / "outbox" / "sent" / scp.destination.slug / f"{study_uid}-v{report.version}.dcm").is_file()
    (event,) = store.events(study_uid, kind="send")
    assert event["user"] == "dr_a"
    assert event["detail"] == {"destination": str(scp.destination), "version": report.version, "status": DELIVERED}
    assert engine.send_status(study_uid) == [SendStatus(str(scp.destination), report.version, SENT, 1, None, None)]


def test_signing_only_queues_and_never_waits_for_the_network(store, tmp_path, monkeypatch):
    """A destination that never answers holds the sender thread, not the signature."""
    release, attempts = threading.Event(), []

    def hanging_store(self, item):  # stands in for a PACS that accepts the connection and never answers
        attempts.append(item.study_uid)
        release.wait(30)
        return "no C-STORE response (timed out)"

    monkeypatch.setattr(Outbox, "_store", hanging_store)
    outbox = Outbox(tmp_path / "outbox", [Destination("PACS", "127.0.0.1", free_port())], timeout=5)
    engine = make_engine(store, outbox)
    first, second = ingest_study(engine, tmp_path / "a"), ingest_study(engine, tmp_path / "b")
    engine.start_sending()
    try:
        engine.sign(first, TEXT, "dr_a")
        wait_for(lambda: attempts == [first])  # the sender is stuck on the first report...
        report = engine.sign(second, TEXT, "dr_a")  # ...and the second signature does not wait for it
        assert report.status == "signed" and not release.is_set()
        assert {item.study_uid for item in outbox.pending()} == {first, second}
        assert engine.send_status(second) == [SendStatus(str(outbox.destinations[0]), 1, PENDING, 0, None, None)]
    finally:
        release.set()
        engine.stop_sending(timeout=30)
    assert engine.sender is None


def test_without_a_sender_signing_sends_nothing(store, tmp_path):
    outbox = Outbox(tmp_path / "outbox", [Destination("PACS", "127.0.0.1", free_port())], timeout=5)
    engine = make_engine(store, outbox)
    study_uid = ingest_study(engine, tmp_path / "study")
    report = engine.sign(study_uid, TEXT, "dr_a")
    (item,) = outbox.pending()  # durable before sign returned, never tried
    assert (item.study_uid, item.version, item.attempts, item.last_error, item.user) == \
        (study_uid, report.version, 0, None, "dr_a")
    assert store.events(study_uid, kind="send") == []


def test_the_sender_retries_with_backoff_until_the_destination_comes_up(store, tmp_path):
    port = free_port()
    retry = RetryPolicy(first_delay_s=0.05, max_delay_s=0.2)
    outbox = Outbox(tmp_path / "outbox", [Destination("PACS", "127.0.0.1", port)], timeout=5, retry=retry)
    engine = make_engine(store, outbox)
    study_uid = ingest_study(engine, tmp_path / "study")
    engine.sign(study_uid, TEXT, "dr_a")
    engine.start_sending()
    server = None
    try:
        wait_for(lambda: outbox.pending()[0].attempts >= 3)  # the destination is down: tried again and again
        (status,) = engine.send_status(study_uid)
        assert status.state == FAILED and status.last_error and status.next_try
        server = StorageSCP(port).start()
        wait_for(lambda: outbox.pending() == [])
    finally:
        engine.stop_sending()
        if server is not None:
            server.stop()
    assert len(server.received) == 1 and server.received[0].StudyInstanceUID == study_uid
    statuses = [event["detail"]["status"] for event in store.events(study_uid, kind="send")]
    assert statuses[0] == DELIVERED and set(statuses[1:]) == {QUEUED} and len(statuses) >= 4
    assert {event["user"] for event in store.events(study_uid, kind="send")} == {"dr_a"}
    assert engine.send_status(study_uid)[0].state == SENT


def test_a_destination_backing_off_is_not_tried_before_its_next_try(store, tmp_path):
    outbox = Outbox(tmp_path / "outbox", [Destination("PACS", "127.0.0.1", free_port())], timeout=5,
                    retry=RetryPolicy(first_delay_s=60, max_delay_s=600))
    engine = make_engine(store, outbox)
    first, second = ingest_study(engine, tmp_path / "a"), ingest_study(engine, tmp_path / "b")
    engine.sign(first, TEXT, "dr_a")
    engine.sign(second, TEXT, "dr_a")
    sender = OutboxSender(outbox, store)
    (outcome,) = sender.run_once()  # the oldest fails: the destination's other item waits behind it
    assert (outcome.study_uid, outcome.status) == (first, QUEUED)
    assert sender.run_once() == []  # backing off: nothing tried
    later = datetime.now(timezone.utc) + timedelta(seconds=61)
    assert [o.study_uid for o in sender.run_once(now=later)] == [first]  # due again; fails again
    assert [item.attempts for item in outbox.pending()] == [2, 0]
    nxt = datetime.fromisoformat(outbox.pending()[0].next_try) - datetime.now(timezone.utc)
    assert timedelta(seconds=100) < nxt <= timedelta(seconds=121)  # doubled: 120 s


def test_an_unreadable_next_try_is_due_rather_than_stalling_its_destination(tmp_path):
    outbox = Outbox(tmp_path / "outbox", [Destination("PACS", "127.0.0.1", 104)])
    (path,) = outbox.enqueue(b"sr", "1.2.3", 1)
    now = datetime.now(timezone.utc)
    for next_try, due in ((None, True), ("garbage", True), ((now + timedelta(minutes=5)).isoformat(), False),
                          ((now - timedelta(seconds=1)).isoformat(), True)):
        sidecar = json.loads(path.with_suffix(".json").read_text())
        path.with_suffix(".json").write_text(json.dumps({**sidecar, "next_try": next_try}))
        assert outbox.pending()[0].due(now) is due, next_try


def test_retry_policy_doubles_up_to_its_cap():
    policy = RetryPolicy(first_delay_s=10, max_delay_s=600)
    assert [policy.delay(n) for n in (1, 2, 3, 6, 7, 100)] == [10, 20, 40, 320, 600, 600]
    with pytest.raises(ValueError, match="first_delay_s=700"):
        RetryPolicy(first_delay_s=700, max_delay_s=600)


def test_nothing_is_lost_on_a_crash_between_queue_and_send(store, scp, tmp_path):
    folder = tmp_path / "outbox"
    engine = make_engine(store, Outbox(folder, [scp.destination], timeout=5))
    study_uid = ingest_study(engine, tmp_path / "study")
    engine.sign(study_uid, TEXT, "dr_a")  # queued; the process "dies" before any sender ran
    del engine
    restarted = make_engine(store, Outbox(folder, [], timeout=5))  # a new process, the same folder
    (item,) = restarted.outbox.pending()
    assert item.study_uid == study_uid and item.attempts == 0
    restarted.start_sending()
    try:
        wait_for(lambda: len(scp.received) == 1)
        wait_for(lambda: restarted.outbox.pending() == [])
    finally:
        restarted.stop_sending()
    assert scp.received[0].StudyInstanceUID == study_uid


def test_stopping_the_sender_ends_its_thread_and_its_attempts(store, tmp_path):
    outbox = Outbox(tmp_path / "outbox", [Destination("PACS", "127.0.0.1", free_port())], timeout=5,
                    retry=RetryPolicy(first_delay_s=0.02, max_delay_s=0.05))
    engine = make_engine(store, outbox)
    engine.sign(ingest_study(engine, tmp_path / "study"), TEXT, "dr_a")
    sender = engine.start_sending()
    wait_for(lambda: outbox.pending()[0].attempts >= 1)
    engine.stop_sending(timeout=30)
    assert not sender.running and engine.sender is None
    attempts = outbox.pending()[0].attempts
    time.sleep(0.3)  # several backoff steps: a running thread would have tried again
    assert outbox.pending()[0].attempts == attempts
    assert not any(thread.name == "medcm-outbox-sender" for thread in threading.enumerate())


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
