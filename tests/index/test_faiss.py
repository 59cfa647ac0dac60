"""FaissIndex against VectorIndex on seeded data: the same hits, in the same order, for every kind of search."""

from __future__ import annotations

import gc
import sys

import numpy as np
import pytest

from medcm.index import faiss as index_faiss
from medcm.index.exact import VectorIndex
from medcm.index.faiss import FaissIndex, check_backend, with_backend

N, D = 3000, 32


@pytest.fixture(scope="module")
def faiss():
    return pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def exact() -> VectorIndex:
    """N rows, keys not in row order, ~300 studies; exact duplicates (ties) and rows lacking fields."""
    rng = np.random.default_rng(11)
    vectors = rng.standard_normal((N, D)).astype(np.float32)
    vectors[100:140] = vectors[50]  # 41 identical rows: ties broken by key, in and across groups
    vectors[2000:2010] = vectors[7] * 3.0  # same direction, other norm: ties after normalisation
    keys = [f"1.2.{i:05d}" for i in rng.permutation(N)]
    meta = []
    for i in range(N):
        m = {"modality": ["CT", "MR", "cr", "CT,MR"][i % 4], "study_uid": f"s{rng.integers(300)}"}
        if i % 9 == 0:
            del m["study_uid"]  # a group of its own
        if i % 5:
            m["body_part"] = ["CHEST", "head"][i % 2]
        meta.append(m)
    return VectorIndex.build(keys, vectors, meta, "test-model")


@pytest.fixture(scope="module")
def fast(faiss, exact) -> FaissIndex:
    return FaissIndex(exact)


def same(got, expected, atol: float = 1e-6) -> None:
    """Same hits in the same order; scores equal up to float32 rounding, which may swap near-ties only.

    The two compute the same float32 dot products with different BLAS kernels (as VectorIndex's own
    search and search_batch do), so two rows scoring within `atol` may come out in either order;
    exact ties (duplicated rows) are ordered by key in both.
    """
    assert [len(hits) for hits in got] == [len(hits) for hits in expected]
    for a, b in zip(got, expected):
        scores = np.array([h.score for h in b])
        np.testing.assert_allclose([h.score for h in a], scores, rtol=0, atol=atol)
        near_tie = np.zeros(len(b), bool)
        near_tie[1:] |= np.diff(scores) > -atol
        near_tie[:-1] |= np.diff(scores) > -atol
        for i, (x, y) in enumerate(zip(a, b)):
            assert (x.key, x.meta) == (y.key, y.meta) or near_tie[i], f"hit {i}: {x} against {y}"


SEARCHES = [
    ({"k": 1}, "k=1"),
    ({"k": 10}, "top-10"),
    ({"k": 60}, "k past the 41 tied rows"),
    ({"k": 10, "filters": {"modality": "mr"}}, "filter, comma-separated values"),
    ({"k": 10, "filters": {"modality": ["ct", "CR"], "body_part": "chest"}}, "two fields, rows lacking one"),
    ({"k": 10, "filters": {"body_part": "nowhere"}}, "filter matching nothing"),
    ({"k": 5000}, "k past N"),
    ({"k": 10, "exclude": "EXCLUDED"}, "exclude the current best rows"),
    ({"k": 10, "group_by": "study_uid"}, "group_by"),
    ({"k": 200, "group_by": "study_uid"}, "group_by, most groups"),
    ({"k": 10, "group_by": "modality", "filters": {"body_part": "head"}}, "group_by with few groups"),
    ({"k": 7, "group_by": "study_uid", "filters": {"modality": "ct"}, "exclude": "EXCLUDED"}, "all together"),
]


@pytest.mark.parametrize(("args", "case"), SEARCHES, ids=[case for _, case in SEARCHES])
def test_faiss_answers_as_exact_search(exact, fast, args, case):
    rng = np.random.default_rng(5)
    queries = rng.standard_normal((12, D))
    queries[0] = exact.vectors[exact.keys.index(exact.keys[100])] * 2  # a query tied with 41 rows
    queries[1] = -queries[2]
    if args.get("exclude") == "EXCLUDED":
        args = dict(args, exclude=[h.key for h in exact.search(queries[3], 25)] + ["absent"])
    same(fast.search_batch(queries, **args), exact.search_batch(queries, **args))
    same([fast.search(queries[0], **args)], [exact.search(queries[0], **args)])


