"""Abstention: the header rule, the similarity rule, and drafts of studies the archive holds nothing like."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from db.store import CaseStore
from medcm.config import AbstentionConfig
from medcm.dicom.write import write_image
from medcm.engine.abstention import (
    archive_regions,
    region_reason,
    Abstainer,
    QueryHeader,
    archive_headers,
    header_reason,
    modality_kind,
    similarity_abstention,
)
from medcm.engine.facade import Engine
from medcm.engine.ingest import read_images
from medcm.index.calibration import Calibration

N_POOL = 40  # as the app's tests: more cases than the calibration's minimum (20)

ARCHIVE = archive_headers([
    {"study_uid": "cr-1", "modality": "CR", "body_part": "CHEST"},
    {"study_uid": "ct-1", "modality": "CT", "body_part": "CHEST"},
    {"study_uid": "ct-1", "modality": "CT", "body_part": "CHEST"},
    {"study_uid": "ct-2", "modality": "CT", "body_part": "ABDOMEN"},
    {"study_uid": "mr-1", "modality": "MR", "body_part": "BRAIN"},
    {"study_uid": "mr-2", "modality": "MR", "body_part": ""},  # the archive's MR regions are not all known
])


def _header(modality: str, region: str = "") -> QueryHeader:
    return QueryHeader(frozenset({modality_kind(modality)} if modality else ()), frozenset({region} if region else ()))


@pytest.mark.parametrize("query, reason", [
    ([_header("MG", "thorax")], "this archive holds no MG studies"),
    ([_header("US")], "this archive holds no US studies"),
    ([_header("MG"), _header("US")], "this archive holds no MG/US studies"),
    ([_header("CT", "extremity")], "this archive holds no extremity CT studies"),
    ([_header("DX", "head")], "this archive holds no head DX studies"),  # DX and CR are one kind
    ([_header("DX", "thorax")], ""),
    ([_header("CT", "abdomen")], ""),
    ([_header("CT")], ""),  # the header names no region: it does not speak
    ([_header("MR", "extremity")], ""),  # an MR study of the archive names no region: it might be one
    ([_header("PT"), _header("CT", "thorax")], ""),  # a PET-CT: the archive holds its CT
    ([_header("")], ""),
    ([], ""),
])
def test_the_header_rule_names_what_the_archive_lacks(query, reason):
    assert header_reason(query, ARCHIVE) == reason


def test_the_querys_own_stored_study_is_not_evidence_for_the_archive():
    archive = archive_headers([{"study_uid": "dx", "modality": "DX", "body_part": "CHEST"},
                               {"study_uid": "upload", "modality": "MG", "body_part": "BREAST"}])
    assert header_reason([_header("MG", "thorax")], archive) == ""
    assert header_reason([_header("MG", "thorax")], archive, own={"upload"}) == "this archive holds no MG studies"
    assert header_reason([_header("DX", "thorax")], archive, own={"upload"}) == ""


def test_an_archive_without_modalities_says_nothing():
    assert header_reason([_header("MG")], archive_headers([])) == ""
    assert header_reason([_header("MG")], archive_headers([{"study_uid": "x", "modality": "", "body_part": ""}])) == ""


def _calibration(values) -> Calibration:
    values = np.sort(np.asarray(values, float))
    return Calibration(values, values, 5, len(values))


def test_similarity_below_the_percentile_abstains_with_the_numbers():
    calibration = _calibration(np.linspace(0.70, 0.89, 20))  # 0.70, 0.71, ..., 0.89; typical 0.795
    config = AbstentionConfig(below_percentile=10.0)
    low = similarity_abstention(0.41, calibration, config)
    assert low.abstained and (low.percentile, low.threshold) == (0.0, pytest.approx(0.71))
    assert low.reason.startswith("nothing in this archive resembles this study: nearest similarity 0.41, typical 0.80")
    assert "mean of the 10 most similar cases" in low.reason
    edge = similarity_abstention(0.705, calibration, config)  # one archive study of 20 is as dissimilar: 5%
    assert edge.abstained and edge.percentile == pytest.approx(5.0)
    high = similarity_abstention(0.71, calibration, config)
    assert not high.abstained and high.reason == "" and high.percentile == pytest.approx(10.0)
    assert high.typical_similarity == pytest.approx(0.795) and high.neighbours == 10


def test_without_a_calibration_or_a_percentile_nothing_abstains_on_similarity():
    assert not similarity_abstention(0.1, None, AbstentionConfig()).abstained
    assert not similarity_abstention(None, _calibration([0.5] * 30), AbstentionConfig()).abstained
    off = similarity_abstention(0.1, _calibration(np.linspace(0.7, 0.9, 30)), AbstentionConfig(below_percentile=0))
    assert not off.abstained and off.threshold is None and off.percentile == 0.0


# --- the engine on the synthetic archive ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cases(synthetic_manifest):
    return synthetic_manifest.parent / "cases"


@pytest.fixture(scope="module")
def engine(synthetic_pool, trained_run):
    """40 synthetic DX chest cases with reports."""
    root = synthetic_pool(N_POOL, "abstention")
    engine = Engine(CaseStore(f"sqlite:///{root / 'cases.db'}"), checkpoint=trained_run.best_dir.parent, device="cpu")
    assert engine.ingest([root / "pool"]).added_reports == N_POOL
    return engine


def _as(cases, tmp_path, case_id: str, **changes) -> list:
    """A dev case's images with header fields changed (a new study)."""
    ds = pydicom.dcmread(cases / case_id / "image.dcm")
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for name, value in changes.items():
        setattr(ds, name, value)
    path = tmp_path / f"{case_id}-{'-'.join(map(str, changes.values()))}.dcm"
    ds.save_as(path)
    images, errors = read_images([path])
    assert not errors
    return images


