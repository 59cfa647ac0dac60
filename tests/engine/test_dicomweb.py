"""DICOMweb pulls and STOW-RS parsing without a server: refusals are one line naming what was received."""

from __future__ import annotations

import pytest

from db.store import CaseStore
from medcm.dicom.deid import DeidConfig
from medcm.engine.dicomweb import DicomWebError, pull_study
from medcm.engine.facade import Engine
from medcm.engine.stow import StowRefused, split_multipart, store_parts
from pacs_peers import free_port  # tests/pacs_peers.py


@pytest.fixture
def engine(tmp_path):
    store = CaseStore(f"sqlite:///{tmp_path / 'cases.db'}")
    yield Engine(store, device="cpu", deid=DeidConfig(b"dicomweb-test-key-0123456789"))
    store.close()


def test_a_pull_from_an_unreachable_server_is_one_line_naming_it(engine):
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    with pytest.raises(DicomWebError) as raised:
        pull_study(engine, url, "1.2.3.4")
    line = str(raised.value)
    assert line.startswith(f"DICOMweb {url}, study 1.2.3.4: server unreachable (ConnectionError") and "\n" not in line
    with pytest.raises(ValueError, match=r"StudyInstanceUID: got '1\.2\.x', expected a DICOM UID"):
        pull_study(engine, url, "1.2.x")
    assert engine.store.list_studies() == []


def part(data: bytes, boundary: str = "b0undary", kind: str = "application/dicom") -> bytes:
    return f"--{boundary}\r\nContent-Type: {kind}\r\n\r\n".encode() + data + b"\r\n"


@pytest.mark.parametrize("body, content_type, status, words", [
    (part(b"x") + b"--b0undary--", "application/dicom", 415, "expected multipart/related"),
    (part(b"x") + b"--b0undary--", 'multipart/related; type="application/dicom+xml"; boundary=b0undary', 415,
     "expected multipart/related"),
    (part(b"x") + b"--b0undary--", 'multipart/related; type="application/dicom"', 400, "no boundary"),
    (part(b"x"), 'multipart/related; type="application/dicom"; boundary=b0undary', 400, "no closing delimiter"),
    (part(b"x", kind="image/jpeg") + b"--b0undary--", "multipart/related; boundary=b0undary", 415, "part 1"),
])
def test_split_multipart_refuses_what_is_not_a_dicom_multipart(body, content_type, status, words):
    with pytest.raises(StowRefused, match=words) as raised:
        split_multipart(body, content_type)
    assert raised.value.status == status


def test_split_multipart_returns_each_part_as_sent():
    body = part(b"first\r\n") + part(b"second") + b"--b0undary--\r\n"
    parts = split_multipart(body, 'multipart/related; type="application/dicom"; boundary="b0undary"')
    assert parts == [b"first\r\n", b"second"]


def test_unreadable_parts_fail_and_nothing_is_stored(engine):
    answer = store_parts(engine, [b"not dicom", b"neither"], "stow:test")
    assert answer.status == 409 and "00081199" not in answer.body
    assert [item["00081197"]["Value"] for item in answer.body["00081198"]["Value"]] == [[0xC000], [0xC000]]
    with pytest.raises(StowRefused, match="no DICOM part"):
        store_parts(engine, [], "stow:test")
    assert engine.store.list_studies() == []
