"""`medcm outbox`: lists the pending reports, and `--retry` delivers them (exit 0) or keeps them (exit 1)."""

from __future__ import annotations

import socket
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import BasicTextSRStorage

from db.store import CaseStore
from medcm.cli.commands import build_parser, main
from medcm.dicom.deid import DeidConfig
from medcm.engine.facade import Engine
from medcm.engine.outbox import Destination, Outbox

TEXT = "FINDINGS: Clear lungs.\nIMPRESSION: No acute disease."


class StorageSCP:
    """A Basic Text SR storage SCP on `port`, recording what it received."""

    def __init__(self, port: int) -> None:
        self.port, self.received, self._server = port, [], None

    def _on_store(self, event) -> int:
        self.received.append(event.dataset)
        return 0x0000

    def start(self) -> StorageSCP:
        ae = AE(ae_title="PACS")
        ae.add_supported_context(BasicTextSRStorage, ExplicitVRLittleEndian)
        self._server = ae.start_server(("127.0.0.1", self.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        return self

    def stop(self) -> None:
        self._server.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ingest_study(engine: Engine, folder: Path) -> str:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    uid = generate_uid(prefix="1.2.826.0.1.3680043.8.498.")[:50]
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid, uid + ".1"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid + ".1.1"
    folder.mkdir(parents=True)
    ds.save_as(folder / "1.dcm", enforce_file_format=True)
    return engine.ingest([folder]).study_uids[uid]


def _queued(tmp_path, port: int) -> tuple[str, str, str]:
    """A study signed while its destination was down: the db file, the outbox folder and the study UID."""
    db = str(tmp_path / "cases.db")
    store = CaseStore(f"sqlite:///{db}")
    try:
        outbox = Outbox(tmp_path / "cases.db.outbox", [Destination("PACS", "127.0.0.1", port)], timeout=5)
        engine = Engine(store, device="cpu", deid=DeidConfig(b"outbox-cli-test-key-0123456789"), outbox=outbox)
        study_uid = ingest_study(engine, tmp_path / "study")
        engine.sign(study_uid, TEXT, "dr_a")
    finally:
        store.close()
    return db, str(tmp_path / "cases.db.outbox"), study_uid


def test_serve_and_listen_take_send_to():
    parser = build_parser()
    serve = parser.parse_args(["serve", "--db", "x.db", "--checkpoint", "c", "--send-to", "PACS@h:104"])
    listen = parser.parse_args(["listen", "--db", "x.db", "--send-to", "A@h:1", "--send-to", "B@h:2"])
    assert serve.send_to == ["PACS@h:104"] and listen.send_to == ["A@h:1", "B@h:2"]


def test_outbox_lists_and_retries(tmp_path, capsys):
    port = free_port()
    db, folder, study_uid = _queued(tmp_path, port)
    assert main(["outbox", "--db", db]) == 1  # the default folder is beside the db file
    out = capsys.readouterr().out
    assert "1 pending" in out and study_uid in out and f"PACS@127.0.0.1:{port}" in out and "attempts 1" in out

    assert main(["outbox", "--db", db, "--outbox", folder, "--retry"]) == 1  # still down
    assert "queued" in capsys.readouterr().out

    server = StorageSCP(port).start()
    try:
        assert main(["outbox", "--db", db, "--outbox", folder, "--retry", "--user", "ops"]) == 0
    finally:
        server.stop()
    assert "delivered" in capsys.readouterr().out and len(server.received) == 1
    assert main(["outbox", "--db", db]) == 0
    store = CaseStore(f"sqlite:///{db}")
    try:
        events = store.events(study_uid, kind="send")
    finally:
        store.close()
    assert [e["detail"]["status"] for e in events] == ["delivered", "queued", "queued"]  # newest first
    assert events[0]["user"] == "ops"


def test_a_bad_send_to_is_one_error_line(tmp_path, capsys):
    assert main(["outbox", "--db", str(tmp_path / "cases.db"), "--send-to", "nonsense"]) == 1
    assert "--send-to: got 'nonsense'" in capsys.readouterr().err
