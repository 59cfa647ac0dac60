"""The engine's anatomy prior (`medcm.engine.anatomy`): image queries rank stored cases and images by cosine
plus modality and body-region agreement, as `medcm eval` ranks them; scores stay cosines; off, nothing changes."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from db.store import CaseStore
from medcm.checkpoint import save_checkpoint
from medcm.config import AbstentionConfig, AnatomyPriorConfig, AuxHeadConfig, get_config
from medcm.dicom.write import write_image
import medcm.engine.anatomy as engine_anatomy
from medcm.engine.anatomy import AnatomyRanking, query_anatomy, rerank, stored_regions
from medcm.engine.facade import Engine
from medcm.engine.ingest import read_images
from medcm.eval.anatomy import case_anatomy, image_anatomy
from medcm.eval.evaluate import ranking_scores
from medcm.index.query import Hit
from medcm.model.align import DualEncoder

CLASSES = ("Head and Neck", "Thorax", "Abdomen")
HEAD_BIAS = 20.0  # the untrained region head says "Abdomen" for every vector (a zero weight)
# (Modality, BodyPartExamined) of the stored studies; "" leaves the region to the head.
POOL = [("CT", "CHEST"), ("MR", "ABDOMEN"), ("CT", ""), ("MR", "CHEST"),
        ("CT", "ABDOMEN"), ("MR", ""), ("CT", "CHEST"), ("MR", "ABDOMEN")]
SIZE = 32


def _pixels(seed: int) -> np.ndarray:
    """A smooth random picture in [0, 1], different per seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    image = np.zeros((SIZE, SIZE))
    for _ in range(4):
        cy, cx, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.3)
        image += rng.uniform(0.3, 1.0) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    return image / image.max()


def _write_study(folder, i: int, modality: str, body_part: str, report: str | None = None) -> str:
    study_uid = f"2.25.{1000 + i}"
    write_image(folder / f"s{i}" / "image.dcm", _pixels(i), modality=modality, body_part=body_part,
                study_uid=study_uid, patient_id=f"P{i}")
    if report is not None:
        (folder / f"s{i}" / "report.txt").write_text(report, encoding="utf-8")
    return study_uid


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    """An untrained 32-px checkpoint (no volume encoder) whose region head reads the shared embedding."""
    base = get_config("cpu-small")
    head = AuxHeadConfig(field="region", classes=CLASSES, on_embedding=True)
    config = dataclasses.replace(base, name="prior", model=dataclasses.replace(base.model, embed_dim=32, volume=None,
                                                                                aux_head=head),
                                 preprocess=dataclasses.replace(base.preprocess, image_size=SIZE))
    torch.manual_seed(0)
    model = DualEncoder(config.model, SIZE).eval()
    with torch.no_grad():
        model.aux_head.weight.zero_()
        model.aux_head.bias.copy_(torch.tensor([0.0, 0.0, HEAD_BIAS]))
    return save_checkpoint(tmp_path_factory.mktemp("prior-ckpt") / "ckpt", model, config)


