"""Batch embedding of a stored archive (`medcm embed`): same vectors as ingest, resumable, per model, sharded."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from db import pgvector
from db.embedding_queries import shard_of
from db.store import CaseStore, StoreError
from medcm.engine.facade import Engine

N_CASES = 10
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cases(synthetic_manifest, tmp_path_factory) -> Path:
    """A folder of N_CASES synthetic studies (each: image.dcm + report.txt)."""
    folder = tmp_path_factory.mktemp("embed-cases")
    for i in range(N_CASES):
        shutil.copytree(synthetic_manifest.parent / "cases" / f"train-{i:05d}", folder / f"train-{i:05d}")
    return folder


@pytest.fixture(scope="module")
def reference(cases, trained_run, tmp_path_factory) -> CaseStore:
    """The same studies ingested with the checkpoint: the vectors `embed` must reproduce."""
    store = CaseStore(f"sqlite:///{tmp_path_factory.mktemp('ref') / 'ref.db'}")
    result = Engine(store, checkpoint=trained_run.best_dir.parent, device="cpu").ingest([cases])
    assert result.added_embeddings == 2 * N_CASES
    return store


@pytest.fixture
def plain(cases, tmp_path) -> CaseStore:
    """The studies ingested without a model: no embeddings at all."""
    store = CaseStore(f"sqlite:///{tmp_path / 'cases.db'}")
    assert Engine(store).ingest([cases]).added_embeddings == 0
    return store


@pytest.fixture
def model(plain, trained_run) -> Engine:
    return Engine(plain, checkpoint=trained_run.best_dir.parent, device="cpu")


def _matrix(store: CaseStore, kind: str, model_id: str) -> dict[str, np.ndarray]:
    matrix = store.embedding_matrix(kind, model_id)
    return dict(zip(matrix.keys, matrix.vectors))


def test_embed_stores_what_ingest_with_the_model_stores(model, plain, reference):
    before = model.index("image")  # saved with the empty store's stamp: must not be trusted afterwards
    assert len(before.keys) == 0
    assert len(plain.studies_to_embed(model.model_id, limit=100)) == N_CASES
    summary = model.embed_archive(batch_studies=4, progress=False)
    assert (summary.studies, summary.image_embeddings, summary.report_embeddings, summary.failed) == (
        N_CASES, N_CASES, N_CASES, ())
    for kind in ("image", "report"):
        got, want = _matrix(plain, kind, model.model_id), _matrix(reference, kind, model.model_id)
        assert sorted(got) == sorted(want) and len(got) == N_CASES
        for key, vector in want.items():
            np.testing.assert_allclose(got[key], vector, atol=1e-5)
    assert plain.studies_to_embed(model.model_id) == []
    again = model.embed_archive(progress=False)
    assert (again.studies, again.image_embeddings, again.report_embeddings) == (0, 0, 0)
    assert len(model.index("image").keys) == N_CASES  # the cached index was dropped
    assert len(model.index("report").keys) == N_CASES


def test_a_saved_index_with_a_stale_stamp_is_rebuilt(plain, trained_run):
    ckpt = trained_run.best_dir.parent
    assert len(Engine(plain, checkpoint=ckpt, device="cpu").index("report").keys) == 0  # saved to disk, stamped
    Engine(plain, checkpoint=ckpt, device="cpu").embed_archive(progress=False)
    assert len(Engine(plain, checkpoint=ckpt, device="cpu").index("report").keys) == N_CASES


def test_an_interrupted_run_resumes_with_the_rest(model, plain, monkeypatch):
    real, calls = plain.add_embeddings, []

    def killed_after_one_batch(records: list) -> int:
        if calls:
            raise KeyboardInterrupt  # the process dies while the second batch is in flight
        calls.append(len(records))
        return real(records)

    monkeypatch.setattr(plain, "add_embeddings", killed_after_one_batch)
    with pytest.raises(KeyboardInterrupt):
        model.embed_archive(batch_studies=3, progress=False)
    assert calls == [6]
    assert (plain.count_embeddings("image", model.model_id), plain.count_embeddings("report", model.model_id)) == (3, 3)
    monkeypatch.undo()
    rest = model.embed_archive(batch_studies=3, progress=False)
    assert (rest.studies, rest.image_embeddings, rest.report_embeddings) == (N_CASES - 3, N_CASES - 3, N_CASES - 3)
    assert plain.count_embeddings("image", model.model_id) == plain.count_embeddings("report", model.model_id) == N_CASES


def test_a_new_checkpoint_embeds_everything_again_beside_the_old_vectors(model, plain, untrained_checkpoint):
    model.embed_archive(progress=False)
    other = Engine(plain, checkpoint=untrained_checkpoint(volume=False), device="cpu")
    assert other.model_id != model.model_id
    summary = other.embed_archive(progress=False)
    assert (summary.studies, summary.image_embeddings, summary.report_embeddings) == (N_CASES, N_CASES, N_CASES)
    for engine in (model, other):
        assert plain.count_embeddings("image", engine.model_id) == N_CASES
        assert plain.count_embeddings("report", engine.model_id) == N_CASES
    assert _matrix(plain, "image", other.model_id).keys() == _matrix(plain, "image", model.model_id).keys()


def test_an_amended_report_is_embedded_again_without_its_images(model, plain):
    model.embed_archive(progress=False)
    uid = plain.list_studies()[0].study_uid
    plain.sign_report(uid, "FINDINGS: No focal abnormality is seen.", [("FINDINGS", "No focal abnormality is seen.")],
                      "dr.a")
    (pending,) = plain.studies_to_embed(model.model_id)
    assert (pending.study_uid, pending.needs_images, pending.needs_report, pending.instances) == (uid, False, True, ())
    summary = model.embed_archive(progress=False)
    assert (summary.studies, summary.image_embeddings, summary.report_embeddings) == (1, 0, 1)
    expected = model.embed_texts(["No focal abnormality is seen."])[0]
    np.testing.assert_allclose(_matrix(plain, "report", model.model_id)[uid], expected, atol=1e-5)


def test_two_ranks_split_the_archive_without_overlap(model, plain):
    first = model.embed_archive(batch_studies=2, rank=0, world_size=2, progress=False)
    mine = set(_matrix(plain, "report", model.model_id))
    uids = {study.study_uid for study in plain.list_studies()}
    assert mine == {uid for uid in uids if shard_of(uid, 2) == 0} and first.studies == len(mine)
    second = model.embed_archive(batch_studies=2, rank=1, world_size=2, progress=False)
    assert first.studies + second.studies == N_CASES and 0 < first.studies < N_CASES
    assert set(_matrix(plain, "report", model.model_id)) == uids
    assert plain.count_embeddings("image", model.model_id) == N_CASES


def test_a_study_whose_file_is_gone_is_reported_and_skipped(model, plain, cases, tmp_path):
    study = plain.get_study(plain.list_studies()[0].study_uid)
    moved = Path(study.instances[0].path)
    shutil.move(moved, tmp_path / "moved.dcm")
    try:
        summary = model.embed_archive(batch_studies=4, progress=False)
    finally:
        shutil.move(tmp_path / "moved.dcm", moved)
    assert summary.studies == N_CASES - 1 and len(summary.failed) == 1
    assert study.study_uid in summary.failed[0] and str(moved) in summary.failed[0] and "\n" not in summary.failed[0]
    assert [p.study_uid for p in plain.studies_to_embed(model.model_id)] == [study.study_uid]


def test_bad_arguments_are_refused(model, plain):
    with pytest.raises(ValueError, match="batch_studies"):
        model.embed_archive(batch_studies=0)
    with pytest.raises(ValueError, match="rank 2 of world size 2"):
        model.embed_archive(rank=2, world_size=2)
    with pytest.raises(StoreError, match="shard"):
        plain.studies_to_embed("m", shard=(1, 1))


def test_medcm_embed_prints_a_summary(plain, trained_run):
    url = plain.url
    plain.close()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "medcm", "embed", "--db", url, "--checkpoint",
                          str(trained_run.best_dir.parent), "--device", "cpu", "--batch-studies", "4", "--quiet"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr
    assert f"embedded {N_CASES} study(ies)" in run.stdout
    assert f"{N_CASES} image and {N_CASES} report embedding(s)" in run.stdout and "0 study(ies) failed" in run.stdout


def test_a_volume_series_is_one_vector_and_its_study_counts_as_done(untrained_checkpoint, tmp_path):
    """With a volume encoder most instances have no vector of their own: the study is still done."""
    from medcm.data.synthetic_ct import write_volume_dataset

    manifest = write_volume_dataset(tmp_path / "vol", n_train=2, n_dev=1, depth=8, size=32)
    ckpt = untrained_checkpoint(volume=True, kind="3d")
    reference = CaseStore(f"sqlite:///{tmp_path / 'ref.db'}")
    Engine(reference, checkpoint=ckpt, device="cpu").ingest([manifest.parent])
    store = CaseStore(f"sqlite:///{tmp_path / 'plain.db'}")
    Engine(store).ingest([manifest.parent])
    engine = Engine(store, checkpoint=ckpt, device="cpu")
    summary = engine.embed_archive(batch_studies=2, progress=False)
    assert (summary.studies, summary.image_embeddings, summary.report_embeddings) == (3, 3, 3)
    want = _matrix(reference, "image", engine.model_id)
    got = _matrix(store, "image", engine.model_id)
    assert sorted(got) == sorted(want)
    for key, vector in want.items():
        np.testing.assert_allclose(got[key], vector, atol=1e-5)
    assert store.studies_to_embed(engine.model_id) == []
    assert engine.embed_archive(progress=False).studies == 0


def test_medcm_embed_builds_hnsw_indexes_that_pgvector_search_uses(cases, trained_run, postgres_url, tmp_path):
    assert Engine(CaseStore(postgres_url)).ingest([cases]).added_embeddings == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    checkpoint = str(trained_run.best_dir.parent)
    run = subprocess.run([sys.executable, "-m", "medcm", "embed", "--db", postgres_url, "--checkpoint", checkpoint,
                          "--device", "cpu", "--quiet", "--pgvector-hnsw"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr
    engine = Engine(CaseStore(postgres_url), checkpoint=checkpoint, device="cpu", index_backend="pgvector")
    assert f"HNSW index over the image vectors of model {engine.model_id}" in run.stdout
    assert f"HNSW index over the report vectors of model {engine.model_id}" in run.stdout
    with engine.store._session() as s:
        assert pgvector.hnsw_dim(s, "image", engine.model_id) == pgvector.hnsw_dim(s, "report", engine.model_id) > 0
    exact = Engine(CaseStore(postgres_url), checkpoint=checkpoint, device="cpu")
    assert [m.study_uid for m in engine.search_text("Small square opacity.", k=5)] == [
        m.study_uid for m in exact.search_text("Small square opacity.", k=5)]  # 10 vectors: HNSW finds them all

    sqlite = subprocess.run([sys.executable, "-m", "medcm", "embed", "--db", f"sqlite:///{tmp_path / 'x.db'}",
                             "--checkpoint", checkpoint, "--quiet", "--pgvector-hnsw"], capture_output=True, text=True,
                            env=env, cwd=ROOT, timeout=300)
    assert sqlite.returncode == 1 and "the store is on sqlite; expected PostgreSQL" in sqlite.stderr
