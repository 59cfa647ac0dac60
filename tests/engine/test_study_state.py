"""What the worklist and the priors list say of a study: "new" until a person drafts (the model's draft is kept
but changes no status), and the same patient's other studies found by the stored pseudonym."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from db.store import CaseStore, StoreError
from medcm.config import AbstentionConfig
from medcm.dicom.deid import DeidConfig
from medcm.engine.facade import Engine
from medcm.engine.priors import Prior, format_study_date
from medcm.engine.receiver import ingest_received
from medcm.engine.reports import DRAFT_AUTHOR

KEY = b"study-state-test-key-0123456789"
REPORT = "FINDINGS: Clear lungs.\nIMPRESSION: No acute disease."


def write_study(folder: Path, patient_id: str, study_date: str = "20240131", description: str = "CT CHEST") -> Path:
    """A one-image CT study of `patient_id` (original identifiers: the engine de-identifies it)."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    uid = generate_uid(prefix="1.2.826.0.1.3680043.8.498.")[:50]
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid, uid + ".1"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid + ".1.1"
    ds.PatientID, ds.PatientName = patient_id, f"{patient_id}^GIVEN"
    ds.StudyDate, ds.StudyDescription = study_date, description
    folder.mkdir(parents=True)
    ds.save_as(folder / "1.dcm", enforce_file_format=True)
    return folder


@pytest.fixture
def store(tmp_path):
    with CaseStore(f"sqlite:///{tmp_path / 'cases.db'}") as opened:
        yield opened


def test_a_received_study_with_a_machine_draft_is_new_until_a_clinician_drafts(store, tmp_path, untrained_checkpoint):
    engine = Engine(store, checkpoint=untrained_checkpoint(volume=False), device="cpu", deid=DeidConfig(KEY),
                    abstention=AbstentionConfig(below_percentile=0.0))
    assert not engine.ingest([write_study(tmp_path / "reference", "REF")], default_report=REPORT).errors
    received = ingest_received(engine, [write_study(tmp_path / "received", "P1")], "dicom:PACS", draft=True)
    (study_uid,) = received.studies
    assert received.drafts == {study_uid: "drafted"}
    draft = store.latest_report(study_uid)  # kept, for the app to open for editing...
    assert (draft.status, draft.source, draft.author) == ("draft", "draft", DRAFT_AUTHOR) and draft.text
    assert store.get_study(study_uid).status == "new"  # ...but nobody has worked on the study yet
    assert study_uid in {study.study_uid for study in store.list_studies(status="new")}
    engine.draft_for_study(study_uid, save=True, user="dr.a")  # drafting again in the app: still the model's
    assert store.get_study(study_uid).status == "new"
    engine.save_edit(study_uid, draft.text + " Checked.", "dr.a")
    assert store.get_study(study_uid).status == "drafted"
    engine.sign(study_uid, draft.text + " Checked.", "dr.a")
    assert store.get_study(study_uid).status == "signed"


def test_priors_are_the_same_patients_other_studies_newest_first(store, tmp_path):
    engine = Engine(store, device="cpu", deid=DeidConfig(KEY))

    def ingest(name: str, patient: str, date: str, description: str = "CT CHEST") -> str:
        result = engine.ingest([write_study(tmp_path / name, patient, date, description)])
        assert not result.errors
        return result.studies[0]

    old = ingest("old", "P1", "20190305")
    new = ingest("new", "P1", "20240131")
    current = ingest("current", "P1", "20220601")
    other = ingest("other", "P2", "20230101")
    engine.sign(old, REPORT, "dr.a")
    engine.save_edit(new, "FINDINGS: Not signed yet.", "dr.b")
    assert store.get_study(old).patient_id == store.get_study(current).patient_id != store.get_study(other).patient_id

    priors = engine.priors(current)
    assert [prior.study_uid for prior in priors] == [new, old]  # newest first; not itself, not P2's study
    newer, older = priors
    assert isinstance(newer, Prior) and (newer.status, newer.report, newer.modality) == ("drafted", None, "CT")
    assert (older.status, older.report, older.report_version, older.signed_by) == ("signed", REPORT, 1, "dr.a")
    # Dates are stored shifted per patient (de-identification): intervals stay true, so the order does too.
    stored = [store.get_study(uid).study_date for uid in (new, old)]
    assert [prior.study_date for prior in priors] == [format_study_date(d) for d in stored]
    assert all(len(prior.study_date) == 10 and prior.study_date[4] == "-" for prior in priors)
    assert engine.priors(other) == []
    with pytest.raises(StoreError, match="not in the store"):
        engine.priors("1.2.3.404")


def test_a_study_without_a_patient_id_has_no_priors(store, tmp_path):
    engine = Engine(store, device="cpu")  # --no-deid: a file without PatientID stays without one
    folder = write_study(tmp_path / "anonymous", "X")
    ds = pydicom.dcmread(folder / "1.dcm")
    del ds.PatientID
    ds.save_as(folder / "1.dcm", enforce_file_format=True)
    (study_uid,) = engine.ingest([folder]).studies
    write_study(tmp_path / "another", "Y")
    engine.ingest([tmp_path / "another"])
    assert store.get_study(study_uid).patient_id == "" and engine.priors(study_uid) == []


def test_study_dates_are_formatted():
    assert [format_study_date(d) for d in ("20240131", "", " 2024 ", "2024-01-31")] == [
        "2024-01-31", "", "2024", "2024-01-31"]


def test_a_study_stored_without_vectors_is_read_again_to_query_and_a_lost_file_is_named(store, tmp_path,
                                                                                      untrained_checkpoint):
    """`Engine.study_query`'s fallback (`medcm.engine.stored.read_stored_study`): no stored vector of this model."""
    import numpy as np

    from medcm.engine.stored import read_stored

    engine = Engine(store, checkpoint=untrained_checkpoint(volume=False), device="cpu", deid=DeidConfig(KEY))
    plain = Engine(store, device="cpu", deid=DeidConfig(KEY), index_dir=tmp_path / "unused")  # stores no vectors
    (study_uid,) = plain.ingest([write_study(tmp_path / "plain", "P9")]).studies
    (view,) = store.get_study(study_uid).instances
    np.testing.assert_allclose(engine.study_query(study_uid), engine.study_embedding([read_stored(view)]), atol=1e-5)
    Path(view.path).unlink()
    with pytest.raises(ValueError, match=f"study {study_uid}: no stored image can be read to search with"):
        engine.study_query(study_uid)