@pytest.fixture(scope="module")
def engine(checkpoint_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("prior-store")
    for i, (modality, body_part) in enumerate(POOL):
        _write_study(root / "pool", i, modality, body_part, f"FINDINGS: Finding number {i} of a {modality} study.")
    engine = Engine(CaseStore(f"sqlite:///{root / 'cases.db'}"), checkpoint=checkpoint_dir, device="cpu")
    result = engine.ingest([root / "pool"])
    assert (result.added_instances, result.added_embeddings, result.errors) == (len(POOL), 2 * len(POOL), ())
    return engine


@pytest.fixture(scope="module")
def query_image(engine, tmp_path_factory):
    """An upload (not stored) unlike every stored image; tests give it the modality and body part they need."""
    folder = tmp_path_factory.mktemp("prior-query")
    _write_study(folder, 99, "OT", "")
    images, errors = read_images([folder])
    assert not errors and len(images) == 1
    return images[0]


def _as(image, modality: str, body_part: str = "") -> list:
    """The query image with another Modality / BodyPartExamined (its pixels, hence its vector, unchanged)."""
    return [dataclasses.replace(image, meta=dataclasses.replace(image.meta, modality=modality, body_part=body_part))]


def _prior(monkeypatch, engine, **weights) -> AnatomyPriorConfig:
    """Give the engine's checkpoint these prior weights (for this test only)."""
    prior = AnatomyPriorConfig(**weights)
    checkpoint = engine.checkpoint
    monkeypatch.setattr(engine, "checkpoint", dataclasses.replace(
        checkpoint, config=dataclasses.replace(checkpoint.config, anatomy_prior=prior)))
    return prior


def _stable_groups(ranked, first) -> list[str]:
    """Study UIDs of `ranked` with those `first` says True for moved to the front, each group kept in order."""
    return [c.study_uid for c in ranked if first(c)] + [c.study_uid for c in ranked if not first(c)]


def _region(body_part: str) -> str:
    """The region class a stored study has here: its header's, else the head's ("Abdomen" for every vector)."""
    return {"CHEST": "Thorax", "ABDOMEN": "Abdomen", "": "Abdomen"}[body_part]


class _Recorder:
    """Wraps an index and records the `k` of each search."""

    def __init__(self, index, calls: list[int]) -> None:
        self.index, self.calls = index, calls

    def search(self, *args, **kwargs):
        self.calls.append(kwargs["k"])
        return self.index.search(*args, **kwargs)


def _count_calls(monkeypatch, obj, name: str) -> list:
    """Record the arguments of every call of `obj.name` (still called)."""
    calls, method = [], getattr(obj, name)
    monkeypatch.setattr(obj, name, lambda *args, **kwargs: calls.append(args) or method(*args, **kwargs))
    return calls


# --- the engine: uploads ---------------------------------------------------------------------------------------------


def test_without_a_prior_similar_cases_and_images_come_in_cosine_order(engine, query_image):
    assert not engine.anatomy_prior.active, "a checkpoint's default prior is off"
    for results in (engine.similar_cases(_as(query_image, "CT"), k=8), engine.similar_images(_as(query_image, "CT"), k=8)):
        scores = [r.score for r in results]
        assert len(results) == len(POOL) and scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("search", ["similar_cases", "similar_images"])
def test_modality_weight_ranks_the_query_modality_first_and_keeps_cosine_scores(engine, query_image, monkeypatch,
                                                                               search):
    off = getattr(engine, search)(_as(query_image, "OT"), k=8)
    wanted = "MR" if off[0].modality == "CT" else "CT"  # the best cosine is of the other modality
    _prior(monkeypatch, engine, modality_weight=10.0)
    got = getattr(engine, search)(_as(query_image, wanted), k=8)
    assert [r.modality for r in got] == [wanted] * 4 + [off[0].modality] * 4
    assert [r.study_uid for r in got] == _stable_groups(off, lambda r: r.modality == wanted)
    assert {r.study_uid: r.score for r in got} == {r.study_uid: r.score for r in off}, "scores stay the cosine"
    top = getattr(engine, search)(_as(query_image, wanted), k=3)  # more than k candidates were re-ranked
    assert [r.study_uid for r in top] == [r.study_uid for r in got[:3]]


@pytest.mark.parametrize("search", ["similar_cases", "similar_images"])
def test_region_weight_ranks_the_query_region_first_from_the_header_or_the_head(engine, query_image, monkeypatch,
                                                                                search):
    off = getattr(engine, search)(_as(query_image, "OT"), k=8)
    top_region = _region(off[0].body_part)
    stated = "ABDOMEN" if top_region == "Thorax" else "CHEST"  # the best cosine is of the other region
    _prior(monkeypatch, engine, region_weight=10.0)
    got = getattr(engine, search)(_as(query_image, "OT", stated), k=8)
    assert [r.study_uid for r in got] == _stable_groups(off, lambda r: _region(r.body_part) == _region(stated))
    assert [r.study_uid for r in got] != [r.study_uid for r in off]
    # no body part: the head's region of the query vector ("Abdomen"), matched by stored studies' head regions too
    unstated = getattr(engine, search)(_as(query_image, "OT"), k=8)
    assert [r.study_uid for r in unstated] == _stable_groups(off, lambda r: _region(r.body_part) == "Abdomen")


def test_engine_ranks_as_medcm_eval_ranks(engine, query_image, monkeypatch):
    """Small weights that mix cosine and bonus, only the 5 best by cosine re-ranked: the engine's order is
    `medcm.eval.evaluate.ranking_scores` on the same vectors and anatomy."""
    head = engine.checkpoint.model.region_head()
    images = engine.store.embedding_matrix("image", engine.model_id)
    reports = engine.store.embedding_matrix("report", engine.model_id)
    pool_images = image_anatomy(images.vectors, images.meta, head)
    pool_cases = case_anatomy(pool_images, [m["study_uid"] for m in images.meta], reports.keys)
    for modality, body_part in (("MR", "CHEST"), ("CT", "")):
        query = _as(query_image, modality, body_part)
        vector = engine.study_embedding(query)
        query_anatomy_ = image_anatomy(vector[None], [{"modality": modality, "body_part": body_part}], head)
        for search, prior, vectors, keys, pool in (
                ("similar_cases", AnatomyPriorConfig(0.1, 0.1, 5), reports.vectors, reports.keys, pool_cases),
                ("similar_images", AnatomyPriorConfig(0.01, 0.01, 5), images.vectors,
                 [m["study_uid"] for m in images.meta], pool_images)):
            _prior(monkeypatch, engine, **dataclasses.asdict(prior))
            scores = ranking_scores((vector @ vectors.T)[None], query_anatomy_, pool, prior)[0]
            expected = [keys[i] for i in np.argsort(-scores, kind="stable")]
            cosine = [keys[i] for i in np.argsort(-(vector @ vectors.T), kind="stable")]
            got = [r.study_uid for r in getattr(engine, search)(query, k=8)]
            assert got == expected, (search, modality, body_part)
            assert got != cosine, "the weights are large enough to change the order"
            assert [r.study_uid for r in getattr(engine, search)(query, k=2)] == expected[:2]


def test_an_engine_told_off_ranks_by_cosine_call_for_call(engine, checkpoint_dir, query_image, monkeypatch):
    """`anatomy_prior=AnatomyPriorConfig()` (the CLI's --anatomy-prior off) overrides the checkpoint's prior:
    the index is asked for k hits, and the prior reads nothing from the store."""
    query = _as(query_image, "MR", "CHEST")
    quiet = AbstentionConfig(below_percentile=0.0, region_percentile=0.0, header=False)  # abstention off: not counted
    off = Engine(engine.store, checkpoint=checkpoint_dir, device="cpu", anatomy_prior=AnatomyPriorConfig(),
                 abstention=quiet)
    on = Engine(engine.store, checkpoint=checkpoint_dir, device="cpu", abstention=quiet)
    expected = (off.similar_cases(query, k=3), off.similar_images(query, k=3))
    for target in (on, off):
        _prior(monkeypatch, target, modality_weight=10.0, region_weight=10.0)
    assert (off.anatomy_prior.active, on.anatomy_prior.active) == (False, True)
    for target, want_k in ((off, [3, 4]), (on, [200, 201])):
        calls, index = [], target.index
        monkeypatch.setattr(target, "index", lambda kind, index=index, calls=calls: _Recorder(index(kind), calls))
        matrix_calls = _count_calls(monkeypatch, target.store, "embedding_matrix")
        got = (target.similar_cases(query, k=3), target.similar_images(query, k=3))
        assert calls == want_k, "k, or k + the query's own study for images; with a prior its candidates"
        if target is off:
            assert [[r.study_uid for r in rs] for rs in got] == [[r.study_uid for r in rs] for rs in expected]
            assert matrix_calls == []
        else:
            assert [[r.study_uid for r in rs] for rs in got] != [[r.study_uid for r in rs] for rs in expected]
        monkeypatch.undo()
        for again in (on, off):
            _prior(monkeypatch, again, modality_weight=10.0, region_weight=10.0)


# --- the engine: stored studies, drafts, the cache (these add studies to the store: keep them last) --------------------


def test_a_stored_study_and_its_draft_take_its_stored_modality_and_region(engine, query_image, monkeypatch, tmp_path):
    off = engine.similar_cases(_as(query_image, "OT"), k=8)
    wanted = "MR" if off[0].modality == "CT" else "CT"
    study_uid = _write_study(tmp_path, 99, wanted, "CHEST")  # the query's pixels, stored without a report
    assert engine.ingest([tmp_path]).studies == (study_uid,)
    _prior(monkeypatch, engine, modality_weight=10.0)
    got = engine.similar_cases_for_study(study_uid, k=8)
    assert [r.study_uid for r in got] == _stable_groups(off, lambda r: r.modality == wanted)
    monkeypatch.setattr(engine, "draft_config", dataclasses.replace(engine.draft_config, top_k_cases=3))
    draft = engine.draft_for_study(study_uid)
    assert set(draft.source_cases) == {r.study_uid for r in got[:3]}, "drafted from the prior's top cases"
    assert set(draft.source_cases) != {r.study_uid for r in off[:3]}
    _prior(monkeypatch, engine, region_weight=10.0)
    chest_first = engine.similar_cases_for_study(study_uid, k=8)
    assert [r.study_uid for r in chest_first] == _stable_groups(off, lambda r: r.body_part == "CHEST")


def test_stored_regions_are_recomputed_only_when_the_store_or_the_head_changed(engine, query_image, monkeypatch,
                                                                              tmp_path):
    _prior(monkeypatch, engine, region_weight=10.0)
    query = _as(query_image, "OT", "ABDOMEN")
    computed = _count_calls(monkeypatch, engine_anatomy, "stored_regions")
    engine.similar_cases(query, k=8)
    engine.similar_images(query, k=8)
    assert len(computed) <= 1, "once per state of the store"
    before = len(computed)
    new_uid = _write_study(tmp_path, 50, "CT", "", "FINDINGS: A new case.")
    engine.ingest([tmp_path])  # a new image vector: a new embedding stamp
    got = engine.similar_cases(query, k=20)
    assert len(computed) == before + 1 and new_uid in computed[-1][0].meta[-1].values()
    abdomen = [r.study_uid for r in got if _region(r.body_part) == "Abdomen"]
    assert new_uid in abdomen and [r.study_uid for r in got[: len(abdomen)]] == abdomen
    engine.similar_images(query, k=20)
    engine.similar_cases(query, k=3)
    assert len(computed) == before + 1
    bias = engine.checkpoint.model.aux_head.bias
    with torch.no_grad():
        bias.copy_(torch.tensor([0.0, HEAD_BIAS, 0.0]))  # the head now says "Thorax"
    try:
        got = engine.similar_cases(query, k=20)
    finally:
        with torch.no_grad():
            bias.copy_(torch.tensor([0.0, 0.0, HEAD_BIAS]))
    assert len(computed) == before + 2, "another head: regions recomputed"
    assert [r.study_uid for r in got if r.body_part == "ABDOMEN"] == [r.study_uid for r in got[:3]]


# --- the module, on hand-made vectors ---------------------------------------------------------------------------------

HEAD = (CLASSES, np.array([[4.0, 0.0], [0.0, 4.0], [0.0, 0.0]], np.float32), np.zeros(3, np.float32))


def _softmax(logits) -> np.ndarray:
    odds = np.exp(np.asarray(logits, np.float64) - max(logits))
    return odds / odds.sum()


def test_stored_regions_take_the_header_where_it_maps_and_average_per_study():
    matrix = SimpleNamespace(
        keys=["a1", "a2", "b1", "c1"],
        vectors=np.array([[1, 0], [0, 1], [1, 0], [0, 0]], np.float32),
        meta=[{"study_uid": "A", "body_part": ""}, {"study_uid": "A", "body_part": "CHEST"},
              {"study_uid": "B", "body_part": "KNEE"}, {"study_uid": "C", "body_part": "Abdomen"}])
    regions = stored_regions(matrix, HEAD)
    head_a1 = _softmax([4.0, 0.0, 0.0])
    np.testing.assert_allclose(regions.instance_regions, [head_a1, [0, 1, 0], head_a1, [0, 0, 1]], atol=1e-6)
    assert regions.instances == {"a1": 0, "a2": 1, "b1": 2, "c1": 3}  # KNEE names no class: the head decides
    np.testing.assert_allclose(regions.study_regions[regions.studies["A"]], (head_a1 + [0, 1, 0]) / 2, atol=1e-6)
    np.testing.assert_allclose(regions.study_regions[regions.studies["B"]], head_a1, atol=1e-6)
    empty = stored_regions(SimpleNamespace(keys=[], vectors=np.zeros((0, 0), np.float32), meta=[]), HEAD)
    assert empty.instance_regions.shape == empty.study_regions.shape == (0, 3)


def test_query_anatomy_pools_its_images_and_falls_back_on_the_query_vector():
    query = np.array([0.0, 1.0], np.float32)
    anatomy = query_anatomy([("CT", "CHEST", ""), ("mr", "", "AXIAL BRAIN"), ("CT", "", "")], query, HEAD)
    assert anatomy.modalities == frozenset({"CT", "MR"})
    np.testing.assert_allclose(anatomy.regions, ([0, 1, 0] + np.array([1, 0, 0]) + _softmax([0.0, 4.0, 0.0])) / 3,
                               atol=1e-6)
    untagged = query_anatomy([], query, HEAD)
    assert untagged.modalities == frozenset()
    np.testing.assert_allclose(untagged.regions, _softmax([0.0, 4.0, 0.0]), atol=1e-6)
    assert query_anatomy([("CT", "CHEST", "")], query, None).regions is None


def test_rerank_adds_the_bonus_to_the_first_candidates_only():
    hits = [Hit(f"s{i}", 0.9 - 0.1 * i, {"modality": m}) for i, m in enumerate(["CR", "CR", "CT", "CT,MR"])]
    query = query_anatomy([("MR", "", "")], np.zeros(2, np.float32), None)
    assert [h.key for h in rerank(hits, query, None, AnatomyPriorConfig(modality_weight=0.25, candidates=4))] == [
        "s0", "s3", "s1", "s2"]  # 0.6 + 0.25 passes 0.8 but not 0.9
    assert [h.key for h in rerank(hits, query, None, AnatomyPriorConfig(modality_weight=1.0, candidates=3))] == [
        "s0", "s1", "s2", "s3"], "beyond the candidates: no bonus"
    assert rerank(hits, query, None, AnatomyPriorConfig(modality_weight=1.0, candidates=4))[0] is hits[3]
    assert rerank([], query, None, AnatomyPriorConfig(modality_weight=1.0)) == []


def test_the_region_cache_follows_the_embedding_stamp():
    store = SimpleNamespace(stamp="1:a", reads=0)

    def embedding_matrix(kind, model_id):
        store.reads += 1
        return SimpleNamespace(keys=["x"], vectors=np.array([[0.0, 1.0]], np.float32),
                               meta=[{"study_uid": "S", "body_part": ""}])

    store.embedding_matrix = embedding_matrix
    store.embedding_stamp = lambda kind, model_id: store.stamp
    ranking = AnatomyRanking(store)
    first = ranking.regions("m", HEAD)
    assert ranking.regions("m", HEAD) is first and store.reads == 1
    store.stamp = "2:b"
    assert ranking.regions("m", HEAD) is not first and store.reads == 2
    ranking.regions("other-model", HEAD)
    other_head = (CLASSES, HEAD[1], np.array([0.0, 0.0, 1.0], np.float32))
    ranking.regions("other-model", other_head)
    assert store.reads == 4
