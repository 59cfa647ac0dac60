"""VectorIndex against a brute-force reference: search, filters, grouping, chunking, upsert, persistence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medcm.index import exact as index_module
from medcm.index.exact import FORMAT, Hit, VectorIndex

N, D = 2000, 32
MODALITIES = ["CT", "MR", "cr", "Dx"]
BODY_PARTS = ["CHEST", "head", "Abdomen"]


@pytest.fixture(scope="module")
def data() -> tuple[list[str], np.ndarray, list[dict[str, str]]]:
    """N random rows in ~400 studies; every 7th row lacks body_part, every 11th lacks study_uid."""
    rng = np.random.default_rng(0)
    keys = [f"1.2.840.{i:05d}" for i in rng.permutation(N)]  # row order differs from key order
    vectors = rng.standard_normal((N, D)).astype(np.float32) * rng.uniform(0.5, 3.0, (N, 1)).astype(np.float32)
    meta = []
    for i in range(N):
        m = {"modality": MODALITIES[i % 4], "study_uid": f"study-{rng.integers(400)}"}
        if i % 7 != 0:
            m["body_part"] = BODY_PARTS[i % 3]
        if i % 11 == 0:
            del m["study_uid"]
        meta.append(m)
    return keys, vectors, meta


@pytest.fixture(scope="module")
def index(data) -> VectorIndex:
    return VectorIndex.build(*data, model_id="test-model")


def brute_force(data, query, k, filters=None, exclude=(), group_by=None) -> list[tuple[str, float]]:
    """Normalise in float64, dot, sort by (-score, key); the straightforward reading of the spec."""
    keys, vectors, meta = data
    v = vectors.astype(np.float64)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    scores = v @ (query / np.linalg.norm(query))
    rows = []
    for i, key in enumerate(keys):
        if key in exclude:
            continue
        ok = True
        for field, allowed in (filters or {}).items():
            allowed = {allowed} if isinstance(allowed, str) else set(allowed)
            ok &= field in meta[i] and meta[i][field].lower() in {a.lower() for a in allowed}
        if ok:
            rows.append((-scores[i], key, i))
    rows.sort()
    if group_by is not None:
        seen, best = set(), []
        for row in rows:
            group = meta[row[2]].get(group_by, ("own", row[1]))
            if group not in seen:
                seen.add(group)
                best.append(row)
        rows = best
    return [(key, -neg) for neg, key, _ in rows[:k]]


def check(hits: list[Hit], expected: list[tuple[str, float]]) -> None:
    assert [h.key for h in hits] == [key for key, _ in expected]
    np.testing.assert_allclose([h.score for h in hits], [s for _, s in expected], atol=1e-5)


def same(got: list[list[Hit]], expected: list[list[Hit]]) -> None:
    """Same keys, order and meta; scores equal up to float32 rounding (BLAS kernels differ by batch size)."""
    assert [[(h.key, h.meta) for h in hits] for hits in got] == [[(h.key, h.meta) for h in hits] for hits in expected]
    for a, b in zip(got, expected):
        np.testing.assert_allclose([h.score for h in a], [h.score for h in b], rtol=0, atol=1e-6)


CASES = [
    {},
    {"filters": {"modality": "CT"}},
    {"filters": {"modality": ["ct", "MR"], "body_part": "CHEST"}},
    {"filters": {"body_part": {"HEAD", "abdomen"}}},
    {"filters": {"modality": "PT"}},
    {"exclude": None},  # filled in with real keys below
    {"group_by": "study_uid"},
    {"group_by": "study_uid", "filters": {"modality": "cr"}, "exclude": None},
]


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("k", [1, 5, 37, 5000])
def test_search_matches_brute_force(data, index, case, k):
    kwargs = dict(CASES[case])
    if "exclude" in kwargs:
        kwargs["exclude"] = set(data[0][:300:3])
    rng = np.random.default_rng(case * 100 + k)
    for _ in range(3):
        query = rng.standard_normal(D)
        check(index.search(query, k, **kwargs), brute_force(data, query, k, **kwargs))


def test_search_batch_equals_repeated_search(data, index):
    queries = np.random.default_rng(1).standard_normal((70, D)).astype(np.float32)  # > one query block
    for kwargs in ({}, {"filters": {"modality": "mr"}, "group_by": "study_uid", "exclude": data[0][:50]}):
        batch = index.search_batch(queries, 7, **kwargs)
        same(batch, [index.search(q, 7, **kwargs) for q in queries])


@pytest.mark.parametrize("chunk_rows", [1, 3, 64, 1999])
def test_chunking_gives_identical_results(data, index, chunk_rows):
    small = VectorIndex.build(*data, model_id="test-model", chunk_rows=chunk_rows)
    queries = np.random.default_rng(2).standard_normal((4, D))
    for kwargs in ({}, {"filters": {"modality": "CT"}}, {"filters": {"modality": "DX", "body_part": "head"}},
                   {"group_by": "study_uid"}, {"exclude": data[0][::2]}):
        for k in (1, 10, 300):
            same(small.search_batch(queries, k, **kwargs), index.search_batch(queries, k, **kwargs))


def test_ties_are_broken_by_key():
    # dyadic unit vectors: every dot product is exact, so equal scores really are equal
    vectors = np.zeros((8, 4), np.float32)
    vectors[:, 0] = 1.0
    vectors[[1, 5], :] = 0.5
    keys = ["h", "c", "f", "a", "g", "b", "e", "d"]
    meta = [{"study_uid": s} for s in ["s1", "s1", "s2", "s2", "s3", "s3", "s1", "s2"]]
    for chunk_rows in (1, 2, 3, 100):
        index = VectorIndex.build(keys, vectors, meta, "m", chunk_rows=chunk_rows)
        hits = index.search(np.array([1.0, 0, 0, 0]), k=3)
        assert [(h.key, h.score) for h in hits] == [("a", 1.0), ("d", 1.0), ("e", 1.0)]
        assert [h.key for h in index.search(np.array([1.0, 0, 0, 0]), k=10)] == ["a", "d", "e", "f", "g", "h", "b", "c"]
        grouped = index.search(np.array([1.0, 0, 0, 0]), k=10, group_by="study_uid")
        assert [(h.key, h.meta["study_uid"]) for h in grouped] == [("a", "s2"), ("e", "s1"), ("g", "s3")]


def test_k_beyond_size_empty_index_and_no_match(data, index):
    assert len(index.search(np.ones(D), k=10 * N)) == N
    empty = VectorIndex(D, "m")
    assert len(empty) == 0 and empty.keys == []
    assert empty.search(np.ones(D)) == [] and empty.search_batch(np.ones((2, D))) == [[], []]
    assert empty.search(np.ones(D), group_by="study_uid", filters={"modality": "CT"}) == []
    assert index.search(np.ones(D), filters={"no_such_field": "x"}) == []
    assert index.search(np.ones(D), filters={"modality": []}) == []


def test_filters_are_case_insensitive_and_skip_rows_lacking_the_field(data, index):
    hits = index.search(np.ones(D), k=N, filters={"body_part": "cHeSt"})
    assert hits and all(h.meta["body_part"].lower() == "chest" for h in hits)
    assert len(hits) == sum(m.get("body_part", "").lower() == "chest" for m in data[2])
    assert len(index.search(np.ones(D), k=N, filters={"modality": {"CT", "mr"}})) == N // 2


def test_none_meta_values_count_as_missing():
    meta = [{"modality": "CT", "body_part": None}, {"modality": None}]
    index = VectorIndex.build(["a", "b"], np.eye(2), meta, "m")
    assert index.meta == [{"modality": "CT"}, {}]
    assert [h.key for h in index.search(np.ones(2), filters={"modality": "ct"})] == ["a"]
    assert index.search(np.ones(2), filters={"body_part": "None"}) == []


def test_hits_carry_meta_copies(data, index):
    hit = index.search(data[1][5], k=1)[0]
    assert hit.key == data[0][5] and hit.meta == data[2][5] and hit.score == pytest.approx(1.0, abs=1e-6)
    hit.meta["modality"] = "changed"
    assert index.search(data[1][5], k=1)[0].meta == data[2][5]


def test_add_upserts_and_remove_compacts(data):
    keys, vectors, meta = data
    index = VectorIndex(D, "m")
    for a in range(0, 1000, 100):  # many small adds exercise the growing buffer
        index.add(keys[a : a + 100], vectors[a : a + 100], meta[a : a + 100])
    assert index.keys == keys[:1000] and len(index) == 1000
    assert np.array_equal(index.vectors, VectorIndex.build(keys[:1000], vectors[:1000], meta[:1000], "m").vectors)

    index.add([keys[3], "new"], -vectors[[3, 4]], [{"modality": "US"}, {}])  # one replaced, one appended
    assert len(index) == 1001 and index.keys[3] == keys[3] and index.keys[-1] == "new"
    assert index.search(-vectors[3], k=1)[0] == Hit(keys[3], pytest.approx(1.0, abs=1e-6), {"modality": "US"})
    assert [h.key for h in index.search(np.ones(D), filters={"modality": "us"})] == [keys[3]]

    assert index.remove([keys[3], keys[10], "absent", keys[10]]) == 2
    assert index.remove(["absent"]) == 0 and index.remove([]) == 0
    assert len(index) == 999 and keys[3] not in index and keys[10] not in index and "new" in index
    assert index.search(np.ones(D), filters={"modality": "us"}) == []

    rows = [i for i in range(1000) if i not in (3, 10)]
    expected = VectorIndex.build([keys[i] for i in rows] + ["new"], np.vstack([vectors[rows], -vectors[4]]),
                                 [meta[i] for i in rows] + [{}], "m")
    assert index.keys == expected.keys and index.meta == expected.meta
    assert np.array_equal(index.vectors, expected.vectors)
    queries = np.random.default_rng(3).standard_normal((3, D))
    for kwargs in ({}, {"filters": {"modality": "CT"}}, {"group_by": "study_uid"}):
        assert index.search_batch(queries, 20, **kwargs) == expected.search_batch(queries, 20, **kwargs)


def test_rows_are_normalised_and_input_left_alone(data):
    vectors = data[1][:10].copy()
    index = VectorIndex.build(data[0][:10], vectors, None, "m")
    np.testing.assert_allclose(np.linalg.norm(index.vectors, axis=1), 1.0, atol=1e-6)
    assert np.array_equal(vectors, data[1][:10]) and index.vectors.dtype == np.float32
    assert not index.vectors.flags.writeable and index.search(vectors[0], k=1)[0].meta == {}


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda v: VectorIndex.build(["a", "b", "a"], v[:3], None, "m"), "duplicate key 'a'"),
        (lambda v: VectorIndex.build(["a", "b"], v[:3], None, "m"), r"shape \(3, 32\), expected \(2, 32\)"),
        (lambda v: VectorIndex.build(["a"], v[0], None, "m"), "expected \\[N, D\\]"),
        (lambda v: VectorIndex.build(["a", "b"], np.vstack([v[0], 0 * v[1]]), None, "m"), "key 'b' has norm 0"),
        (lambda v: VectorIndex.build(["a", "b"], np.vstack([v[0], v[1] * np.nan]), None, "m"), "key 'b'"),
        (lambda v: VectorIndex.build(["a", "b"], v[:2], [{}], "m"), "1 meta entries for 2 keys"),
        (lambda v: VectorIndex.build(["a"], v[:1], [{"x": 1}], "m"), "dict of str to str"),
        (lambda v: VectorIndex.build([1], v[:1], None, "m"), "expected str"),
        (lambda v: VectorIndex(0, "m"), "dim must be a positive int"),
        (lambda v: VectorIndex.build(["a"], v[:1], None, "m").add(["b"], v[:1, :16]), r"\(1, 16\), expected \(1, 32\)"),
        (lambda v: VectorIndex.build(["a"], v[:1], None, "m").search(v[0, :16]), r"\(16,\), expected \(32,\)"),
        (lambda v: VectorIndex.build(["a"], v[:1], None, "m").search(v[:2]), r"\(2, 32\), expected \(32,\)"),
        (lambda v: VectorIndex.build(["a"], v[:1], None, "m").search_batch(v[:2, :8]), r"expected \(Q, 32\)"),
        (lambda v: VectorIndex.build(["a"], v[:1], None, "m").search(0 * v[0]), "query 0 has norm 0"),
        (lambda v: VectorIndex.build(["a"], v[:1], None, "m").search(v[0], k=0), "k must be a positive int"),
        (lambda v: VectorIndex.build(["a"], v[:1], None, "m").search(v[0], filters={"x": [1]}), "filter 'x'"),
        (lambda v: VectorIndex.build(["a"], v[:1], None, "m").search(v[0], filters={"x": 5}), "filter 'x'"),
    ],
)
def test_invalid_input_is_refused(data, call, message):
    with pytest.raises(ValueError, match=message):
        call(data[1])


def test_save_load_round_trip_is_exact(data, index, tmp_path):
    folder = index.save(tmp_path / "idx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no staging folders left behind
    info = json.loads((folder / "index.json").read_text())
    assert info == {"format": FORMAT, "format_version": 1, "model_id": "test-model", "dim": D, "count": N,
                    "dtype": "float32"}
    loaded = VectorIndex.load(folder)
    assert np.array_equal(loaded.vectors, index.vectors) and loaded.vectors.dtype == np.float32
    assert loaded.keys == index.keys and loaded.meta == index.meta
    assert (loaded.dim, loaded.model_id) == (D, "test-model")
    query = np.random.default_rng(4).standard_normal(D)
    assert loaded.search(query, 9, group_by="study_uid") == index.search(query, 9, group_by="study_uid")

    smaller = VectorIndex.build(data[0][:5], data[1][:5], None, "other")
    smaller.save(folder)  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]
    reloaded = VectorIndex.load(folder)
    assert len(reloaded) == 5 and reloaded.model_id == "other"
    empty = VectorIndex.load(VectorIndex(3, "e").save(tmp_path / "empty"))
    assert len(empty) == 0 and empty.dim == 3 and empty.search(np.ones(3)) == []


INFO = {"format": FORMAT, "format_version": 1, "model_id": "m", "dim": 4, "count": 3}


def test_failed_save_leaves_previous_index(data, tmp_path, monkeypatch):
    folder = VectorIndex.build(data[0][:5], data[1][:5], None, "first").save(tmp_path / "idx")

    def crash(path, value):
        raise OSError("disk full")

    monkeypatch.setattr(index_module, "_write_json", crash)
    with pytest.raises(OSError, match="disk full"):
        VectorIndex.build(data[0][:9], data[1][:9], None, "second").save(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]
    assert VectorIndex.load(folder).model_id == "first" and len(VectorIndex.load(folder)) == 5


def corrupt(folder: Path, name: str, content) -> None:
    if name.endswith(".npy"):
        np.save(folder / name, content, allow_pickle=True)
    else:
        (folder / name).write_text(content if isinstance(content, str) else json.dumps(content))


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("index.json", {"format": "something-else", "format_version": 1}, "expected 'medcm-index' v1"),
        ("index.json", "{not json", "not valid JSON"),
        ("index.json", [], "expected a dict"),
        ("index.json", {"format": FORMAT, "format_version": 1, "dim": "4", "count": 3}, "expected ints"),
        ("index.json", dict(INFO, count=4), "expected float32 \\(4, 4\\)"),
        ("vectors.npy", np.array([{"a": 1}, None], dtype=object), "unreadable without pickle"),
        ("vectors.npy", np.zeros((3, 4), np.float64), "float64 \\(3, 4\\), expected float32 \\(3, 4\\)"),
        ("vectors.npy", np.zeros((3, 5), np.float32), "expected float32 \\(3, 4\\)"),
        ("keys.json", ["a", "b"], "2 keys and 3 meta entries, expected 3"),
        ("keys.json", ["a", "b", "a"], "duplicate key 'a'"),
        ("meta.json", [{}, {}, {"x": 1}], "dict of str to str"),
        ("meta.json", [{}, {}, []], "dict of str to str"),
        ("index.json", dict(INFO, dtype="float64"), "expected float64 \\(3, 4\\) with float64 one of"),
        ("vectors.npy", np.zeros((3, 4), np.float16), "float16 \\(3, 4\\), expected float32 \\(3, 4\\)"),
        ("index.json", dict(INFO, dtype="float16"), "float32 \\(3, 4\\), expected float16 \\(3, 4\\)"),
    ],
)
def test_load_refuses_corrupt_or_foreign_folders(tmp_path, name, content, message):
    folder = VectorIndex.build(["a", "b", "c"], np.eye(3, 4, dtype=np.float32), None, "m").save(tmp_path / "idx")
    corrupt(folder, name, content)
    with pytest.raises(ValueError, match=message):
        VectorIndex.load(folder)


def test_load_of_missing_or_incomplete_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no index.json"):
        VectorIndex.load(tmp_path / "nowhere")
    folder = VectorIndex.build(["a"], np.ones((1, 4)), None, "m").save(tmp_path / "idx")
    (folder / "vectors.npy").unlink()
    with pytest.raises(FileNotFoundError, match="no vectors.npy"):
        VectorIndex.load(folder)
    (folder / "vectors.npy").write_bytes(b"\x93NUMPY\x01\x00")  # truncated header
    with pytest.raises(ValueError, match="vectors.npy"):
        VectorIndex.load(folder)


def test_comma_separated_meta_values_match_on_any_part():
    vectors = np.eye(3, dtype=np.float32)
    meta = [{"modality": "CT,MR"}, {"modality": "MR"}, {"modality": "CTA"}]
    index = VectorIndex.build(["both", "mr", "cta"], vectors, meta, "m")
    query = np.ones(3, np.float32)
    assert sorted(h.key for h in index.search(query, k=3, filters={"modality": "ct"})) == ["both"]
    assert sorted(h.key for h in index.search(query, k=3, filters={"modality": "MR"})) == ["both", "mr"]


def test_float16_storage_matches_float32_at_half_the_size(tmp_path):
    """Seeded 20k x 64 rows: top-10 of float16 storage against float32, scores within 1e-3, file half the size."""
    rng = np.random.default_rng(7)
    n, d = 20_000, 64
    keys = [f"k{i}" for i in range(n)]
    vectors = rng.standard_normal((n, d)).astype(np.float32)
    meta = [{"modality": MODALITIES[i % 4], "study_uid": f"s{i // 5}"} for i in range(n)]
    full = VectorIndex.build(keys, vectors, meta, "m", chunk_rows=3000)
    half = VectorIndex.build(keys, vectors, meta, "m", chunk_rows=3000, dtype="float16")
    assert half.vectors.dtype == np.float16 and half.vectors.nbytes * 2 == full.vectors.nbytes
    queries = rng.standard_normal((50, d))
    found = expected = 0
    for args in [{}, {"filters": {"modality": "ct"}}, {"group_by": "study_uid"}]:
        for got, want in zip(half.search_batch(queries, 10, **args), full.search_batch(queries, 10, **args)):
            np.testing.assert_allclose([h.score for h in got], [h.score for h in want], rtol=0, atol=1e-3)
            found += len({h.key for h in got} & {h.key for h in want})
            expected += len(want)
    assert found / expected >= 0.99, f"recall@10 of float16 against float32: {found / expected:.4f}"

    folder_full, folder_half = full.save(tmp_path / "f32"), half.save(tmp_path / "f16")
    size_full, size_half = ((f / "vectors.npy").stat().st_size for f in (folder_full, folder_half))
    assert abs(size_half / size_full - 0.5) < 0.01
    loaded = VectorIndex.load(folder_half)
    assert loaded.dtype == np.float16 and np.array_equal(loaded.vectors, half.vectors)
    assert json.loads((folder_half / "index.json").read_text())["dtype"] == "float16"
    assert loaded.search(queries[0], 10) == half.search(queries[0], 10)
    converted = VectorIndex.load(folder_full, dtype="float16")  # a float32 folder read into half the memory
    assert np.array_equal(converted.vectors, half.vectors)


def test_float16_upsert_remove_and_bad_dtype(data):
    keys, vectors, meta = data
    index = VectorIndex(D, "m", dtype="float16")
    index.add(keys[:10], vectors[:10], meta[:10])
    index.add(keys[5:20], vectors[5:20], meta[5:20])  # 5 replaced, 10 appended
    index.remove(keys[:2])
    expected = VectorIndex.build(keys[2:20], vectors[2:20], meta[2:20], "m", dtype="float16")
    assert index.keys == expected.keys and np.array_equal(index.vectors, expected.vectors)
    assert index.vectors.dtype == np.float16
    with pytest.raises(ValueError, match="dtype is 'int8', expected one of"):
        VectorIndex(D, "m", dtype="int8")