def test_deep_cuts_grow_the_fetch_then_scan(faiss, monkeypatch):
    """12 groups of 250 near-identical rows: the 5 best groups lie ~1000 rows deep, past FAISS's first fetches."""
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((12, D))
    vectors = np.repeat(centres, 250, axis=0) + 0.01 * rng.standard_normal((3000, D))
    meta = [{"study_uid": f"g{i // 250}"} for i in range(3000)]
    exact = VectorIndex.build([f"k{i:04d}" for i in range(3000)], vectors, meta, "m")
    fast = FaissIndex(exact)
    scans = []
    monkeypatch.setattr(fast._exact, "search_batch", lambda *a, **kw: scans.append(1) or exact.search_batch(*a, **kw))
    query = centres[:2] + 0.1 * rng.standard_normal((2, D))
    same(fast.search_batch(query, 2, group_by="study_uid"), exact.search_batch(query, 2, group_by="study_uid"))
    same(fast.search_batch(query, 50), exact.search_batch(query, 50))
    assert scans == []  # settled by growing the fetch
    same(fast.search_batch(query, 5, group_by="study_uid"), exact.search_batch(query, 5, group_by="study_uid"))
    assert scans == [1]  # a quarter of the rows fetched and still unsettled: scanned exactly


def test_faiss_index_mirrors_its_source(faiss, exact, fast):
    assert (fast.keys, fast.meta, fast.dim, fast.model_id, len(fast)) == (
        exact.keys, exact.meta, exact.dim, exact.model_id, len(exact))
    assert exact.keys[3] in fast and "absent" not in fast
    assert np.array_equal(fast.vectors, exact.vectors) and not fast.vectors.flags.writeable
    kept = FaissIndex(exact).vectors  # a view into FAISS's storage keeps that storage alive
    gc.collect()
    assert np.array_equal(kept, exact.vectors)
    half = FaissIndex(VectorIndex.build(exact.keys, exact.vectors, exact.meta, "m", dtype="float16"))
    assert half.vectors.dtype == np.float32
    np.testing.assert_allclose(half.vectors, exact.vectors, atol=1e-3)
    empty = FaissIndex(VectorIndex(3, "e"))
    assert len(empty) == 0 and empty.search(np.ones(3)) == [] and empty.search_batch(np.ones((2, 3))) == [[], []]
    built = FaissIndex.build(["a", "b"], np.eye(2, 3), [{"x": "1"}, {}], "m")
    assert [h.key for h in built.search(np.array([0.0, 1.0, 0.0]), 2)] == ["b", "a"]
    assert with_backend(exact, "exact") is exact and isinstance(with_backend(exact, "faiss"), FaissIndex)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda f: f.search(np.ones(D + 1)), "query has shape \\(33,\\), expected \\(32,\\)"),
        (lambda f: f.search(np.zeros(D)), "norm 0.0"),
        (lambda f: f.search(np.ones(D), k=0), "k must be a positive int, got 0"),
        (lambda f: f.search(np.ones(D), filters={"modality": 5}), "filter 'modality'"),
        (lambda f: f.search_batch(np.ones(D)), "expected \\(Q, 32\\)"),
    ],
)
def test_invalid_input_is_refused_as_by_exact_search(fast, call, message):
    with pytest.raises(ValueError, match=message):
        call(fast)


def test_missing_faiss_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` now raises ImportError
    index = VectorIndex.build(["a"], np.ones((1, 4)), None, "m")
    for call in (lambda: FaissIndex(index), lambda: check_backend("faiss"), lambda: with_backend(index, "faiss")):
        with pytest.raises(ImportError, match=r"needs faiss-cpu, which is not installed: pip install 'medcm\[faiss\]'"):
            call()
    check_backend("exact")  # needs nothing
    with pytest.raises(ValueError, match=r"index backend is 'annoy', expected one of \('exact', 'faiss'\)"):
        check_backend("annoy")
    assert index_faiss.BACKENDS == ("exact", "faiss")
