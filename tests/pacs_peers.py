"""Test peers for DICOM networking, shared by the engine and CLI tests: a storage SCP and a tiny ingested study."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pydicom
import pytest
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


ORTHANC_DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")  # Debian's orthanc-dicomweb


class Orthanc:
    """A private Orthanc (Debian's `orthanc` package) on free loopback ports, as a test PACS.

    Its JSON configuration is generated in `folder`: HTTP (REST API, and DICOMweb under /dicom-web/ when
    the plugin is installed) and DICOM ports on 127.0.0.1, no authentication, and `modalities`
    (name → (AE, host, port)) it may C-STORE to. `stop()` kills it; `start()` again serves the same
    storage on the same ports.
    """

    def __init__(self, folder: Path, modalities: dict[str, tuple[str, str, int]] | None = None) -> None:
        self.folder, self.http_port, self.dicom_port = folder, free_port(), free_port()
        self.ae_title = "ORTHANC"
        self.process: subprocess.Popen | None = None
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "medcm-test", "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "storage"),
            "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": self.ae_title,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "HttpServerEnabled": True,
            "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True, "DicomAlwaysAllowEcho": True,
            "DicomModalities": {name: list(peer) for name, peer in (modalities or {}).items()},
            "Plugins": [str(ORTHANC_DICOMWEB_PLUGIN)] if ORTHANC_DICOMWEB_PLUGIN.is_file() else [],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
            "StableAge": 1, "ConcurrentJobs": 1, "HttpThreadsCount": 4,
        }
        self.config = folder / "orthanc.json"
        self.config.write_text(json.dumps(config, indent=2), encoding="utf-8")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def destination(self) -> Destination:
        return Destination(self.ae_title, "127.0.0.1", self.dicom_port)

    def start(self, seconds: float = 30.0) -> Orthanc:
        """Start it and wait until its REST API answers `/system` (its log: `<folder>/orthanc.log`)."""
        log = open(self.folder / "orthanc.log", "ab")
        self.process = subprocess.Popen([shutil.which("Orthanc") or "Orthanc", str(self.config)], stdout=log,
                                        stderr=subprocess.STDOUT, cwd=self.folder)
        log.close()
        deadline = time.monotonic() + seconds
        while True:
            try:
                self.get("/system")
                return self
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"Orthanc did not start; its log:\n{(self.folder / 'orthanc.log').read_text()}")
                time.sleep(0.2)

    def stop(self) -> None:
        """Kill it (SIGKILL: as abrupt as a crash) and wait for it to exit."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        self.process = None

    def request(self, method: str, path: str, body: bytes | dict | list | str | None = None,
                content_type: str = "application/json") -> Any:
        """Call its REST API: the decoded JSON answer (the raw bytes when it is not JSON)."""
        data = json.dumps(body).encode() if isinstance(body, (dict, list)) else \
            body.encode() if isinstance(body, str) else body
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": content_type} if data is not None else {})
        with urllib.request.urlopen(req, timeout=60) as answer:
            raw = answer.read()
        try:
            return json.loads(raw)
        except ValueError:
            return raw

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def upload(self, path: Path) -> dict:
        """POST one DICOM file to `/instances`: Orthanc's answer (ID, ParentStudy, Status)."""
        return self.request("POST", "/instances", path.read_bytes(), "application/dicom")


def orthanc_or_skip() -> None:
    """Skip the test, with the reason, when Debian's Orthanc is not installed (CI installs it)."""
    if shutil.which("Orthanc") is None:
        pytest.skip("Orthanc is not installed (apt-get install orthanc orthanc-dicomweb; .ci/run installs them)")
