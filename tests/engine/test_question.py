"""A study's clinical question in the engine: the blend rule, retrieval moving toward a matching report,
abstention and the image-only signals unchanged, and the question scrubbed before it is stored."""

from __future__ import annotations

import numpy as np
import pytest

from db.store import CaseStore, StoreError
from medcm.config import QuestionConfig
from medcm.dicom.deid import DeidConfig
from medcm.engine.facade import Engine
from medcm.engine.question import blend_query, blend_rows

N_POOL = 12


# --- the rule --------------------------------------------------------------------------------------------------------
def test_blend_is_the_normalised_weighted_sum_of_the_normalised_vectors():
    image, text = np.array([3.0, 0.0, 0.0]), np.array([0.0, 0.0, 2.0])
    np.testing.assert_allclose(blend_query(image, text, 0.0), [1, 0, 0])
    np.testing.assert_allclose(blend_query(image, text, 1.0), [0, 0, 1])
    np.testing.assert_allclose(blend_query(image, text, 0.25), np.array([0.75, 0, 0.25]) / np.hypot(0.75, 0.25),
                               rtol=1e-6)
    np.testing.assert_allclose(blend_query(image, None, 0.5), [1, 0, 0])  # no question: the image query
    np.testing.assert_allclose(blend_query(image, -image, 0.5), [1, 0, 0])  # cancelling vectors keep the image
    rows = blend_rows(np.stack([image, image]), np.stack([text, text]), np.array([True, False]), 1.0)
    np.testing.assert_allclose(rows, [[0, 0, 1], [3, 0, 0]])


@pytest.mark.parametrize(("image", "text", "weight", "message"), [
    ([1.0, 0.0], [0.0, 1.0], 1.5, "question weight: got 1.5"),
    ([1.0, 0.0], [0.0, 1.0], -0.1, "question weight: got -0.1"),
    ([0.0, 0.0], [0.0, 1.0], 0.5, "image query: got shape"),
    ([1.0, 0.0], [np.nan, 1.0], 0.5, "question vector: got shape"),
    ([1.0, 0.0], [0.0, 1.0, 0.0], 0.5, "question vector: got shape \\(3,\\); expected the image query's \\(2,\\)"),
])
def test_bad_blends_are_refused(image, text, weight, message):
    with pytest.raises(ValueError, match=message):
        blend_query(np.array(image), np.array(text), weight)


def test_the_weight_is_checked_in_the_config():
    with pytest.raises(ValueError, match="question: got weight 2"):
        QuestionConfig(weight=2)


# --- the engine ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def engine(synthetic_pool, untrained_checkpoint):
    """12 synthetic cases with reports, an untrained model, the question at full weight."""
    root = synthetic_pool(N_POOL, "question")
    engine = Engine(CaseStore(f"sqlite:///{root / 'cases.db'}"), checkpoint=untrained_checkpoint(volume=False),
                    device="cpu", question=QuestionConfig(weight=1.0))
    assert engine.ingest([root / "pool"]).added_reports == N_POOL
    return engine


def _reports(engine) -> dict[str, str]:
    return {s.study_uid: engine.store.latest_report(s.study_uid).text for s in engine.store.list_studies()}


def _rank_of(cases, text: str) -> int:
    return next(i for i, case in enumerate(cases) if case.report == text)


def test_the_question_moves_retrieval_toward_the_report_that_answers_it(engine):
    reports = _reports(engine)
    query = sorted(reports)[0]
    image_only = engine.similar_cases_for_study(query, k=N_POOL)
    target = image_only[-1].report  # the report least like the study's image
    engine.set_clinical_question(query, target, user="dr.a")
    try:
        full = engine.similar_cases_for_study(query, k=N_POOL)
        half = Engine(engine.store, checkpoint=engine.checkpoint.path, device="cpu",
                      question=QuestionConfig(weight=0.5)).similar_cases_for_study(query, k=N_POOL)
        off = Engine(engine.store, checkpoint=engine.checkpoint.path, device="cpu",
                     question=QuestionConfig(weight=0.0)).similar_cases_for_study(query, k=N_POOL)
    finally:
        engine.set_clinical_question(query, None, user="dr.a")
    assert full[0].report == target  # the question alone: its own text is the nearest report
    assert _rank_of(half, target) <= _rank_of(image_only, target)
    assert [c.study_uid for c in off] == [c.study_uid for c in image_only]  # weight 0: the image query
    assert query not in {c.study_uid for c in full}  # the study never retrieves itself
    assert [c.study_uid for c in engine.similar_cases_for_study(query, k=N_POOL)] == [
        c.study_uid for c in image_only]  # cleared: back to the image query


