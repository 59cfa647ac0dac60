"""Queries by study UID reuse the vectors ingest stored: the same answers as embedding the images again,
with no image decoded or embedded; the machine-draft rule and export shared by the CLI and the app."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest

from db.store import CaseStore, StoreError
from medcm.engine.facade import Engine
from medcm.engine.ingest import read_images
from medcm.engine.reports import DRAFT_AUTHOR, export_study_report
from medcm.engine.stored import read_stored

N_POOL = 33  # one training case per class


def _no_embedding(engine, monkeypatch):
    """Make any image decode-and-embed on `engine` fail the test."""
    def refuse(*args, **kwargs):
        pytest.fail("the study's images were embedded again")

    monkeypatch.setattr(engine, "embed_visual", refuse)
    monkeypatch.setattr(engine.checkpoint.model, "encode_image", refuse)
    monkeypatch.setattr(engine.checkpoint.model, "encode_volume", refuse)


def _same_answers(got, expected):
    assert [c.study_uid for c in got] == [c.study_uid for c in expected]
    np.testing.assert_allclose([c.score for c in got], [c.score for c in expected], atol=1e-5)


@pytest.fixture(scope="module")
def cases(synthetic_manifest):
    return synthetic_manifest.parent / "cases"


@pytest.fixture(scope="module")
def engine(synthetic_pool, trained_run):
    root = synthetic_pool(N_POOL, "study-queries")
    engine = Engine(CaseStore(f"sqlite:///{root / 'cases.db'}"), checkpoint=trained_run.best_dir.parent, device="cpu")
    assert engine.ingest([root / "pool"]).added_embeddings == 2 * N_POOL
    return engine


def _stored_query(engine, cases, case_id, tmp_path):
    """A dev case ingested without its report: its stored UID and its images read from the store."""
    shutil.copy(cases / case_id / "image.dcm", tmp_path / f"{case_id}.dcm")
    study_uid = engine.ingest([tmp_path / f"{case_id}.dcm"]).studies[0]
    images = [read_stored(view) for view in engine.store.get_study(study_uid).instances]
    return study_uid, images


def test_a_stored_study_is_queried_with_its_stored_vectors(engine, cases, tmp_path, monkeypatch):
    study_uid, images = _stored_query(engine, cases, "dev-00004", tmp_path)
    query = engine.study_embedding(images)
    expected_cases = engine.similar_cases(images, k=5)
    expected_draft = engine.draft(images)
    assert expected_draft.text()
    _no_embedding(engine, monkeypatch)
    np.testing.assert_allclose(engine.study_query(study_uid), query, atol=1e-5)
    got = engine.similar_cases_for_study(study_uid, k=5)
    assert study_uid not in {c.study_uid for c in got}
    _same_answers(got, expected_cases)
    _same_answers(engine.similar_cases_for_study(study_uid, k=3, filters={"modality": "DX"}),
                  expected_cases[:3])
    draft = engine.draft_for_study(study_uid)
    assert (draft.text(), draft.source_cases) == (expected_draft.text(), expected_draft.source_cases)
    assert engine.store.latest_report(study_uid) is None, "save=False keeps nothing"


def test_a_study_stored_without_vectors_is_read_and_embedded(engine, cases, tmp_path, monkeypatch):
    shutil.copy(cases / "dev-00007" / "image.dcm", tmp_path / "plain.dcm")
    plain = Engine(engine.store, index_dir=tmp_path / "unused")  # no checkpoint: no vectors stored
    study_uid = plain.ingest([tmp_path / "plain.dcm"]).studies[0]
    images = [read_stored(view) for view in engine.store.get_study(study_uid).instances]
    expected = engine.similar_cases(images, k=4)
    calls = []
    embed_visual = engine.embed_visual
    monkeypatch.setattr(engine, "embed_visual", lambda *args: calls.append(1) or embed_visual(*args))
    _same_answers(engine.similar_cases_for_study(study_uid, k=4), expected)
    assert calls == [1]


def test_a_series_only_partly_embedded_is_embedded_again(engine, cases, tmp_path):
    """Two images of one series, only the second stored with a vector: the stored one alone would not
    be the study's vector, so the study is read and embedded whole."""
    first = pydicom.dcmread(cases / "dev-00010" / "image.dcm")
    second = pydicom.dcmread(cases / "dev-00011" / "image.dcm")
    second.StudyInstanceUID, second.SeriesInstanceUID = first.StudyInstanceUID, first.SeriesInstanceUID
    second.PatientID = first.PatientID
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first.save_as(tmp_path / "a" / "first.dcm")
    second.save_as(tmp_path / "b" / "second.dcm")
    Engine(engine.store, index_dir=tmp_path / "unused").ingest([tmp_path / "a"])
    study_uid = engine.ingest([tmp_path / "b"]).studies[0]
    assert len(engine.store.image_embeddings(
        [view.sop_instance_uid for view in engine.store.get_study(study_uid).instances], engine.model_id)) == 1
    images = [read_stored(view) for view in engine.store.get_study(study_uid).instances]
    np.testing.assert_allclose(engine.study_query(study_uid), engine.study_embedding(images), atol=1e-5)


