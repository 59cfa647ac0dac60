"""`medcm draft --save`: the input is ingested like an upload and the draft kept as the app keeps it."""

from __future__ import annotations

import json
import shutil

import pytest

from db.store import CaseStore
from medcm.cli.commands import main


@pytest.fixture(scope="module")
def stored(synthetic_manifest, trained_run, tmp_path_factory):
    """A store of twelve training cases (with reports), ingested by `medcm ingest`."""
    root = tmp_path_factory.mktemp("draft-save")
    for i in range(12):
        shutil.copytree(synthetic_manifest.parent / "cases" / f"train-{i:05d}", root / "archive" / f"case{i}")
    db, checkpoint = root / "cases.db", str(trained_run.best_dir.parent)
    assert main(["ingest", str(root / "archive"), "--db", str(db), "--checkpoint", checkpoint]) == 0
    return root, db, checkpoint


def _file_study_uid(path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def _draft(capsys, *argv):
    code = main(["draft", *map(str, argv)])
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def test_draft_save_ingests_the_file_and_keeps_a_machine_draft(stored, synthetic_manifest, capsys):
    root, db, checkpoint = stored
    upload = root / "upload"
    upload.mkdir()
    shutil.copy(synthetic_manifest.parent / "cases" / "dev-00005" / "image.dcm", upload / "image.dcm")
    out = json.loads(_draft(capsys, upload / "image.dcm", "--db", db, "--checkpoint", checkpoint, "--save",
                            "--user", "dr.cli", "--json"))
    study_uid = out["study_uid"]
    with CaseStore(f"sqlite:///{db}") as store:
        study = store.get_study(study_uid)
        assert len(study.instances) == 1 and study.status == "new"  # the model's draft changes no status
        assert store.latest_report(study_uid).source == "draft"
        copy = study.instances[0].path  # a de-identified copy, as the app stores uploads
        assert copy.startswith(str(root / "cases.db.files")) and study_uid != _file_study_uid(upload / "image.dcm")
        latest = store.latest_report(study_uid)
        assert (latest.author, latest.source, latest.version) == ("medcm-draft", "draft", out["saved_version"])
        assert out["sentences"] and all(sentence["text"] in latest.text for sentence in out["sentences"])
        assert [e["user"] for e in store.events(study_uid=study_uid, kind="draft")] == ["dr.cli"]
        assert [e["user"] for e in store.events(study_uid=study_uid, kind="ingest")] == ["dr.cli"]

    again = _draft(capsys, study_uid, "--db", db, "--checkpoint", checkpoint, "--save")  # by its stored UID
    assert f"saved as draft version {latest.version} of study {study_uid}" in again
    with CaseStore(f"sqlite:///{db}") as store:
        store.sign_report(study_uid, "FINDINGS: Signed by hand.", [], signer="dr.s")
    refused = _draft(capsys, study_uid, "--db", db, "--checkpoint", checkpoint, "--save")
    assert refused.startswith("DRAFT — UNVERIFIED") and f"not saved: study {study_uid}: " in refused
    assert "signed by dr.s" in refused
    with CaseStore(f"sqlite:///{db}") as store:
        assert store.latest_report(study_uid).text == "FINDINGS: Signed by hand."


def test_draft_without_save_stores_nothing(stored, synthetic_manifest, capsys):
    root, db, checkpoint = stored
    with CaseStore(f"sqlite:///{db}") as store:
        before = (len(store.list_studies()), len(store.events()))
        stored_uid = store.list_studies()[0].study_uid
    printed = _draft(capsys, synthetic_manifest.parent / "cases" / "dev-00008" / "image.dcm", "--db", db,
                     "--checkpoint", checkpoint)
    assert printed.startswith("DRAFT — UNVERIFIED") and "saved" not in printed
    by_uid = _draft(capsys, stored_uid, "--db", db, "--checkpoint", checkpoint)  # a stored study, read-only
    assert by_uid.startswith("DRAFT — UNVERIFIED") and "saved" not in by_uid
    with CaseStore(f"sqlite:///{db}") as store:
        assert (len(store.list_studies()), len(store.events())) == before