def test_a_held_out_study_like_the_archive_is_drafted(engine, cases):
    draft = engine.draft(read_images([cases / "dev-00004"])[0])  # a large circle, upper left
    abstention = draft.abstention
    assert not abstention.abstained and abstention.reason == "" and draft.sentences
    assert abstention.nearest_similarity >= abstention.threshold and abstention.percentile >= 5.0
    assert 0.0 < abstention.typical_similarity < 1.0 and abstention.neighbours == AbstentionConfig().neighbours == 10


@pytest.mark.parametrize("modality", ["MG", "US"])
def test_a_mammogram_or_ultrasound_upload_abstains_and_its_cases_are_weak(engine, cases, tmp_path, modality):
    images = _as(cases, tmp_path, "dev-00004", Modality=modality)
    draft = engine.draft(images)
    assert draft.abstention.abstained and draft.abstention.reason == f"this archive holds no {modality} studies"
    assert (draft.sentences, draft.text()) == ((), "")
    assert len(draft.source_cases) == engine.draft_config.top_k_cases  # still listed
    found = engine.similar_cases(images, k=5)
    assert [c.study_uid for c in found] == list(draft.source_cases)
    assert all(c.weak and 0.0 <= c.percentile <= 100.0 for c in found)


def test_a_body_region_the_archive_lacks_abstains(engine, cases, tmp_path):
    draft = engine.draft(_as(cases, tmp_path, "dev-00004", BodyPartExamined="ANKLE"))
    assert draft.abstention.reason == "this archive holds no extremity DX studies" and not draft.sentences
    described = _as(cases, tmp_path, "dev-00004", BodyPartExamined="", StudyDescription="RT ANKLE")
    assert engine.draft(described).abstention.reason == "this archive holds no extremity DX studies"


def test_similar_cases_carry_a_calibrated_score(engine, cases):
    found = engine.similar_cases(read_images([cases / "dev-00004"])[0], k=5)
    calibration = engine._abstainer.profile(engine.model_id).calibration
    for case in found:
        assert case.percentile == pytest.approx(calibration.percentile(case.score))
        assert case.weak == (case.percentile < 5.0)
    assert any(case.percentile > 5.0 for case in found) and not found[0].weak


def test_pixels_unlike_the_archive_score_below_its_studies(engine, cases, tmp_path):
    write_image(tmp_path / "noise.dcm", np.random.default_rng(0).random((64, 64)), modality="DX", body_part="CHEST")
    noise = read_images([tmp_path / "noise.dcm"])[0]
    held_out = read_images([cases / "dev-00004"])[0]
    noisy, typical = engine.draft(noise).abstention, engine.draft(held_out).abstention
    assert noisy.nearest_similarity < noisy.typical_similarity < typical.nearest_similarity
    assert noisy.percentile < 10.0 < typical.percentile
    strict = Engine(engine.store, checkpoint=engine.checkpoint.path, device="cpu",
                    abstention=AbstentionConfig(below_percentile=25.0))
    assert strict.draft(noise).abstention.abstained and not strict.draft(held_out).abstention.abstained


