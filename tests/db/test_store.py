"""The case store: hierarchy, idempotent ingest, all-or-nothing transactions, report versions,
embeddings, the audit trail, migrations and SQLite settings."""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import stat
from datetime import timezone

import numpy as np
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, select, text
from sqlalchemy.orm import Session

from db import write
from db.connect import alembic_config
from db.models import Base, Event, Report
from db.store import (
    CaseStore,
    EmbeddingInput,
    IngestSummary,
    InstanceInput,
    ReportInput,
    StoreError,
)

TABLES = ("patients", "studies", "series", "instances", "reports", "embeddings", "events")
STUDY_A, STUDY_B = "1.2.3.1", "1.2.3.2"
REPORT_A = "FINDINGS: Small left pleural effusion. IMPRESSION: Effusion."
REPORT_B = "FINDINGS: Normal chest."


def sha(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def instance(sop: str, study: str, series: str, patient: str, modality: str, body_part: str,
             **extra) -> InstanceInput:
    metadata = {"modality": modality, "body_part": body_part, "view": "PA", "plane": "", "study_date": "20240131",
                "study_description": f"study {study}", "series_description": f"series {series}",
                "rows": 64, "columns": 64, "frames": 1, "pixel_spacing": [0.5, 0.5]}
    return InstanceInput(sop, study, series, patient, f"/archive/{sop}.dcm", sha(sop), metadata, **extra)


def archive() -> list[InstanceInput]:
    """2 studies, 3 series, 5 instances."""
    return [
        instance("1.1", STUDY_A, "1.2.1", "PSEUDO-1", "CT", "CHEST", preview_png=b"\x89PNG-1.1"),
        instance("1.2", STUDY_A, "1.2.1", "PSEUDO-1", "CT", "CHEST"),
        instance("1.3", STUDY_A, "1.2.2", "PSEUDO-1", "CT", "ABDOMEN"),
        instance("1.4", STUDY_B, "1.2.3", "PSEUDO-2", "CR", "CHEST"),
        instance("1.5", STUDY_B, "1.2.3", "PSEUDO-2", "CR", "CHEST"),
    ]


def reports() -> list[ReportInput]:
    return [ReportInput(STUDY_A, REPORT_A, [("FINDINGS", "Small left pleural effusion."), ("IMPRESSION", "Effusion.")]),
            ReportInput(STUDY_B, REPORT_B, [("FINDINGS", "Normal chest.")])]


def vec(seed: int, dim: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32)


def counts(store: CaseStore) -> dict[str, int]:
    with store._engine.connect() as conn:
        return {table: conn.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar_one() for table in TABLES}


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'store' / 'cases.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path) -> str:
    """Each store test runs on SQLite and, where a server is given, on PostgreSQL through the same code.

    CI starts one with scripts/start_test_postgres.sh and sets MEDCM_TEST_POSTGRES_URL.
    """
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store' / 'cases.db'}"
    return request.getfixturevalue("postgres_url")  # skips without a server; emptied after the test


@pytest.fixture
def store(url):
    with CaseStore(url) as opened:
        yield opened


@pytest.fixture
def filled(store):
    store.ingest(archive(), reports(), user="importer")
    return store


# ------------------------------------------------------------------ ingest
def test_ingest_creates_the_hierarchy(store):
    summary = store.ingest(archive(), reports())
    assert summary == IngestSummary(added_instances=5, skipped_instances=0, added_reports=2, added_embeddings=0)
    assert counts(store) == {"patients": 2, "studies": 2, "series": 3, "instances": 5, "reports": 2,
                             "embeddings": 0, "events": 1}
    study = store.get_study(STUDY_A)
    assert (study.patient_id, study.study_date, study.description, study.status) == (
        "PSEUDO-1", "20240131", f"study {STUDY_A}", "signed")
    assert study.modalities == ("CT",) and study.body_parts == ("ABDOMEN", "CHEST")
    assert [(i.sop_instance_uid, i.series_uid) for i in study.instances] == [
        ("1.1", "1.2.1"), ("1.2", "1.2.1"), ("1.3", "1.2.2")]
    first = study.instances[0]
    assert first.metadata == archive()[0].metadata and first.content_sha256 == sha("1.1")
    assert (first.modality, first.body_part, first.path) == ("CT", "CHEST", "/archive/1.1.dcm")
    assert first.study_uid == STUDY_A
    assert study.created_at.tzinfo == timezone.utc
    assert store.preview("1.1") == b"\x89PNG-1.1" and store.preview("1.2") is None
    assert store.study_of_instance("1.4") == STUDY_B
    assert store.latest_report(STUDY_B).sections == [("FINDINGS", "Normal chest.")]


def test_reingesting_the_same_input_changes_nothing(filled):
    before = counts(filled)
    summary = filled.ingest(archive(), reports())
    assert summary == IngestSummary(added_instances=0, skipped_instances=5, added_reports=0, added_embeddings=0)
    assert counts(filled) == {**before, "events": before["events"] + 1}
    assert [r.version for r in filled.report_versions(STUDY_A)] == [1]


def test_changed_content_under_a_known_uid_is_refused_and_nothing_is_written(filled):
    before = counts(filled)
    changed = instance("1.2", STUDY_A, "1.2.1", "PSEUDO-1", "CT", "CHEST")
    changed = InstanceInput(**{**changed.__dict__, "content_sha256": sha("other bytes")})
    new = instance("9.1", "1.2.3.9", "1.2.9", "PSEUDO-9", "MR", "HEAD")
    with pytest.raises(StoreError, match=r"instance 1\.2: content_sha256"):
        filled.ingest([new, changed])
    assert counts(filled) == before
    with pytest.raises(StoreError, match="9.1"):
        filled.study_of_instance("9.1")
    with pytest.raises(StoreError, match="1.2.3.9"):
        filled.get_study("1.2.3.9")


def test_a_late_error_leaves_no_row_behind(store):
    embeddings = [EmbeddingInput("image", "1.1", "m", vec(1)), EmbeddingInput("image", "no-such-uid", "m", vec(2))]
    with pytest.raises(StoreError, match="no-such-uid"):
        store.ingest(archive(), reports(), embeddings)
    assert set(counts(store).values()) == {0}


def test_an_unexpected_exception_after_the_writes_rolls_everything_back(store, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(write, "log", fail)  # the audit event is the last write of an ingest
    with pytest.raises(RuntimeError, match="disk on fire"):
        store.ingest(archive(), reports(), [EmbeddingInput("image", "1.1", "m", vec(1))])
    assert set(counts(store).values()) == {0}


def test_ingest_refuses_inconsistent_hierarchies_and_bad_values(filled):
    before = counts(filled)
    other_patient = instance("2.1", STUDY_A, "1.2.1", "PSEUDO-7", "CT", "CHEST")
    other_study = instance("2.2", STUDY_B, "1.2.1", "PSEUDO-2", "CT", "CHEST")
    bad_sha = InstanceInput("2.3", STUDY_B, "1.2.3", "PSEUDO-2", "/x", "abc", {})
    bad_json = InstanceInput("2.4", STUDY_B, "1.2.3", "PSEUDO-2", "/x", sha("2.4"), {"x": float("nan")})
    cases = [([other_patient], "PSEUDO-7"), ([other_study], "series 1.2.1"), ([bad_sha], "2.3: content_sha256"),
             ([bad_json], "2.4: metadata")]
    for items, message in cases:
        with pytest.raises(StoreError, match=message) as err:
            filled.ingest(items)
        assert "\n" not in str(err.value)
    with pytest.raises(StoreError, match="1.2.3.404"):
        filled.ingest([], [ReportInput("1.2.3.404", "text", [])])
    with pytest.raises(StoreError, match="status"):
        filled.ingest([], [ReportInput(STUDY_A, "new text", [], status="final")])
    assert counts(filled) == before


def test_an_instance_without_patient_id_gets_no_patient_row(store):
    store.ingest([instance("3.1", "1.2.3.3", "1.2.4", "", "US", "")])
    assert store.get_study("1.2.3.3").patient_id == ""
    assert counts(store)["patients"] == 0


# ---------------------------------------------------------------- reports
def test_report_versions_keep_their_authors_through_drafts_signing_and_amendments(filled):
    v1 = filled.latest_report(STUDY_A)
    assert (v1.version, v1.status, v1.author, v1.signed_by, v1.source) == (1, "signed", "archive", "archive", "ingest")

    v2 = filled.save_draft(STUDY_A, "draft one", [("FINDINGS", "draft one")], author="medcm")
    assert (v2.version, v2.status, v2.source) == (2, "draft", "draft")
    assert filled.get_study(STUDY_A).status == "signed"  # the model's draft changes no status
    redraft = filled.save_draft(STUDY_A, "draft one b", [], author="medcm")  # the model over its own draft
    assert (redraft.id, redraft.version) == (v2.id, 2)
    v3 = filled.save_draft(STUDY_A, "edit one", [("FINDINGS", "edit one")], author="dr.a", source="edit")
    assert (v3.version, v3.author, v3.source) == (3, "dr.a", "edit")  # the machine's text stays version 2
    assert filled.get_study(STUDY_A).status == "drafted"  # a person's draft
    v3b = filled.save_draft(STUDY_A, "edit two", [], author="dr.a", source="edit")
    assert (v3b.id, v3b.version, v3b.text) == (v3.id, 3, "edit two")  # their own draft: updated in place

    signed = filled.sign_report(STUDY_A, "final", [("FINDINGS", "final")], signer="dr.a")
    assert (signed.id, signed.version, signed.status, signed.signed_by, signed.author) == (v3.id, 3, "signed", "dr.a",
                                                                                           "dr.a")
    assert signed.signed_at is not None and signed.signed_at.tzinfo == timezone.utc
    assert filled.get_study(STUDY_A).status == "signed"
    retry = filled.sign_report(STUDY_A, "final", [("FINDINGS", "final")], signer="dr.a")  # a client's retry
    assert (retry.id, retry.version, retry.signed_at) == (signed.id, 3, signed.signed_at)
    assert filled.events(kind="sign")[0]["detail"]["action"] == "repeat"

    amended = filled.sign_report(STUDY_A, "amended", [("FINDINGS", "amended")], signer="dr.b")
    assert (amended.version, amended.status, amended.source, amended.author) == (4, "signed", "sign", "dr.b")
    v5 = filled.save_draft(STUDY_A, "after signing", [], author="dr.a", source="edit")  # never over a signed one
    assert (v5.version, v5.status) == (5, "draft")
    over_other = filled.sign_report(STUDY_A, "dr.b signs", [], signer="dr.b")  # over dr.a's draft: a new version
    assert (over_other.version, over_other.author) == (6, "dr.b")

    versions = filled.report_versions(STUDY_A)
    assert [(r.version, r.status, r.author, r.text) for r in versions] == [
        (1, "signed", "archive", REPORT_A), (2, "draft", "medcm", "draft one b"), (3, "signed", "dr.a", "final"),
        (4, "signed", "dr.b", "amended"), (5, "draft", "dr.a", "after signing"), (6, "signed", "dr.b", "dr.b signs")]
    assert filled.latest_report(STUDY_A, signed_only=True).version == 6
    # Re-ingesting the archive report does not bury the clinician's versions under it ...
    assert filled.ingest([], reports()).added_reports == 0
    # ... nor does a new archive text: it is kept out, named, and kept in the audit trail.
    summary = filled.ingest([], [ReportInput(STUDY_A, "FINDINGS: From the archive.", [])], user="importer")
    assert (summary.added_reports, summary.kept_out) == (0, (STUDY_A,))
    assert [r.version for r in filled.report_versions(STUDY_A)] == [1, 2, 3, 4, 5, 6]
    event = filled.events(kind="ingest", user="importer")[0]  # the newest
    assert event["detail"]["reports_kept_out_by_signature"] == {STUDY_A: "FINDINGS: From the archive."}


def test_a_signature_and_its_embedding_are_written_together(filled):
    vector = np.ones(4, np.float32) / 2
    report = filled.sign_report(STUDY_B, "FINDINGS: Clear.", [], "dr.b", EmbeddingInput("report", STUDY_B, "m1", vector))
    matrix = filled.embedding_matrix("report", "m1")
    assert list(matrix.keys) == [STUDY_B] and report.version == 2
    before = filled.report_versions(STUDY_A)
    with pytest.raises(StoreError):
        filled.sign_report(STUDY_A, "FINDINGS: New.", [], "dr.b",
                           EmbeddingInput("report", STUDY_A, "m1", np.full(4, np.nan, np.float32)))
    assert filled.report_versions(STUDY_A) == before  # no signature without its vector
    with pytest.raises(StoreError, match="expected \\('report'"):
        filled.sign_report(STUDY_A, "x", [], "dr.b", EmbeddingInput("report", STUDY_B, "m1", vector))
    again = filled.sign_report(STUDY_B, "FINDINGS: Clear.", [], "dr.b", EmbeddingInput("report", STUDY_B, "m2", vector))
    assert again.id == report.id and list(filled.embedding_matrix("report", "m2").keys) == [STUDY_B]


def test_a_new_archive_report_text_becomes_the_next_version(filled):
    assert filled.ingest([], [ReportInput(STUDY_B, "FINDINGS: Revised.", [])]).added_reports == 1
    assert [(r.version, r.text) for r in filled.report_versions(STUDY_B)] == [(1, REPORT_B), (2, "FINDINGS: Revised.")]


def test_signing_needs_a_known_study_a_text_and_a_signer(filled):
    for study_uid, report_text, signer, message in [
        ("1.2.3.404", "text", "dr.b", "1.2.3.404"),
        (STUDY_A, "  ", "dr.b", "sign_report text"),
        (STUDY_A, "text", "", "sign_report signer"),
    ]:
        with pytest.raises(StoreError, match=message):
            filled.sign_report(study_uid, report_text, [], signer)
    assert [r.version for r in filled.report_versions(STUDY_A)] == [1]


def test_a_signed_row_cannot_be_changed_even_through_the_orm(filled):
    with Session(filled._engine) as s, s.begin():
        report = s.scalars(select(Report)).first()
        report.text = "tampered"
        with pytest.raises(StoreError, match="signed"):
            s.flush()
    with Session(filled._engine) as s, s.begin():
        s.delete(s.scalars(select(Report)).first())
        with pytest.raises(StoreError, match="never deleted"):
            s.flush()
    assert filled.latest_report(STUDY_A).text == REPORT_A


def test_a_study_without_a_report_signs_version_one(store):
    store.ingest(archive())
    assert store.get_study(STUDY_B).status == "new" and store.latest_report(STUDY_B) is None
    report = store.sign_report(STUDY_B, "FINDINGS: Clear.", [("FINDINGS", "Clear.")], signer="dr.b")
    assert (report.version, report.status) == (1, "signed")


def test_a_machine_draft_leaves_a_study_new_until_a_person_drafts_or_signs(store):
    store.ingest(archive())
    draft = store.save_draft(STUDY_B, "FINDINGS: Suggested.", [("FINDINGS", "Suggested.")], author="medcm-draft",
                             user="dicom:PACS")
    assert store.get_study(STUDY_B).status == "new"  # stored and retrievable, but nobody has worked on it
    assert store.latest_report(STUDY_B) == draft and (draft.source, draft.status) == ("draft", "draft")
    assert {study.study_uid for study in store.list_studies(status="new")} == {STUDY_A, STUDY_B}
    assert store.list_studies(status="drafted") == []
    store.save_draft(STUDY_B, "FINDINGS: Suggested again.", [], author="medcm-draft")  # the model re-drafts
    assert store.get_study(STUDY_B).status == "new"
    store.save_draft(STUDY_B, "FINDINGS: Checked.", [], author="dr.b", source="edit")
    assert store.get_study(STUDY_B).status == "drafted"
    store.sign_report(STUDY_B, "FINDINGS: Checked.", [], signer="dr.b")
    assert store.get_study(STUDY_B).status == "signed"


def _machine_drafted_at_0003(url: str) -> None:
    """A store at revision 0003 whose code marked a study "drafted" for the model's draft: study 9.1 has only a
    machine draft, 9.2 a person's draft under it, 9.3 a person's draft on top, 9.4 a signed version under one."""
    engine = create_engine(url)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0003")
        versions = {"9.1": [("draft", "draft")], "9.2": [("draft", "edit"), ("draft", "draft")],
                    "9.3": [("draft", "draft"), ("draft", "edit")], "9.4": [("signed", "sign"), ("draft", "draft")]}
        for study_id, (uid, rows) in enumerate(versions.items(), start=1):
            conn.execute(text("INSERT INTO studies (id, study_uid, patient_id, study_date, description, created_at,"
                              " status) VALUES (:id, :uid, NULL, '', '', '2026-01-01 10:00:00.000000', 'drafted')"),
                         {"id": study_id, "uid": uid})
            for version, (status, source) in enumerate(rows, start=1):
                conn.execute(text(
                    "INSERT INTO reports (study_id, version, text, sections_json, status, author, created_at,"
                    " signed_at, signed_by, source) VALUES (:study, :version, :text, '[]', :status, 'someone',"
                    " '2026-01-01 10:00:00.000000', NULL, NULL, :source)"),
                    {"study": study_id, "version": version, "text": f"v{version}", "status": status, "source": source})
    engine.dispose()


def test_migration_0005_sets_machine_drafted_studies_back_to_what_a_person_did(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    _machine_drafted_at_0003(url)
    with CaseStore(url) as store:  # opening migrates to the head
        assert {uid: store.get_study(uid).status for uid in ("9.1", "9.2", "9.3", "9.4")} == {
            "9.1": "new", "9.2": "drafted", "9.3": "drafted", "9.4": "signed"}
        assert store.latest_report("9.1").source == "draft"  # the draft itself stays
    engine = create_engine(url)
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0003")
        rows = dict(conn.execute(text("SELECT study_uid, status FROM studies")).tuples().all())
    engine.dispose()
    assert rows == {"9.1": "drafted", "9.2": "drafted", "9.3": "drafted", "9.4": "drafted"}


# ----------------------------------------------------------------- priors
def test_prior_studies_are_the_same_patients_other_studies_newest_first(store):
    store.ingest([*archive(), instance("1.6", "2.0", "2.0.1", "PSEUDO-1", "CR", "CHEST"),
                  instance("1.7", "3.0", "3.0.1", "", "CR", "CHEST")])
    store.ingest([], [ReportInput("2.0", "FINDINGS: Earlier.", [])])
    store.save_draft("2.0", "FINDINGS: A newer draft.", [], author="dr.a", source="edit")
    with store._engine.begin() as conn:  # study dates as ingest stores them (de-identified: shifted)
        conn.execute(text("UPDATE studies SET study_date = '20240131' WHERE study_uid = :a"), {"a": STUDY_A})
        conn.execute(text("UPDATE studies SET study_date = '20230105' WHERE study_uid = '2.0'"))
    (prior,) = [(study.study_uid, study.study_date, study.status, study.modalities, report.text, report.version)
                for study, report in store.prior_studies(STUDY_A)]
    assert prior == ("2.0", "20230105", "drafted", ("CR",), "FINDINGS: Earlier.", 1)  # the latest *signed* one
    assert [(study.study_uid, report) for study, report in store.prior_studies("2.0")][0][0] == STUDY_A
    assert store.prior_studies(STUDY_B) == []  # PSEUDO-2 has one study
    assert store.prior_studies("3.0") == []  # no patient id: no priors
    with pytest.raises(StoreError, match="not in the store"):
        store.prior_studies("4.0")


def test_studies_carry_the_patients_sex_and_age_band_and_the_latest_report_text(store):
    first = instance("1.1", STUDY_A, "1.2.1", "PSEUDO-1", "CT", "CHEST")
    first.metadata.update(patient_sex="F", patient_age_band="60–69 y")
    store.ingest([first, *archive()[1:]], reports())
    store.save_draft(STUDY_A, "FINDINGS: Redrafted.", [], author="dr.a", source="edit")
    views = {view.study_uid: view for view in store.list_studies()}
    assert (views[STUDY_A].patient_sex, views[STUDY_A].patient_age) == ("F", "60–69 y")
    assert (views[STUDY_B].patient_sex, views[STUDY_B].patient_age) == ("", "")  # not recorded
    assert store.get_study(STUDY_A).patient_age == "60–69 y"
    assert store.latest_report_texts([STUDY_A, STUDY_B, "9.9"]) == {STUDY_A: "FINDINGS: Redrafted.",
                                                                    STUDY_B: REPORT_B}


# ----------------------------------------------------------------- events
def test_events_record_who_did_what(filled):
    filled.save_draft(STUDY_A, "draft", [], author="medcm")
    filled.save_draft(STUDY_A, "edited", [], author="dr.a", source="edit")
    filled.sign_report(STUDY_A, "final", [], signer="dr.b")
    filled.log_event("view", "dr.c", STUDY_A, {"screen": "viewer"})
    trail = filled.events(study_uid=STUDY_A)
    assert [(e["kind"], e["user"]) for e in trail] == [("view", "dr.c"), ("sign", "dr.b"), ("edit", "dr.a"),
                                                        ("draft", "medcm")]
    assert trail[0]["detail"] == {"screen": "viewer"} and trail[0]["time"].tzinfo == timezone.utc
    assert trail[1]["detail"] == {"version": 4, "report_id": trail[1]["detail"]["report_id"], "amendment": False,
                                  "action": "new version"}  # dr.b signs over dr.a's draft (version 3)
    (ingest,) = filled.events(kind="ingest")
    assert ingest["user"] == "importer" and ingest["study_uid"] is None  # two studies in one call
    assert ingest["detail"] == {"added_instances": 5, "skipped_instances": 0, "added_reports": 2,
                                "added_embeddings": 0, "study_uids": [STUDY_A, STUDY_B]}
    assert len(filled.events(limit=2)) == 2
    with pytest.raises(StoreError, match="log_event detail"):
        filled.log_event("export", "dr.c", detail={"when": object()})


# ------------------------------------------------------------- embeddings
def test_image_embedding_matrix_keys_vectors_and_meta(filled):
    uids = [i.sop_instance_uid for i in archive()]
    vectors = {uid: vec(n) for n, uid in enumerate(uids)}
    written = filled.add_embeddings([EmbeddingInput("image", uid, "m1", vectors[uid]) for uid in uids])
    filled.add_embeddings([EmbeddingInput("image", "1.1", "m2", vec(99, dim=4))])
    assert written == 5 and filled.count_embeddings("image", "m1") == 5 and filled.count_embeddings("image", "m2") == 1

    matrix = filled.embedding_matrix("image", "m1")
    assert matrix.keys == uids and matrix.vectors.dtype == np.float32 and matrix.vectors.shape == (5, 8)
    assert np.array_equal(matrix.vectors, np.stack([vectors[uid] for uid in uids]))
    assert matrix.meta[3] == {"study_uid": STUDY_B, "sop_instance_uid": "1.4", "modality": "CR", "body_part": "CHEST"}
    assert [m["body_part"] for m in matrix.meta] == ["CHEST", "CHEST", "ABDOMEN", "CHEST", "CHEST"]

    replacement = vec(123)
    filled.add_embeddings([EmbeddingInput("image", "1.1", "m1", replacement)])  # derived data: replaced
    matrix = filled.embedding_matrix("image", "m1")
    assert filled.count_embeddings("image", "m1") == 5 and np.array_equal(matrix.vectors[0], replacement)
    assert counts(filled)["embeddings"] == 6

    empty = filled.embedding_matrix("image", "unknown-model")
    assert empty.keys == [] and empty.vectors.shape == (0, 0) and filled.count_embeddings("image", "unknown-model") == 0


def test_report_embeddings_follow_the_latest_version(store):
    first_a, first_b = vec(1), vec(2)
    summary = store.ingest(archive(), reports(), [EmbeddingInput("report", STUDY_A, "m", first_a),
                                                  EmbeddingInput("report", STUDY_B, "m", first_b)])
    assert summary.added_embeddings == 2
    store.sign_report(STUDY_A, "amended", [], signer="dr.b")  # v2, not embedded yet
    matrix = store.embedding_matrix("report", "m")
    assert matrix.keys == [STUDY_A, STUDY_B] and matrix.meta[0]["report_version"] == "1"
    assert np.array_equal(matrix.vectors, np.stack([first_a, first_b]))
    assert matrix.meta[0] == {"study_uid": STUDY_A, "modality": "CT", "body_part": "ABDOMEN,CHEST",
                              "report_version": "1"}

    second_a = vec(3)
    store.add_embeddings([EmbeddingInput("report", STUDY_A, "m", second_a)])
    matrix = store.embedding_matrix("report", "m")
    assert matrix.meta[0]["report_version"] == "2" and np.array_equal(matrix.vectors[0], second_a)
    assert store.count_embeddings("report", "m") == 2 and counts(store)["embeddings"] == 3


def test_embedding_inputs_are_checked(filled):
    filled.add_embeddings([EmbeddingInput("image", "1.1", "m", vec(1))])
    before = counts(filled)
    for item, message in [
        (EmbeddingInput("image", "1.2", "m", vec(2, dim=5)), "dim 5"),
        (EmbeddingInput("image", "1.2", "m", np.full(8, np.nan, np.float32)), "finite"),
        (EmbeddingInput("image", "1.2", "m", np.zeros((2, 4), np.float32)), "1-D"),
        (EmbeddingInput("text", "1.2", "m", vec(2)), "kind"),
        (EmbeddingInput("report", "1.2.3.404", "m", vec(2)), "1.2.3.404"),
    ]:
        with pytest.raises(StoreError, match=message):
            filled.add_embeddings([EmbeddingInput("image", "1.3", "m", vec(3)), item])
    assert counts(filled) == before
    filled.ingest([instance("4.1", "1.2.3.4", "1.2.5", "P4", "MR", "KNEE")])
    with pytest.raises(StoreError, match="no report"):
        filled.add_embeddings([EmbeddingInput("report", "1.2.3.4", "m", vec(4))])


# ---------------------------------------------------------------- studies
def test_list_studies_newest_first_with_a_status_filter(filled):
    filled.ingest([instance("5.1", "1.2.3.5", "1.2.6", "P5", "MR", "KNEE")])
    listed = filled.list_studies()
    assert [s.study_uid for s in listed] == ["1.2.3.5", STUDY_B, STUDY_A]
    assert listed[0].instances == () and listed[0].modalities == ("MR",) and listed[0].status == "new"
    assert [s.study_uid for s in filled.list_studies(status="signed")] == [STUDY_B, STUDY_A]
    assert len(filled.list_studies(limit=1)) == 1
    with pytest.raises(StoreError, match="status"):
        filled.list_studies(status="done")


# ------------------------------------------------------- files and schema
def test_a_second_store_on_the_same_file_sees_the_data(filled, url):
    with CaseStore(url) as second:
        assert second.get_study(STUDY_A).instances[2].sop_instance_uid == "1.3"
        second.save_draft(STUDY_B, "draft", [], author="dr.a")
    assert filled.latest_report(STUDY_B).text == "draft"


def test_sqlite_foreign_keys_and_wal(sqlite_url):
    filled = CaseStore(sqlite_url)
    filled.ingest(archive(), reports(), user="importer")
    url = sqlite_url
    with filled._engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() > 0
    path = url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as raw:  # WAL is a property of the file: every client gets it
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_new_sqlite_store_and_its_wal_are_private_to_their_owner(tmp_path):
    """Issue 18: cases.db and its WAL were world-readable (mode 644) under the usual umask."""
    path = tmp_path / "new" / "cases.db"
    old = os.umask(0o022)
    try:
        with CaseStore(f"sqlite:///{path}") as store:
            store.ingest(archive())
            wal = path.with_name("cases.db-wal")
            assert wal.exists()
            assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in (path, wal)} == {"cases.db": 0o600,
                                                                                       "cases.db-wal": 0o600}
    finally:
        os.umask(old)
    shared = tmp_path / "shared.db"
    shared.touch(mode=0o640)  # an existing file keeps the mode its owner gave it
    CaseStore(f"sqlite:///{shared}").close()
    assert stat.S_IMODE(shared.stat().st_mode) == 0o640


def test_report_text_a_person_writes_is_bounded_and_printable(filled):
    """Issue 18: a 10 MB report was accepted, and NUL and ESC reached the SR."""
    before = filled.report_versions(STUDY_A)
    with pytest.raises(StoreError, match=r"^sign_report text: 100001 characters; expected at most 100000$"):
        filled.sign_report(STUDY_A, "x" * 100_001, [], signer="dr.b")
    with pytest.raises(StoreError, match=r"^save_draft text: control character U\+001B at position 9; expected"):
        filled.save_draft(STUDY_A, "FINDINGS:\x1b[31m red", [], author="dr.a")
    with pytest.raises(StoreError, match="control character U\\+0000"):
        filled.sign_report(STUDY_A, "Normal.\x00", [], signer="dr.b")
    assert filled.report_versions(STUDY_A) == before  # nothing stored
    ok = filled.save_draft(STUDY_A, "FINDINGS:\tNormal.\r\nIMPRESSION: Normal.", [], author="dr.a")
    assert ok.text.endswith("IMPRESSION: Normal.")


def test_an_in_memory_store_works(tmp_path):
    with CaseStore("sqlite://") as store:
        store.ingest(archive())
        assert len(store.list_studies()) == 2


def test_the_models_match_the_migrations(store):
    with store._engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []


def test_a_store_made_at_revision_0001_opens_upgraded_with_its_data(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0001")
        # Rows as 0001 defines them (raw SQL: the models may have moved on since).
        conn.execute(text("INSERT INTO patients (id, pseudonym) VALUES (1, 'PSEUDO-1')"))
        conn.execute(text(
            "INSERT INTO studies (id, study_uid, patient_id, study_date, description, created_at, status)"
            " VALUES (1, '9.9', 1, '20200101', 'old study', '2020-01-01 10:00:00.000000', 'signed')"))
        conn.execute(text(
            "INSERT INTO series (id, series_uid, study_id, modality, body_part, description)"
            " VALUES (1, '9.9.1', 1, 'CT', 'HEAD', '')"))
        conn.execute(text(
            "INSERT INTO instances (id, sop_instance_uid, series_id, path, content_sha256, metadata_json, modality,"
            " body_part, preview_png, created_at) VALUES (1, '9.9.1.1', 1, '/old.dcm', :sha, '{\"modality\": \"CT\"}',"
            " 'CT', 'HEAD', NULL, '2020-01-01 10:00:00.000000')"), {"sha": sha("old")})
        conn.execute(text(
            "INSERT INTO reports (id, study_id, version, text, sections_json, status, author, created_at, signed_at,"
            " signed_by, source) VALUES (1, 1, 1, 'old report', '[[\"FINDINGS\", \"old\"]]', 'signed', 'archive',"
            " '2020-01-01 10:00:00.000000', '2020-01-01 10:00:00.000000', 'archive', 'ingest')"))
    engine.dispose()

    with CaseStore(url) as store:
        study = store.get_study("9.9")
        assert (study.patient_id, study.description, study.instances[0].metadata) == ("PSEUDO-1", "old study",
                                                                                     {"modality": "CT"})
        assert store.latest_report("9.9").sections == [("FINDINGS", "old")]
        assert study.created_at.tzinfo == timezone.utc
        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        with store._engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == head


def test_the_migrations_downgrade_and_upgrade_again(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'roundtrip.db'}")
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "head")
        command.downgrade(alembic_config(conn), "base")
        assert conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'table'").scalars().all() == [
            "alembic_version"]
        command.upgrade(alembic_config(conn), "head")
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    engine.dispose()


def test_opening_a_store_logs_nothing_at_info(url, caplog):
    caplog.set_level(logging.INFO)
    CaseStore(url).close()  # create and migrate
    CaseStore(url).close()  # open at head
    assert [r.getMessage() for r in caplog.records] == []  # a command line's stderr stays clean


def test_a_closed_store_refuses_work(url):
    store = CaseStore(url)
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.list_studies()
    with pytest.raises(StoreError, match="url"):
        CaseStore("not a url")


def test_embedding_stamp_changes_on_add_and_on_replace(filled):
    empty = filled.embedding_stamp("image", "m")
    assert empty == "0:-"
    filled.add_embeddings([EmbeddingInput("image", "1.1", "m", vec(1))])
    added = filled.embedding_stamp("image", "m")
    assert added.startswith("1:") and added != empty
    filled.add_embeddings([EmbeddingInput("image", "1.1", "m", vec(2))])  # replaced: same count
    replaced = filled.embedding_stamp("image", "m")
    assert replaced.startswith("1:") and replaced != added
    assert filled.embedding_stamp("image", "other-model") == "0:-"


def test_instance_hashes_report_only_stored_instances(filled):
    stored = filled.instance_hashes(["1.1", "1.2", "no-such-uid"])
    assert set(stored) == {"1.1", "1.2"}
    assert stored["1.1"] == filled.get_study(STUDY_A).instances[0].content_sha256
    assert filled.instance_hashes([]) == {}


# --------------------------------------------------------------- accounts
def test_accounts_authenticate_by_role_and_disabled_ones_cannot(store):
    store.add_user("dr.a", "clinician", "correct horse", actor="cli")
    store.add_user("boss", "admin", "battery staple")
    assert store.authenticate("dr.a", "correct horse") == "clinician"
    assert store.authenticate("dr.a", "wrong password") is None
    assert store.authenticate("nobody", "correct horse") is None
    assert (store.user_role("dr.a"), store.user_role("nobody"), store.user_role(None)) == ("clinician", None, None)
    store.set_password("dr.a", "a new secret")
    assert store.authenticate("dr.a", "correct horse") is None and store.authenticate("dr.a", "a new secret")
    store.set_role("dr.a", "viewer")
    store.set_disabled("boss")
    assert store.authenticate("boss", "battery staple") is None and store.user_role("boss") is None
    assert [(u.name, u.role, u.disabled) for u in store.users()] == [("boss", "admin", True), ("dr.a", "viewer", False)]
    assert store.users()[0].created_at.tzinfo == timezone.utc
    trail = store.events(kind="user")
    assert [e["detail"]["action"] for e in trail] == ["disable", "role", "password", "add", "add"]
    assert trail[-1]["user"] == "cli" and trail[-1]["detail"] == {"action": "add", "name": "dr.a", "role": "clinician"}
    assert all("secret" not in str(e["detail"]) and "horse" not in str(e["detail"]) for e in trail)


def test_accounts_refuse_bad_names_roles_passwords_and_duplicates(store):
    store.add_user("dr.a", "clinician", "long enough")
    for args, message in [(("dr.a", "viewer", "long enough"), "already exists"),
                          (("dr b", "viewer", "long enough"), "user name"),
                          (("", "viewer", "long enough"), "user name"),
                          (("dr.c", "surgeon", "long enough"), "role 'surgeon'"),
                          (("dr.c", "viewer", "short"), "got 5 characters, expected 8")]:
        with pytest.raises(StoreError, match=message):
            store.add_user(*args)
    with pytest.raises(StoreError, match="no such account"):
        store.set_password("nobody", "long enough")
    with pytest.raises(StoreError, match="role"):
        store.set_role("dr.a", "root")
    assert [u.name for u in store.users()] == ["dr.a"]


def test_the_database_refuses_a_role_outside_the_check(store):
    with pytest.raises(Exception, match="(?i)check"), store._engine.begin() as conn:
        conn.execute(text("INSERT INTO users (name, role, password_hash, created_at, disabled)"
                          " VALUES ('x', 'root', 'h', '2020-01-01 00:00:00', false)"))


def test_a_draft_requested_by_a_person_is_logged_as_theirs(filled):
    report = filled.save_draft(STUDY_A, "draft", [], author="medcm-draft", user="dr.a")
    assert report.author == "medcm-draft"
    (event,) = filled.events(kind="draft")
    assert event["user"] == "dr.a" and filled.events(user="dr.a") == [event]


def test_the_audit_trail_cannot_be_changed_even_with_raw_sql(filled):
    filled.log_event("view", "dr.c", STUDY_A)
    before = filled.events()
    for sql in ("UPDATE events SET kind = 'tampered'", "DELETE FROM events",
                f"UPDATE events SET \"user\" = 'someone else' WHERE id = {before[0]['id']}"):
        with pytest.raises(Exception, match="append-only"), filled._engine.begin() as conn:
            conn.execute(text(sql))
    with Session(filled._engine) as s, s.begin():
        s.delete(s.scalars(select(Event)).first())
        with pytest.raises(StoreError, match="append-only"):
            s.flush()
    assert filled.events() == before
