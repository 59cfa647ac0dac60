"""Test peers for DICOM networking, shared by the engine and CLI tests: a storage SCP and a tiny ingested study."""

from __future__ import annotations

import socket
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import BasicTextSRStorage

from medcm.engine.facade import Engine
from medcm.engine.outbox import Destination


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
