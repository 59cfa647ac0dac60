"""De-identification on ingest: planted identifiers reach no stored byte; copies, keys, retries, kills."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pydicom
import pytest
from test_deid import KEY, _bytes, _ct, _planted_strings

from db.store import CaseStore
from medcm.dicom.deid import DeidConfig, pseudonymous_uid
from medcm.dicom.deid_copies import load_or_create_key, read_source
from medcm.dicom.read import read_instance
from medcm.dicom.write import write_image
from medcm.engine.facade import Engine

REPORT = ("HISTORY: Mr PLANTFAMILY, seen 12/03/2021, MRN: PAT-REAL-0001, phone 555-123-4567.\n"
          "FINDINGS: A 3 cm nodule in the right upper lobe.\nIMPRESSION: Pulmonary nodule.")
REPORT_SECRETS = ["PLANTFAMILY", "12/03/2021", "PAT-REAL-0001", "555-123-4567"]


def _study(folder: Path, ds: pydicom.Dataset, report: str | None = REPORT) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "image.dcm").write_bytes(_bytes(ds))
    if report is not None:
        (folder / "report.txt").write_text(report, encoding="utf-8")
    return folder


def _all_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def test_planted_identifiers_reach_no_stored_byte(tmp_path, trained_run, caplog):
    """Every Basic Profile attribute and the report carry planted values; none reach the database file
    (and its WAL), the vector indexes, the stored files, the logs or any export."""
    from medcm.dicom.sr import EXPORT_FORMATS, export_report

    ds = _ct()
    source = _study(tmp_path / "incoming" / "study", ds)
    planted = [s for s in _planted_strings(ds) if s.encode() in source.joinpath("image.dcm").read_bytes()]
    assert len(planted) >= 90  # not vacuous: one value per profile attribute, by VR
    data = tmp_path / "data"
    store = CaseStore(f"sqlite:///{data / 'cases.db'}")
    engine = Engine(store, checkpoint=trained_run.best_dir.parent, device="cpu", deid=DeidConfig(KEY))
    with caplog.at_level(logging.DEBUG):
        result = engine.ingest([source], user="tester")
        assert result.added_instances == 1 and result.added_reports == 1 and not result.errors
        (study_uid,) = result.studies
        for kind in ("image", "report"):
            engine.index(kind)  # built and saved beside the database
        assert engine.similar_cases([read_instance(source / "image.dcm")], k=1) == []  # its own study is left out
        report = store.latest_report(study_uid)
        engine.sign(study_uid, report.text, "Dr Reader")
        exports = data / "exports"
        exports.mkdir()
        study, signed = store.get_study(study_uid), store.latest_report(study_uid)
        for fmt in EXPORT_FORMATS:
            (exports / f"report.{fmt}").write_bytes(export_report(study, signed, fmt))
    assert study.patient_id.startswith("ANON-") and study_uid == pseudonymous_uid(ds.StudyInstanceUID, DeidConfig(KEY))
    assert "[NAME]" in report.text and "[DATE]" in report.text and "nodule" in report.text
    store.close()
    assert (data / "cases.db.index").is_dir() and len(list((data / "cases.db.files").rglob("*.dcm"))) == 1
    stored = _all_bytes(data)
    logs = caplog.text.encode()
    leaks = [s for s in planted + REPORT_SECRETS if s.encode() in stored or s.encode() in logs]
    assert leaks == []


def test_reingest_writes_the_same_copy_and_stores_nothing_new(tmp_path):
    source = _study(tmp_path / "in", _ct())
    store = CaseStore(f"sqlite:///{tmp_path / 'cases.db'}")
    engine = Engine(store, deid=DeidConfig(KEY))
    first = engine.ingest([source])
    (copy,) = (tmp_path / "cases.db.files").rglob("*.dcm")
    before = copy.read_bytes()
    again = engine.ingest([source])
    assert (again.added_instances, again.skipped_instances, again.added_reports) == (0, 1, 0)
    assert again.studies == first.studies and copy.read_bytes() == before
    assert store.get_study(first.studies[0]).instances[0].path == str(copy)
    stored = store.get_study(first.studies[0]).instances[0]
    reread = read_instance(copy).meta  # the metadata taken without a second decode is the file's own
    assert (stored.content_sha256, stored.metadata["study_date"], stored.metadata["patient_id"]) == (
        reread.content_sha256, reread.study_date, reread.patient_id)
    assert not [p for p in copy.parent.iterdir() if p.name.startswith(".")]  # no staging file left


def test_the_patients_sex_and_age_band_are_recorded_but_not_the_exact_age(tmp_path):
    ds = _ct()
    ds.PatientSex, ds.PatientAge = "F", "067Y"
    store = CaseStore(f"sqlite:///{tmp_path / 'cases.db'}")
    (study_uid,) = Engine(store, deid=DeidConfig(KEY)).ingest([_study(tmp_path / "in", ds)]).studies
    meta = store.get_study(study_uid).instances[0].metadata
    assert (meta["patient_sex"], meta["patient_age_band"]) == ("F", "60–69 y") and "067Y" not in str(meta)
    (view,) = store.list_studies()
    assert (view.patient_sex, view.patient_age) == ("F", "60–69 y")


def test_same_patient_same_pseudonym_other_key_other_pseudonym(tmp_path):
    a = _study(tmp_path / "a", _ct(study_uid="1.2.826.0.1.3680043.99.1"))
    b = _study(tmp_path / "b", _ct(study_uid="1.2.826.0.1.3680043.99.2"))
    b_ds = pydicom.dcmread(b / "image.dcm")
    b_ds.SOPInstanceUID, b_ds.SeriesInstanceUID = "1.2.826.0.1.3680043.99.3", "1.2.826.0.1.3680043.99.4"
    b_ds.save_as(b / "image.dcm")
    store = CaseStore(f"sqlite:///{tmp_path / 'cases.db'}")
    result = Engine(store, deid=DeidConfig(KEY)).ingest([a, b])
    pseudonyms = {store.get_study(uid).patient_id for uid in result.studies}
    assert len(result.studies) == 2 and len(pseudonyms) == 1
    other = CaseStore(f"sqlite:///{tmp_path / 'other.db'}")
    other_result = Engine(other, deid=DeidConfig(b"another-site-key-0123")).ingest([a])
    assert other.get_study(other_result.studies[0]).patient_id not in pseudonyms


def test_burned_in_annotation_is_refused_or_flagged(tmp_path):
    ds = _ct()
    ds.BurnedInAnnotation = "YES"
    source = _study(tmp_path / "in", ds)
    store = CaseStore(f"sqlite:///{tmp_path / 'cases.db'}")
    refused = Engine(store, deid=DeidConfig(KEY)).ingest([source])
    assert refused.studies == () and refused.added_instances == 0 and store.list_studies() == []
    (error,) = refused.errors
    assert "burned-in annotation" in error.reason and error.path.endswith("image.dcm")
    assert not list((tmp_path / "cases.db.files").rglob("*.dcm"))
    flagged = Engine(store, deid=DeidConfig(KEY, refuse_burned_in=False)).ingest([source])
    (sop,) = flagged.burned_in
    instance = store.get_study(flagged.studies[0]).instances[0]
    assert instance.sop_instance_uid == sop and instance.metadata["burned_in_annotation"] is True


def test_a_changed_file_under_a_stored_uid_never_replaces_the_copy(tmp_path):
    ds = _ct()
    source = _study(tmp_path / "in", ds)
    store = CaseStore(f"sqlite:///{tmp_path / 'cases.db'}")
    engine = Engine(store, deid=DeidConfig(KEY))
    engine.ingest([source])
    (copy,) = (tmp_path / "cases.db.files").rglob("*.dcm")
    before = copy.read_bytes()
    ds.PixelData = bytes(len(ds.PixelData))  # same UIDs, other pixels
    (source / "image.dcm").write_bytes(_bytes(ds))
    result = engine.ingest([source])
    assert result.added_instances == 0 and "already stored" in result.errors[0].reason
    assert copy.read_bytes() == before


def test_reports_keyed_by_original_uid_are_attached_and_scrubbed(tmp_path):
    ds = _ct()
    source = _study(tmp_path / "in", ds, report=None)
    store = CaseStore(f"sqlite:///{tmp_path / 'cases.db'}")
    result = Engine(store, deid=DeidConfig(KEY)).ingest([source], {ds.StudyInstanceUID: REPORT})
    assert result.study_uids == {ds.StudyInstanceUID: result.studies[0]}
    text = store.latest_report(result.studies[0]).text
    assert not [s for s in REPORT_SECRETS if s in text] and "Pulmonary nodule" in text


def test_files_without_uids_get_derived_ones_and_stay_grouped(tmp_path):
    folder = tmp_path / "in"
    for i in range(2):
        write_image(folder / f"{i}.dcm", np.full((16, 16), i * 0.5), patient_id="PAT-9")
        ds = pydicom.dcmread(folder / f"{i}.dcm")
        del ds.StudyInstanceUID, ds.SeriesInstanceUID
        ds.save_as(folder / f"{i}.dcm")
    store = CaseStore(f"sqlite:///{tmp_path / 'cases.db'}")
    result = Engine(store, deid=DeidConfig(KEY)).ingest([folder])
    (study_uid,) = result.studies
    assert study_uid.startswith("2.25.") and len(store.get_study(study_uid).instances) == 2
    assert str(folder).encode() not in _all_bytes(tmp_path / "cases.db.files")


def test_key_file_is_created_private_once_and_checked(tmp_path):
    path = tmp_path / "keys" / "site.key"
    key = load_or_create_key(path)
    assert len(key) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(path) == key
    path.write_text("not hex")
    with pytest.raises(ValueError, match=r"site.key: expected at least 32 hex digits, got 7 characters"):
        load_or_create_key(path)


def test_read_source_reads_zip_members_and_names_failures(tmp_path):
    import zipfile

    with zipfile.ZipFile(tmp_path / "s.zip", "w") as archive:
        archive.writestr("a/b.dcm", b"abc")
    assert read_source(f"{tmp_path / 's.zip'}:a/b.dcm") == b"abc"
    with pytest.raises(Exception, match=r"s.zip:a/missing.dcm: cannot read it again"):
        read_source(f"{tmp_path / 's.zip'}:a/missing.dcm")


_KILLED_INGEST = textwrap.dedent("""
    import os, signal, sys
    from db import versions as write
    from db.store import CaseStore
    import medcm.engine.facade as engine_module
    from medcm.dicom.deid import DeidConfig

    engine_module.INGEST_CHUNK_IMAGES = 2  # 6 one-image studies: three transactions
    calls = {"n": 0}
    add_reports = write.add_reports

    def add_reports_then_die(session, reports):
        calls["n"] += 1
        if calls["n"] == 2 and sys.argv[3] == "kill":  # inside the second transaction, after its instances
            os.kill(os.getpid(), signal.SIGKILL)
        return add_reports(session, reports)

    write.add_reports = add_reports_then_die
    engine = engine_module.Engine(CaseStore(sys.argv[2]), deid=DeidConfig(b"site-secret-0123456789"))
    result = engine.ingest([sys.argv[1]])
    print(result.added_instances, result.skipped_instances, result.added_reports)
