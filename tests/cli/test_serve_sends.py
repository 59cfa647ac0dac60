"""`medcm serve` with an outbox: its sender thread delivers what waits in the outbox, and stops with the app."""

from __future__ import annotations

import threading
import time

import pydicom
from pydicom.data import get_testdata_file
from pynetdicom.sop_class import BasicTextSRStorage

from db.store import CaseStore
from medcm.cli.serve import serve
from medcm.engine.outbox import Outbox
from pacs_peers import StorageSCP, free_port  # tests/pacs_peers.py


def _senders() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "medcm-outbox-sender"]


def test_serve_sends_the_outbox_in_the_background_and_close_stops_it(tmp_path, untrained_checkpoint):
    db_url = f"sqlite:///{tmp_path / 'cases.db'}"
    with CaseStore(db_url) as store:
        store.add_user("dr_a", "clinician", "clinician-password")
    scp = StorageSCP().start()
    sr = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))  # any file: the SCP records it
    sr.SOPClassUID = sr.file_meta.MediaStorageSOPClassUID = BasicTextSRStorage
    sr.save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    outbox = Outbox(tmp_path / "cases.db.outbox", [scp.destination], timeout=5)
    outbox.enqueue((tmp_path / "sr.dcm").read_bytes(), "1.2.3", 1, user="dr_a")  # e.g. signed before a restart
    assert _senders() == []
    app = serve(db_url, untrained_checkpoint(volume=False), port=free_port(), block=False, device="cpu",
                outbox=outbox)
    try:
        assert len(_senders()) == 1
        deadline = time.monotonic() + 60
        while outbox.pending() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        app.close()
        scp.stop()
    assert outbox.pending() == [] and len(scp.received) == 1
    assert _senders() == []  # stopped with the app
    with CaseStore(db_url) as store:
        (event,) = store.events("1.2.3", kind="send")
    assert (event["user"], event["detail"]["status"]) == ("dr_a", "delivered")
