"""`medcm listen` end to end: a subprocess answers C-ECHO, ingests a C-STORE once quiet, and stops on SIGTERM."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from db.store import CaseStore
from medcm.cli.commands import build_parser


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(log: Path, text: str, process: subprocess.Popen, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while text not in log.read_text(encoding="utf-8", errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no {text!r} from medcm listen; its log:\n{log.read_text(errors='replace')}")
        time.sleep(0.1)


def test_the_parser_has_listen_with_its_defaults():
    args = build_parser().parse_args(["listen", "--db", "cases.db", "--allow-ae", "A", "--allow-ae", "B"])
    assert (args.ae_title, args.port, args.host, args.quiet_seconds) == ("MEDCM", 11112, "127.0.0.1", 10.0)
    assert args.allow_ae == ["A", "B"] and args.checkpoint is None and args.burned_in == "refuse"


def test_listen_receives_a_study_and_stops_on_sigterm(tmp_path):
    if shutil.which("storescu") is None or shutil.which("echoscu") is None:
        pytest.skip("DCMTK's storescu/echoscu are not installed (apt-get install dcmtk; CI installs it)")
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    ds.PatientName = "PLANTLISTEN^GIVEN"
    ds.save_as(tmp_path / "ct.dcm", enforce_file_format=True)
    db, port, log = tmp_path / "cases.db", _free_port(), tmp_path / "listen.log"
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "medcm", "listen", "--db", str(db), "--port", str(port),
                                    "--quiet-seconds", "0.5", "--allow-ae", "SENDER"],
                                   stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        _wait_for(log, "medcm listen: AE MEDCM", process)
        sent = ["-aet", "SENDER", "-aec", "MEDCM", "127.0.0.1", str(port)]
        assert subprocess.run(["echoscu", *sent], capture_output=True, timeout=30).returncode == 0
        store = subprocess.run(["storescu", *sent, str(tmp_path / "ct.dcm")], capture_output=True, text=True,
                               timeout=30)
        assert store.returncode == 0, store.stderr
        _wait_for(log, "received study", process)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert "medcm listen: stopped" in log.read_text()
    with CaseStore(f"sqlite:///{db}") as cases:
        (study,) = cases.list_studies()
        assert study.patient_id.startswith("ANON-") and len(cases.get_study(study.study_uid).instances) == 1
    assert (tmp_path / "cases.db.spool").is_dir() and not list((tmp_path / "cases.db.spool").rglob("*.dcm"))


def test_listen_sends_what_waits_in_the_outbox_in_the_background_and_stops(tmp_path):
    """A report queued earlier (e.g. signed just before a crash) leaves with `listen --send-to`'s sender thread."""
    from medcm.engine.outbox import Outbox
    from pacs_peers import StorageSCP  # tests/pacs_peers.py

    scp = StorageSCP().start()
    try:
        sr = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))  # any file: the SCP records it
        sr.SOPClassUID = sr.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
        sr.save_as(tmp_path / "sr.dcm", enforce_file_format=True)
        outbox = Outbox(tmp_path / "cases.db.outbox", [scp.destination])
        outbox.enqueue((tmp_path / "sr.dcm").read_bytes(), "1.2.3", 1, user="dr_a")
        db, log = tmp_path / "cases.db", tmp_path / "listen.log"
        with log.open("w") as out:
            process = subprocess.Popen([sys.executable, "-m", "medcm", "listen", "--db", str(db), "--port",
                                        str(_free_port()), "--send-to", str(scp.destination)],
                                       stdout=out, stderr=subprocess.STDOUT,
                                       env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            _wait_for(log, "medcm listen: AE MEDCM", process)
            deadline = time.monotonic() + 60
            while outbox.pending() and time.monotonic() < deadline:
                time.sleep(0.1)
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                process.kill()
    finally:
        scp.stop()
    assert len(scp.received) == 1 and outbox.pending() == [], log.read_text()
    assert "medcm listen: stopped" in log.read_text()
    with CaseStore(f"sqlite:///{db}") as cases:
        (event,) = cases.events("1.2.3", kind="send")
    assert event["user"] == "dr_a" and event["detail"]["status"] == "delivered"