def test_abstention_and_the_image_signals_keep_the_image_query(engine, monkeypatch):
    query = sorted(_reports(engine))[1]
    image_query = engine.study_query(query)
    seen: dict[str, list[np.ndarray]] = {"abstention": [], "findings": [], "rank": []}
    check, findings, rank = engine._abstainer.check, engine.checkpoint.model.image_findings, engine._anatomy.rank
    monkeypatch.setattr(engine._abstainer, "check",
                        lambda index, q, *a: seen["abstention"].append(q) or check(index, q, *a))
    monkeypatch.setattr(engine.checkpoint.model, "image_findings", lambda q: seen["findings"].append(q) or findings(q))
    monkeypatch.setattr(engine._anatomy, "rank",
                        lambda hits, c, q, *a, **kw: seen["rank"].append(q) or rank(hits, c, q, *a, **kw))
    without = engine.draft_for_study(query)
    engine.set_clinical_question(query, "Cough and fever; rule out pneumonia.", user="dr.a")
    try:
        with_question = engine.draft_for_study(query)
    finally:
        engine.set_clinical_question(query, None, user="dr.a")
    assert len(seen["abstention"]) == 2 and len(seen["findings"]) == 2 and len(seen["rank"]) == 2
    for vectors in seen.values():
        for vector in vectors:
            np.testing.assert_array_equal(vector, image_query)  # never the blend
    assert with_question.abstention == without.abstention


def test_a_mammogram_abstains_whatever_its_question_says(engine, monkeypatch):
    query = sorted(_reports(engine))[2]
    study = engine.store.get_study(query)
    monkeypatch.setattr(engine.store, "get_study", lambda uid: study if uid != query else _as_modality(study, "MG"))
    engine.set_clinical_question(query, _reports(engine)[sorted(_reports(engine))[3]], user="dr.a")  # a chest report
    try:
        draft = engine.draft_for_study(query)
    finally:
        engine.set_clinical_question(query, None, user="dr.a")
    assert draft.abstention.abstained and draft.sentences == ()


def _as_modality(study, modality: str):
    import dataclasses

    instances = tuple(dataclasses.replace(i, modality=modality, metadata={**i.metadata, "modality": modality})
                      for i in study.instances)
    return dataclasses.replace(study, instances=instances, modalities=(modality,))


def test_the_question_is_scrubbed_before_it_is_stored(synthetic_pool):
    root = synthetic_pool(1, "question-deid")
    engine = Engine(CaseStore(f"sqlite:///{root / 'cases.db'}"), device="cpu",
                    deid=DeidConfig(b"question-test-key-0123456789"))
    study_uid = engine.ingest([root / "pool"]).studies[0]
    typed = "Seen by Dr. Watson on 12/03/2021 (MRN 12345678), call 555-123-4567: cough, rule out effusion."
    view = engine.set_clinical_question(study_uid, typed, user="dr.a")
    assert view.clinical_question == "Seen by Dr. [NAME] on [DATE] (MRN [ID]), call [PHONE]: cough, rule out effusion."
    assert engine.store.clinical_question(study_uid) == view.clinical_question
    with pytest.raises(StoreError, match="clinical_question: 2001 characters"):
        engine.set_clinical_question(study_uid, "x" * 2001, user="dr.a")
    with pytest.raises(StoreError, match="not in the store"):
        engine.set_clinical_question("1.2.3.4.5", "Cough.", user="dr.a")
    assert engine.store.clinical_question(study_uid) == view.clinical_question
