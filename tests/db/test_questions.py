"""A study's clinical question in the case store: migration 0004, set/clear/read, refusals, the audit event."""

from __future__ import annotations

import pytest
from alembic import command
from sqlalchemy import create_engine, text

from db.connect import alembic_config
from db.store import MAX_QUESTION_CHARS, CaseStore, StoreError
from test_store import STUDY_A, STUDY_B, archive, reports


@pytest.fixture(params=["sqlite", "postgresql"])
def filled(request, tmp_path):
    url = (f"sqlite:///{tmp_path / 'cases.db'}" if request.param == "sqlite"
           else request.getfixturevalue("postgres_url"))  # skips without a server
    with CaseStore(url) as store:
        store.ingest(archive(), reports(), user="importer")
        yield store


def test_a_study_has_no_question_until_one_is_set_and_it_can_be_cleared(filled):
    assert filled.get_study(STUDY_A).clinical_question is None
    assert filled.clinical_question(STUDY_A) is None
    view = filled.set_clinical_question(STUDY_A, "  Cough for 3 weeks; rule out effusion.\n", user="dr.a")
    assert view.clinical_question == "Cough for 3 weeks; rule out effusion."
    assert len(view.instances) == 3  # the whole study, as get_study returns it
    assert filled.clinical_question(STUDY_A) == "Cough for 3 weeks; rule out effusion."
    assert filled.get_study(STUDY_B).clinical_question is None
    listed = {s.study_uid: s.clinical_question for s in filled.list_studies()}  # the worklist's view
    assert listed == {STUDY_A: "Cough for 3 weeks; rule out effusion.", STUDY_B: None}
    assert filled.set_clinical_question(STUDY_A, "   ", user="dr.a").clinical_question is None
    events = filled.events(study_uid=STUDY_A, kind="question")
    assert [(e["user"], e["detail"]["action"], e["detail"]["chars"]) for e in events] == [
        ("dr.a", "cleared", 0), ("dr.a", "set", 37)]
    assert all("Cough" not in str(e["detail"]) for e in events)  # the trail names the length, never the text
    assert filled.verify_audit().intact


@pytest.mark.parametrize(("study", "question", "user", "message"), [
    ("9.9.9", "Pain.", "dr.a", "study '9.9.9': not in the store"),
    (STUDY_A, "x" * (MAX_QUESTION_CHARS + 1), "dr.a", "clinical_question: 2001 characters; expected at most 2000"),
    (STUDY_A, "Pain.\x1b[31m", "dr.a", "clinical_question: control character U\\+001B"),
    (STUDY_A, "Pain.\x00", "dr.a", "clinical_question: control character U\\+0000"),
    (STUDY_A, 42, "dr.a", "clinical_question: got int"),
    (STUDY_A, "Pain.", "", "set_clinical_question user"),
])
def test_bad_input_is_refused_and_nothing_is_written(filled, study, question, user, message):
    filled.set_clinical_question(STUDY_A, "Before.", user="dr.a")
    before = filled.events(limit=5)
    with pytest.raises(StoreError, match=message):
        filled.set_clinical_question(study, question, user=user)
    assert filled.clinical_question(STUDY_A) == "Before."
    assert filled.events(limit=5) == before  # no event either


def test_at_most_the_limit_with_tabs_and_line_breaks_is_kept(filled):
    question = ("History:\tfall.\r\n" + "y" * MAX_QUESTION_CHARS)[:MAX_QUESTION_CHARS]
    assert filled.set_clinical_question(STUDY_B, question, user="dr.a").clinical_question == question.strip()


def test_a_store_at_revision_0003_upgrades_keeping_its_studies_without_a_question(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0003")
        conn.execute(text("INSERT INTO studies (id, study_uid, patient_id, study_date, description, created_at, status)"
                          " VALUES (1, '9.9', NULL, '20200101', 'old study', '2020-01-01 10:00:00.000000', 'new')"))
    engine.dispose()
    with CaseStore(url) as store:
        study = store.get_study("9.9")
        assert (study.description, study.clinical_question) == ("old study", None)
        store.set_clinical_question("9.9", "Headache.", user="dr.a")
        assert store.clinical_question("9.9") == "Headache."