def test_a_vector_unlike_anything_abstains_on_similarity(engine):
    query = np.random.default_rng(1).normal(size=engine.checkpoint.config.model.embed_dim).astype(np.float32)
    cases, verdict = Abstainer(engine.store).check(engine.index("report"), query / np.linalg.norm(query), set(),
                                                   [], engine.model_id, [])
    assert verdict.abstained and verdict.reason.startswith("nothing in this archive resembles this study")
    assert verdict.percentile == 0.0 and verdict.nearest_similarity < verdict.threshold and cases == []


def test_an_archive_too_small_to_calibrate_abstains_on_the_header_only(engine, cases, tmp_path):
    small = Engine(engine.store, checkpoint=engine.checkpoint.path, device="cpu",
                   abstention=AbstentionConfig(min_studies=10_000))
    query = np.zeros(engine.checkpoint.config.model.embed_dim, np.float32)
    query[0] = 1.0
    _, verdict = small._abstainer.check(small.index("report"), query, set(), [], small.model_id, [])
    assert not verdict.abstained and verdict.percentile is None and verdict.typical_similarity is None
    assert small.draft(_as(cases, tmp_path, "dev-00004", Modality="MG")).abstention.abstained


# --- these add studies to the store: keep them last -------------------------------------------------------------------


def test_the_calibration_is_computed_once_per_state_of_the_store(engine, cases, tmp_path):
    first = engine._abstainer.profile(engine.model_id)
    assert engine._abstainer.profile(engine.model_id) is first
    shutil.copytree(cases / "dev-00007", tmp_path / "dev-00007")
    engine.ingest([tmp_path / "dev-00007"])
    second = engine._abstainer.profile(engine.model_id)
    assert second is not first and second.calibration.archive_studies == first.calibration.archive_studies + 1


def test_a_stored_mammogram_abstains_though_the_archive_now_holds_it(engine, cases, tmp_path):
    _as(cases, tmp_path, "dev-00010", Modality="MG")
    study_uid = engine.ingest([tmp_path]).studies[0]
    draft = engine.draft_for_study(study_uid, save=True, user="dr.a")
    assert draft.abstention.reason == "this archive holds no MG studies" and draft.text() == ""
    assert engine.store.latest_report(study_uid) is None, "an empty draft is not saved"


def test_the_region_rule_needs_studies_of_the_querys_region_in_the_archive():
    head = (("Chest", "Knee"), 8 * np.eye(2, 3, dtype=np.float32), np.zeros(2, np.float32))
    rng = np.random.default_rng(0)
    chest = np.abs(rng.normal([1, 0.1, 0.1], 0.05, (30, 3))).astype(np.float32)
    knee = np.abs(rng.normal([0.1, 1, 0.1], 0.05, (2, 3))).astype(np.float32)
    studies = [f"c{i}" for i in range(30)] + ["k0", "k1"]
    config = AbstentionConfig(min_studies=20)
    regions = archive_regions(np.vstack([chest, knee]), studies, head, config)
    assert regions.studies == studies and regions.probabilities.shape == (32, 2)
    assert region_reason(np.array([1, 0.1, 0.1], np.float32), head, regions) == ""  # 30 chests: like most
    reason = region_reason(np.array([0.1, 1, 0.1], np.float32), head, regions)
    assert reason.startswith("this archive holds few studies like this one: it looks like Knee (")
    assert "about 2.0 archive studies are of its region" in reason
    own = region_reason(np.array([0.1, 1, 0.1], np.float32), head, regions, own={"k0"})
    assert "about 1.0 archive studies" in own  # its own stored study is not evidence
    assert archive_regions(chest, studies[:30], head, AbstentionConfig(region_percentile=0)) is None
    assert archive_regions(chest[:5], studies[:5], head, config) is None  # too few studies to calibrate
    assert archive_regions(chest, studies[:30], None, config) is None
