"""The engine end to end: ingest synthetic DICOM, search, draft and sign, against a real SQLite store."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from db.store import CaseStore, StoreError
from medcm.engine.facade import Engine
from medcm.engine.ingest import read_images
from medcm.engine.previews import render_preview

N_POOL = 132  # 4 training cases per class


@pytest.fixture(scope="module")
def labels(synthetic_manifest):
    """case folder name → class label, and the dev (query) case folders."""
    lines = [json.loads(line) for line in synthetic_manifest.read_text().splitlines()]
    return {line["case_id"]: line["meta"]["label"] for line in lines}


@pytest.fixture(scope="module")
def pool(synthetic_manifest, tmp_path_factory):
    """A folder holding the first N_POOL training cases (each: image.dcm + report.txt)."""
    folder = tmp_path_factory.mktemp("pool")
    for i in range(N_POOL):
        shutil.copytree(synthetic_manifest.parent / "cases" / f"train-{i:05d}", folder / f"train-{i:05d}")
    return folder


@pytest.fixture(scope="module")
def engine(pool, trained_run, tmp_path_factory):
    store = CaseStore(f"sqlite:///{tmp_path_factory.mktemp('db') / 'cases.db'}")
    engine = Engine(store, checkpoint=trained_run.best_dir.parent, device="cpu")
    result = engine.ingest([pool], user="tester")
    assert (result.added_instances, result.added_reports, result.errors) == (N_POOL, N_POOL, ())
    assert result.added_embeddings == 2 * N_POOL
    return engine


def _study_labels(engine, pool, labels):
    images, _ = read_images([pool])
    return {image.meta.study_uid: labels[image.meta.path.split("/")[-2]] for image in images}


def _query(synthetic_manifest, case_id):
    images, errors = read_images([synthetic_manifest.parent / "cases" / case_id / "image.dcm"])
    assert not errors
    return images


def test_reingest_is_idempotent(engine, pool):
    again = engine.ingest([pool])
    assert (again.added_instances, again.skipped_instances, again.added_reports) == (0, N_POOL, 0)


def test_bad_files_are_reported_and_good_ones_stored(engine, tmp_path, synthetic_manifest):
    shutil.copy(synthetic_manifest.parent / "cases" / "dev-00000" / "image.dcm", tmp_path / "good.dcm")
    (tmp_path / "bad.dcm").write_bytes(b"not dicom at all")
    result = engine.ingest([tmp_path])
    assert result.added_instances == 1
    assert [e.path for e in result.errors] == [str(tmp_path / "bad.dcm")]


def test_similar_cases_share_the_query_finding(engine, pool, labels, synthetic_manifest):
    study_label = _study_labels(engine, pool, labels)
    dev_ids = [f"dev-{i:05d}" for i in range(0, 33, 3)]  # 11 queries from 11 classes
    hits = 0
    for case_id in dev_ids:
        cases = engine.similar_cases(_query(synthetic_manifest, case_id), k=3)
        assert len(cases) == 3 and cases[0].score >= cases[1].score >= cases[2].score
        assert all(c.report.startswith("FINDINGS:") for c in cases)
        hits += any(study_label[c.study_uid] == labels[case_id] for c in cases)
    assert hits >= 6, f"{hits}/11 queries found a same-class case in the top 3 (chance: 3/33 each)"


def test_text_search_finds_matching_images(engine, pool, labels):
    study_label = _study_labels(engine, pool, labels)
    matches = engine.search_text("Large round lesion, lower right.", k=5)
    assert len(matches) == 5 and len({m.study_uid for m in matches}) == 5
    assert sum(study_label[m.study_uid] == "large circle lower right" for m in matches) >= 2


def test_an_overlong_text_search_is_refused_before_the_text_tower(engine, monkeypatch):
    """Issue 18: a 10 MB search query cost 15 s and 836 MB that was never released."""
    monkeypatch.setattr(engine, "embed_texts", lambda texts: pytest.fail("the text tower read the query"))
    with pytest.raises(ValueError, match=r"^text search: the query is 1001 characters; expected at most 1000$"):
        engine.search_text("x" * 1001)


def test_filters_restrict_results(engine, synthetic_manifest):
    query = _query(synthetic_manifest, "dev-00001")
    assert all(c.modality == "DX" for c in engine.similar_cases(query, k=3, filters={"modality": "dx"}))
    assert engine.similar_cases(query, k=3, filters={"modality": "MR"}) == []


def test_draft_is_unverified_with_provenance(engine, synthetic_manifest):
    draft = engine.draft(_query(synthetic_manifest, "dev-00004"))  # a large circle, upper left
    assert draft.verified is False and draft.sentences
    stored = set(draft.source_cases)
    for sentence in draft.sentences:
        assert sentence.sources and {s.case_id for s in sentence.sources} <= stored
    assert "upper left" in draft.text().lower()


def test_the_checkpoints_finding_head_judges_the_drafts_sentences(engine, synthetic_manifest, monkeypatch):
    query = _query(synthetic_manifest, "dev-00004")  # a large circle, upper left
    before = engine.draft(query)
    assert "upper left" in before.text().lower()
    seen = {"lesion": 0.1}  # as if the image showed no lesion at all
    monkeypatch.setattr(engine.checkpoint.model, "image_findings", lambda vector: seen)
    after = engine.draft(query)
    assert not any("lesion" in s.text.lower() for s in after.sentences)
    assert any(d.reason.startswith("not this image: states") and "P(lesion) is 0.10" in d.reason for d in after.dropped)


def test_each_source_of_a_draft_carries_its_nearest_stored_images_cosine(engine, synthetic_manifest, monkeypatch):
    """The drafter decides sides by image-to-image neighbours (`medcm.report.draft`): the engine gives every
    source the cosine of its best stored image to the query."""
    import medcm.engine.facade as facade

    query = _query(synthetic_manifest, "dev-00004")
    passed = {}
    real = facade.draft_findings
    monkeypatch.setattr(facade, "draft_findings", lambda q, sources, *rest: passed.setdefault("sources", sources)
                        and real(q, sources, *rest))
    engine.draft(query)
    vector = engine.study_embedding(query)
    images = engine.index("image")
    cosine = images.vectors @ (vector / np.linalg.norm(vector))
    best: dict[str, float] = {}
    for meta, score in zip(images.meta, cosine.tolist()):
        best[meta["study_uid"]] = max(best.get(meta["study_uid"], -1.0), score)
    assert passed["sources"] and all(s.image_score is not None for s in passed["sources"])
    assert [s.image_score for s in passed["sources"]] == pytest.approx([best[s.case_id] for s in passed["sources"]],
                                                                        abs=1e-5)


def test_signed_case_joins_the_pool_at_once(engine, synthetic_manifest, tmp_path):
    shutil.copy(synthetic_manifest.parent / "cases" / "dev-00010" / "image.dcm", tmp_path / "new.dcm")
    result = engine.ingest([tmp_path])  # no report.txt: stored without a report
    study_uid = result.studies[0]
    assert study_uid not in engine.index("report").keys
    report = engine.sign(study_uid, "FINDINGS: Small square opacity in the lower left zone.", signer="dr.a")
    assert (report.status, report.signed_by) == ("signed", "dr.a")
    assert study_uid in engine.index("report").keys


def test_index_persists_and_reloads_without_rebuild(engine, trained_run, monkeypatch):
    engine.index("image")
    folder = engine._index_folder("image")
    assert (folder / "index.json").is_file()
    fresh = Engine(engine.store, checkpoint=trained_run.best_dir.parent, device="cpu")
    monkeypatch.setattr(fresh, "rebuild_index", lambda kind: pytest.fail("index was rebuilt instead of loaded"))
    assert len(fresh.index("image")) == len(engine.index("image"))


def test_faiss_backend_answers_as_the_exact_one(engine, trained_run, synthetic_manifest, monkeypatch):
    pytest.importorskip("faiss")
    from medcm.index.faiss import FaissIndex

    engine.index("image"), engine.index("report")  # saved: the FAISS engine loads them
    fast = Engine(engine.store, checkpoint=trained_run.best_dir.parent, device="cpu", index_backend="faiss")
    monkeypatch.setattr(fast, "rebuild_index", lambda kind: pytest.fail("index was rebuilt instead of loaded"))
    assert isinstance(fast.index("report"), FaissIndex) and fast.index("image").keys == engine.index("image").keys
    query = _query(synthetic_manifest, "dev-00002")
    for ask in (lambda e: e.similar_cases(query, k=4), lambda e: e.similar_cases(query, k=3, filters={"modality": "dx"}),
                lambda e: e.similar_images(query, k=5), lambda e: e.search_text("Small square opacity.", k=5)):
        got, expected = ask(fast), ask(engine)
        assert [c.study_uid for c in got] == [c.study_uid for c in expected]
        np.testing.assert_allclose([c.score for c in got], [c.score for c in expected], atol=1e-6)
    monkeypatch.undo()
    assert isinstance(fast.rebuild_index("image"), FaissIndex) and isinstance(fast.index("image"), FaissIndex)
    with pytest.raises(ValueError, match="index backend is 'annoy'"):
        Engine(engine.store, index_backend="annoy")


def test_preview_is_a_png_with_the_image_aspect():
    from io import BytesIO

    from PIL import Image

    png = render_preview(np.linspace(0, 1, 200 * 100, dtype=np.float32).reshape(1, 100, 200), size=64)
    with Image.open(BytesIO(png)) as image:
        assert (image.format, image.size, image.mode) == ("PNG", (64, 32), "L")


def test_ingest_without_a_model_stores_no_embeddings(pool, tmp_path):
    engine = Engine(CaseStore(f"sqlite:///{tmp_path / 'plain.db'}"))
    result = engine.ingest([pool / "train-00000"])
    assert (result.added_instances, result.added_reports, result.added_embeddings) == (1, 1, 0)
    with pytest.raises(ValueError, match="--checkpoint"):
        engine.search_text("effusion")


def test_amended_report_replaces_its_vector_in_the_saved_index(engine, synthetic_manifest, tmp_path):
    shutil.copy(synthetic_manifest.parent / "cases" / "dev-00020" / "image.dcm", tmp_path / "amend.dcm")
    study_uid = engine.ingest([tmp_path]).studies[0]
    engine.sign(study_uid, "FINDINGS: Large triangular opacity in the upper right zone.", signer="dr.a")
    before = engine.index("report").vectors[engine.index("report").keys.index(study_uid)].copy()
    engine.sign(study_uid, "FINDINGS: No focal abnormality is seen.", signer="dr.b")  # an amendment: same count
    after = engine.index("report").vectors[engine.index("report").keys.index(study_uid)]
    assert not np.allclose(before, after)
    expected = engine.embed_texts(["No focal abnormality is seen."])[0]
    np.testing.assert_allclose(after, expected / np.linalg.norm(expected), atol=1e-6)


def test_reingest_after_an_amendment_keeps_the_signed_reports_vector(engine, pool, monkeypatch):
    """The archive text matches an old version, so nothing is re-embedded or re-attached."""
    images, _ = read_images([pool / "train-00007"])
    study_uid = images[0].meta.study_uid
    engine.sign(study_uid, "FINDINGS: Small cross-shaped opacity in the lower right zone.", signer="dr.c")
    signed_vector = engine.index("report").vectors[engine.index("report").keys.index(study_uid)].copy()
    monkeypatch.setattr(engine, "embed_visual", lambda *args: pytest.fail("a stored file was embedded again"))
    result = engine.ingest([pool / "train-00007"])
    assert (result.added_instances, result.skipped_instances, result.added_reports) == (0, 1, 0)
    now = engine.index("report").vectors[engine.index("report").keys.index(study_uid)]
    np.testing.assert_array_equal(now, signed_vector)


def test_a_volume_series_goes_through_ingest_search_and_draft(engine, shared_data, tmp_path):
    """The shared 128-slice synthetic series (with a report) is stored slice by slice, then searched
    and drafted as one study: its embedding aggregates every slice."""
    from medcm.dicom.series import read_volumes

    folder = tmp_path / "series"
    shutil.copytree(shared_data / "dicom-series-synthetic", folder)
    (folder / "report.txt").write_text("FINDINGS: Round lesion in the upper left.\nIMPRESSION: Lesion.")
    (volume,), errors = read_volumes(folder)
    assert errors == [] and volume.voxels.shape == (128, 128, 128)
    result = engine.ingest([folder], user="tester")
    assert (len(result.studies), result.added_instances, result.added_reports) == (1, 128, 1)
    images, _ = read_images([folder])
    cases = engine.similar_cases(images, k=3)
    assert len(cases) == 3 and result.studies[0] not in {case.study_uid for case in cases}
    draft = engine.draft(images)
    # the pool holds DX radiographs only: the MR series gets no draft, and its similar cases are still named
    assert draft.abstention.reason == "this archive holds no MR studies" and not draft.text() and not draft.verified
    assert len(draft.source_cases) == 5
    assert set(draft.source_cases) <= set(engine.index("report").keys) - {result.studies[0]}


def test_a_study_embedding_weighs_each_series_once(engine, synthetic_manifest):
    """Nine images of one series and one image of another: the two series count equally."""
    import dataclasses

    def in_series(image, uid):
        return dataclasses.replace(image, meta=dataclasses.replace(image.meta, series_uid=uid))

    (one,) = _query(synthetic_manifest, "dev-00000")
    (other,) = _query(synthetic_manifest, "dev-00001")
    images = [in_series(one, "series-a")] + [in_series(other, "series-b")] * 9
    a, b = engine.embed_images([one, other])
    expected = a / np.linalg.norm(a) + b / np.linalg.norm(b)
    np.testing.assert_allclose(engine.study_embedding(images), expected / np.linalg.norm(expected), atol=1e-5)
    single = engine.study_embedding([one])
    np.testing.assert_allclose(single, a / np.linalg.norm(a), atol=1e-5)


# --- volumes: with a volume encoder, a CT series is stored and queried as ONE embedding ----------------------------

VOL_DEPTH, VOL_SIZE = 8, 32


@pytest.fixture(scope="module")
def ct_cases(tmp_path_factory, synthetic_manifest):
    """Three CT training cases, one CT dev case (8 slices of 32 px, each with report.txt) and one DX case."""
    from medcm.data.synthetic_ct import write_volume_dataset

    root = tmp_path_factory.mktemp("ct")
    write_volume_dataset(root, n_train=3, n_dev=1, depth=VOL_DEPTH, size=VOL_SIZE)
    shutil.copytree(synthetic_manifest.parent / "cases" / "train-00000", root / "dx-case")
    return root


@pytest.fixture(scope="module")
def volume_checkpoint_dir(untrained_checkpoint):
    return untrained_checkpoint()


def _ct_pool(ct_cases):
    return [ct_cases / f"case-train-{i:05d}" for i in range(3)] + [ct_cases / "dx-case"]


@pytest.fixture(scope="module")
def volume_engine(ct_cases, volume_checkpoint_dir, tmp_path_factory):
    engine = Engine(CaseStore(f"sqlite:///{tmp_path_factory.mktemp('vol-db') / 'cases.db'}"),
                    checkpoint=volume_checkpoint_dir, device="cpu")
    result = engine.ingest(_ct_pool(ct_cases), user="tester")
    assert (result.added_instances, result.added_reports, result.errors) == (3 * VOL_DEPTH + 1, 4, ())
    assert result.added_embeddings == 4 + 4, "one image embedding per CT series and one for the DX image, 4 reports"
    return engine


def _reference_volume_vector(engine, folder):
    import torch

    from medcm.model.encoders.volume import volume_input
    from medcm.dicom.series import read_volume

    config = engine.checkpoint.config
    prepared = volume_input(read_volume(sorted(str(p) for p in folder.glob("*.dcm"))), config.model.volume,
                            config.preprocess)
    with torch.no_grad():
        return engine.checkpoint.model.encode_volume(prepared[None]).numpy()[0]


def test_a_volume_series_is_stored_as_one_embedding_under_its_middle_slice(volume_engine, ct_cases):
    matrix = volume_engine.store.embedding_matrix("image", volume_engine.model_id)
    assert len(matrix.keys) == 4
    rows = dict(zip(matrix.keys, zip(matrix.vectors, matrix.meta)))
    for i in range(3):
        folder = ct_cases / f"case-train-{i:05d}"
        (middle,), _ = read_images([folder / f"slice-{VOL_DEPTH // 2:03d}.dcm"])  # slices are written bottom to top
        vector, meta = rows[middle.meta.sop_instance_uid]
        np.testing.assert_allclose(vector, _reference_volume_vector(volume_engine, folder), atol=1e-5)
        assert (meta["study_uid"], meta["modality"]) == (middle.meta.study_uid, "CT"), "the store still joins the instance"
    (radiograph,), _ = read_images([ct_cases / "dx-case" / "image.dcm"])
    np.testing.assert_allclose(rows[radiograph.meta.sop_instance_uid][0], volume_engine.embed_images([radiograph])[0],
                               atol=1e-5)


def test_without_a_volume_encoder_every_slice_is_stored(ct_cases, tmp_path, untrained_checkpoint):
    engine = Engine(CaseStore(f"sqlite:///{tmp_path / 'plain.db'}"),
                    checkpoint=untrained_checkpoint(volume=False), device="cpu")
    result = engine.ingest(_ct_pool(ct_cases))
    assert result.added_embeddings == (3 * VOL_DEPTH + 1) + 4
    assert len(engine.store.embedding_matrix("image", engine.model_id).keys) == 3 * VOL_DEPTH + 1


def test_a_study_of_a_volume_and_a_radiograph_weighs_them_equally(volume_engine, ct_cases):
    series, _ = read_images([ct_cases / "case-dev-00000"])
    (radiograph,), _ = read_images([ct_cases / "dx-case" / "image.dcm"])
    volume = _reference_volume_vector(volume_engine, ct_cases / "case-dev-00000")
    image = volume_engine.embed_images([radiograph])[0]
    expected = volume / np.linalg.norm(volume) + image / np.linalg.norm(image)
    np.testing.assert_allclose(volume_engine.study_embedding([*series, radiograph]), expected / np.linalg.norm(expected),
                               atol=1e-5)
    np.testing.assert_allclose(volume_engine.study_embedding(series), volume, atol=1e-5)


def test_a_volume_query_searches_and_drafts_end_to_end(volume_engine, ct_cases):
    query, _ = read_images([ct_cases / "case-dev-00000"])
    stored = set(volume_engine.index("report").keys)
    cases = volume_engine.similar_cases(query, k=3)
    assert len(cases) == 3 and cases[0].score >= cases[1].score >= cases[2].score
    assert {case.study_uid for case in cases} <= stored and all(case.report for case in cases)
    image_keys = set(volume_engine.index("image").keys)
    matches = volume_engine.similar_images(query, k=4)
    assert len(matches) == 4 and {m.sop_instance_uid for m in matches} <= image_keys
    assert sorted(m.modality for m in matches) == ["CT", "CT", "CT", "DX"]
    assert {m.sop_instance_uid for m in volume_engine.search_text("pleural effusion", k=4)} <= image_keys
    draft = volume_engine.draft(query)
    assert draft.text() and draft.verified is False and set(draft.source_cases) <= stored


def test_a_series_with_a_missing_slice_is_stored_slice_by_slice_with_a_warning(volume_engine, ct_cases, tmp_path,
                                                                                 caplog):
    folder = tmp_path / "gap"
    shutil.copytree(ct_cases / "case-dev-00000", folder)
    (folder / "slice-002.dcm").unlink()
    images, _ = read_images([folder])
    with caplog.at_level("WARNING", logger="medcm.engine.facade"):
        result = volume_engine.ingest([folder])
    assert (result.added_instances, result.added_embeddings) == (VOL_DEPTH - 1, VOL_DEPTH - 1 + 1)
    assert f"series {images[0].meta.series_uid} (" in caplog.text and "not as one volume" in caplog.text
    (warning,) = result.warnings
    assert warning.startswith(f"series {images[0].meta.series_uid} (") and "about 1 slice(s) missing" in warning
    keys = set(volume_engine.store.embedding_matrix("image", volume_engine.model_id).keys)
    assert {image.meta.sop_instance_uid for image in images} <= keys


def test_pgvector_backend_answers_as_the_exact_one(pool, trained_run, synthetic_manifest, postgres_url, tmp_path):
    checkpoint = trained_run.best_dir.parent
    exact = Engine(CaseStore(postgres_url), checkpoint=checkpoint, device="cpu")
    exact.ingest([pool], user="tester")
    in_db = Engine(CaseStore(postgres_url), checkpoint=checkpoint, device="cpu", index_backend="pgvector")
    assert len(in_db.index("image")) == N_POOL
    query = _query(synthetic_manifest, "dev-00002")
    asks = (lambda e: e.similar_cases(query, k=4), lambda e: e.similar_cases(query, k=3, filters={"modality": "dx"}),
            lambda e: e.similar_images(query, k=5), lambda e: e.search_text("Small square opacity.", k=5))
    for ask in asks:
        got, expected = ask(in_db), ask(exact)
        assert [c.study_uid for c in got] == [c.study_uid for c in expected]
        np.testing.assert_allclose([c.score for c in got], [c.score for c in expected], atol=1e-5)

    shutil.copy(synthetic_manifest.parent / "cases" / "dev-00002" / "image.dcm", tmp_path / "new.dcm")
    new_uid = exact.ingest([tmp_path]).studies[0]  # written by another engine: searchable at once, no rebuild
    assert [m.study_uid for m in in_db.similar_images(_query(synthetic_manifest, "dev-00007"), k=N_POOL + 1)
            ].count(new_uid) == 1
    with pytest.raises(StoreError, match="the store is on sqlite; expected PostgreSQL"):
        Engine(CaseStore(f"sqlite:///{tmp_path / 'cases.db'}"), index_backend="pgvector")