""")


def test_a_killed_ingest_leaves_a_consistent_store_and_can_be_retried(tmp_path):
    incoming = tmp_path / "incoming"
    for i in range(6):
        _study(incoming / f"s{i}", _ct(patient_id=f"PAT-{i}", study_uid=f"1.2.826.0.1.3680043.99.{100 + i}"))
        ds = pydicom.dcmread(incoming / f"s{i}" / "image.dcm")
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.99.{200 + i}"
        ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.99.{300 + i}"
        ds.save_as(incoming / f"s{i}" / "image.dcm")
    db = tmp_path / "cases.db"
    url = f"sqlite:///{db}"
    script = tmp_path / "ingest.py"
    script.write_text(_KILLED_INGEST)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    killed = subprocess.run([sys.executable, str(script), str(incoming), url, "kill"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    with sqlite3.connect(db) as con:  # what a crash leaves: the first transaction, whole
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert con.execute("PRAGMA foreign_key_check").fetchall() == []
        assert con.execute("SELECT count(*) FROM instances").fetchone() == (2,)
        assert con.execute("SELECT count(*) FROM reports").fetchone() == (2,)
        assert con.execute("SELECT count(*) FROM studies WHERE id NOT IN "
                           "(SELECT study_id FROM reports)").fetchone() == (0,)
    retried = subprocess.run([sys.executable, str(script), str(incoming), url, "run"], env=env,
                             capture_output=True, text=True, timeout=300)
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout.split() == ["4", "2", "4"]  # the rest added, the first two skipped
    store = CaseStore(url)
    studies = store.list_studies()
    assert len(studies) == 6 and all(len(store.report_versions(s.study_uid)) == 1 for s in studies)
    paths = {store.get_study(s.study_uid).instances[0].path for s in studies}
    assert all(Path(p).is_file() for p in paths) and len(paths) == 6
    assert len(store.events(kind="ingest")) == 3  # one per committed transaction, none for the killed one


def test_reports_written_after_ingest_are_scrubbed_by_the_kept_keyed_identifiers(tmp_path):
    """An edit and a signature typed in the app name the patient; the store holds neither the name nor
    any identifier in clear, only keyed hashes of them in the instance metadata."""
    ds = _ct()
    ds.ReferringPhysicianName = "PLANTREFERRER^ALEX"
    source = _study(tmp_path / "in", ds, report=None)
    store = CaseStore(f"sqlite:///{tmp_path / 'cases.db'}")
    engine = Engine(store, deid=DeidConfig(KEY))
    study_uid = engine.ingest([source]).studies[0]
    typed = ("FINDINGS: Plantfamily Plantgiven (PAT-REAL-0001), referred by Dr Plantreferrer, seen by "
             "Dr. Watson on 12/03/2021: right upper lobe nodule, MR brain normal.")
    edit = engine.save_edit(study_uid, typed, author="dr_edit")
    signed = engine.sign(study_uid, typed + " IMPRESSION: Nodule.", signer="dr_sign")
    for report in (edit, signed):
        assert report.text.startswith("FINDINGS: [NAME] [NAME] ([ID]), referred by Dr [NAME], seen by Dr. [NAME] on "
                                      "[DATE]: right upper lobe nodule, MR brain normal.")
    stored = b"".join(p.read_bytes() for p in tmp_path.rglob("cases.db*") if p.is_file())
    stored += _all_bytes(tmp_path / "cases.db.files")
    assert b"nodule" in stored and b"ANON-" in stored  # not vacuous: the report and the copies are there
    assert [s for s in ("PLANTFAMILY", "Plantfamily", "PAT-REAL-0001", "Plantreferrer", "Watson") if s.encode() in stored] == []
    # Without de-identification (--no-deid) a report is kept as typed.
    plain = Engine(CaseStore(f"sqlite:///{tmp_path / 'plain.db'}"))
    plain_uid = plain.ingest([source]).studies[0]
    assert plain.save_edit(plain_uid, typed, author="dr_edit").text == typed