def test_draft_for_study_saves_only_over_nothing_or_a_machine_draft(engine, cases, tmp_path):
    study_uid, _ = _stored_query(engine, cases, "dev-00013", tmp_path)
    first = engine.draft_for_study(study_uid, save=True, user="dr.a")
    saved = engine.store.latest_report(study_uid)
    assert (saved.text, saved.status, saved.source, saved.author) == (first.text(), "draft", "draft", DRAFT_AUTHOR)
    events = engine.store.events(study_uid=study_uid, kind="draft")
    assert [e["user"] for e in events] == ["dr.a"]
    engine.draft_for_study(study_uid, save=True, user="dr.b")  # over a machine draft: updated in place
    assert engine.store.latest_report(study_uid).version == saved.version
    edit = engine.store.save_draft(study_uid, "FINDINGS: Edited by hand.", [], author="dr.a", source="edit")
    engine.draft_for_study(study_uid, save=True, user="dr.a")
    assert engine.store.latest_report(study_uid).text == edit.text, "a person's edit is never replaced"
    engine.sign(study_uid, "FINDINGS: Signed.", signer="dr.a")
    engine.draft_for_study(study_uid, save=True, user="dr.a")
    assert engine.store.latest_report(study_uid).status == "signed"
    with pytest.raises(StoreError, match="not in the store"):
        engine.draft_for_study("1.2.3.4.5", save=True)


def test_export_writes_one_file_and_one_event(engine, cases, tmp_path):
    study_uid, _ = _stored_query(engine, cases, "dev-00016", tmp_path)
    engine.draft_for_study(study_uid, save=True, user="dr.a")
    store = engine.store
    export = export_study_report(store, study_uid, "txt", "dr.a", folder=tmp_path)
    assert export.path.parent == tmp_path and export.path.name.endswith("-draft.txt")
    assert export.report.status == "draft"
    engine.sign(study_uid, "FINDINGS: Signed.", signer="dr.b")
    out = tmp_path / "signed.json"
    assert export_study_report(store, study_uid, "json", "cli", out=out, signed_only=True).path == out
    events = store.events(study_uid=study_uid, kind="export")
    assert [(e["user"], e["detail"]["format"], e["detail"].get("status")) for e in events] == [
        ("cli", "json", None), ("dr.a", "txt", "draft")]  # newest first; signed_only fixes the status
    with pytest.raises(ValueError, match="expected exactly one"):
        export_study_report(store, study_uid, "txt", "dr.a")
    with pytest.raises(ValueError, match="export format: got 'pdf'"):
        export_study_report(store, study_uid, "pdf", "dr.a", folder=tmp_path)
    assert len(store.events(study_uid=study_uid, kind="export")) == 2


# --- volumes: a CT series stored as one vector, in one study with a radiograph ------------------------------------


@pytest.fixture(scope="module")
def volume_engine(cases, untrained_checkpoint, tmp_path_factory):
    from medcm.data.synthetic_ct import write_volume_dataset

    root = tmp_path_factory.mktemp("vol-queries")
    write_volume_dataset(root / "ct", n_train=3, n_dev=1, depth=8, size=32)
    engine = Engine(CaseStore(f"sqlite:///{root / 'cases.db'}"), checkpoint=untrained_checkpoint(), device="cpu")
    pool = [root / "ct" / f"case-train-{i:05d}" for i in range(3)]
    assert engine.ingest(pool).added_embeddings == 3 + 3
    return engine, root


def test_a_volume_and_a_radiograph_study_is_queried_from_its_two_stored_vectors(volume_engine, cases, tmp_path,
                                                                                monkeypatch):
    engine, root = volume_engine
    study = tmp_path / "study"
    shutil.copytree(root / "ct" / "case-dev-00000", study)
    (study / "report.txt").unlink(missing_ok=True)
    ct = pydicom.dcmread(next(study.glob("*.dcm")))
    radiograph = pydicom.dcmread(cases / "dev-00001" / "image.dcm")
    radiograph.StudyInstanceUID, radiograph.PatientID = ct.StudyInstanceUID, ct.PatientID
    radiograph.save_as(study / "radiograph.dcm")
    result = engine.ingest([study])
    assert (len(result.studies), result.added_embeddings) == (1, 2), "one volume vector and one image vector"
    study_uid = result.studies[0]
    images, errors = read_images([study])
    assert not errors
    expected = engine.study_embedding(images)
    expected_cases = engine.similar_cases(images, k=3)
    _no_embedding(engine, monkeypatch)
    np.testing.assert_allclose(engine.study_query(study_uid), expected, atol=1e-5)
    _same_answers(engine.similar_cases_for_study(study_uid, k=3), expected_cases)
