"""STOW-RS on the served app: `dicomweb_client.store_instances` stores a study for a clinician's Basic
credentials (de-identified, like an upload); other accounts, bad requests and unreadable parts are refused."""

from __future__ import annotations

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.data import get_testdata_file

from db.store import CaseStore
from medcm.cli.serve import serve
from medcm.dicom.deid import DeidConfig
from pacs_peers import free_port  # tests/pacs_peers.py


@pytest.fixture(scope="module")
def served(tmp_path_factory, untrained_checkpoint):
    folder = tmp_path_factory.mktemp("stow")
    db_url = f"sqlite:///{folder / 'cases.db'}"
    with CaseStore(db_url) as store:
        store.add_user("dr_a", "clinician", "clinician-password")
        store.add_user("vic", "viewer", "viewer-password")
    app = serve(db_url, untrained_checkpoint(volume=False), port=free_port(), block=False, device="cpu",
                deid=DeidConfig(b"stow-test-key-0123456789"))
    yield app.local_url.rstrip("/"), db_url
    app.close()


def ct(patient: str) -> pydicom.Dataset:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    ds.PatientName = patient
    return ds


def client(url: str, name: str | None, password: str = "") -> DICOMwebClient:
    session = requests.Session()
    if name:
        session.auth = (name, password)
    return DICOMwebClient(f"{url}/dicomweb", session=session)


def test_a_clinician_stores_a_study_with_store_instances(served):
    url, db_url = served
    ds = ct("PLANTSTOW^GIVEN")
    answer = client(url, "dr_a", "clinician-password").store_instances([ds])
    (stored,) = answer.ReferencedSOPSequence
    assert stored.ReferencedSOPInstanceUID == ds.SOPInstanceUID and stored.ReferencedSOPClassUID == ds.SOPClassUID
    assert "FailedSOPSequence" not in answer
    with CaseStore(db_url) as store:
        (study,) = store.list_studies()
        assert study.patient_id.startswith("ANON-") and study.study_uid != ds.StudyInstanceUID
        assert "PLANTSTOW" not in str(store.get_study(study.study_uid))
        assert [e["user"] for e in store.events(study.study_uid, kind="ingest")] == ["stow:dr_a"]


@pytest.mark.parametrize("name, password, status", [(None, "", 401), ("dr_a", "wrong", 401),
                                                    ("vic", "viewer-password", 403)])
def test_store_needs_an_account_that_may_upload(served, name, password, status):
    url, _ = served
    with pytest.raises(requests.HTTPError) as raised:
        client(url, name, password).store_instances([ct("X^Y")])
    assert raised.value.response.status_code == status


def test_an_unreadable_part_fails_alone_and_other_media_types_are_refused(served):
    url, _ = served
    good = get_testdata_file("MR_small.dcm", download=False)
    ds = pydicom.dcmread(good)
    boundary = "medcm-test-boundary"
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
                    for data in (open(good, "rb").read(), b"not dicom at all")) + f"--{boundary}--\r\n".encode()
    headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'}
    auth = ("dr_a", "clinician-password")
    answer = requests.post(f"{url}/dicomweb/studies", data=body, headers=headers, auth=auth, timeout=60)
    assert answer.status_code == 202 and answer.headers["content-type"] == "application/dicom+json"
    result = pydicom.Dataset.from_json(answer.json())
    assert [item.ReferencedSOPInstanceUID for item in result.ReferencedSOPSequence] == [ds.SOPInstanceUID]
    assert [item.FailureReason for item in result.FailedSOPSequence] == [0xC000]
    refused = requests.post(f"{url}/dicomweb/studies", data=b"{}", auth=auth, timeout=30,
                            headers={"Content-Type": "application/json"})
    assert refused.status_code == 415 and "multipart/related" in refused.json()["detail"]
