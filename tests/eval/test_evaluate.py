"""`medcm eval`: the gap-closed arithmetic, precision@k and recall curves on hand-made embeddings,
`evaluate()` end to end on a few synthetic cases with a tiny untrained model (with its trust block and
samples), the written files and the command line. METEOR (a ~9 s JVM start per call) is replaced by a stub
that records its calls."""

from __future__ import annotations

import dataclasses
import json
import zlib

import numpy as np

from medcm.config import AnatomyPriorConfig
import pytest

import medcm.eval.evaluate as evaluate_module
import medcm.eval.metrics as metrics_module
from medcm.checkpoint import load_checkpoint, save_checkpoint
from medcm.data.manifest import ManifestRecord, read_manifest
from medcm.report.draft import DraftConfig
from medcm.eval.baselines import consensus_report, oracle_reports
from medcm.eval.evaluate import (
    CURVE_KS,
    RANDOM_DRAWS,
    EmbeddedSet,
    draft_reports,
    evaluate,
    run_drafts,
    gap_closed,
    query_vectors,
    recall_curve,
    reference_findings,
    retrieval_metrics,
)
from medcm.eval.metrics import draft_metrics
from medcm.eval.report import markdown_table, output_paths, write_results
from medcm.eval.consistency import find_contradictions
from medcm.eval.trust import samples_markdown
from medcm.report.text import split_sentences

FAKE_METEOR = 0.25
BLEU_ROUGE = ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L"]
BASELINES = ["random", "random_same_modality_region", "consensus", "nearest_report", "oracle"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _patch_meteor(patcher, calls: list[int]) -> None:
    def fake_meteor(hypotheses, references, timeout_s=300.0):
        assert len(hypotheses) == len(references)
        calls.append(len(hypotheses))
        return FAKE_METEOR

    patcher.setattr(evaluate_module, "corpus_meteor", fake_meteor)
    patcher.setattr(metrics_module, "corpus_meteor", fake_meteor)


# --- gap_closed --------------------------------------------------------------------------------


def test_gap_closed_by_hand():
    draft = {"BLEU-4": 0.3, "ROUGE-L": 0.2, "BLEU-1": 0.0, "METEOR": 0.4}
    random = {"BLEU-4": 0.1, "ROUGE-L": 0.2, "BLEU-1": 0.1}
    oracle = {"BLEU-4": 0.5, "ROUGE-L": 0.2, "BLEU-1": 0.5}
    gap = gap_closed(draft, random, oracle)
    assert list(gap) == list(draft)
    assert gap["BLEU-4"] == pytest.approx(0.5)
    assert gap["ROUGE-L"] is None, "random == oracle: no gap to close"
    assert gap["BLEU-1"] == pytest.approx(-0.25), "below random is negative"
    assert gap["METEOR"] is None, "a metric the baselines lack"
    assert gap_closed({"BLEU-4": 0.5}, {"BLEU-4": 0.1}, {"BLEU-4": 0.5})["BLEU-4"] == pytest.approx(1.0)


# --- retrieval metrics on hand-made embeddings -------------------------------------------------


def _record(case_id: str, report: str = "FINDINGS: x.") -> ManifestRecord:
    return ManifestRecord(images=(f"/nowhere/{case_id}.png",), report=report, case_id=case_id)


def _hand_sets() -> tuple[EmbeddedSet, EmbeddedSet]:
    # Query images point along the axes; pool image j is nearest to query image j (p3 is far from all).
    queries = EmbeddedSet(
        records=[_record("c0"), _record("c1"), _record("c2")],
        image_emb=np.eye(3, dtype=np.float32),
        image_case=["c0", "c1", "c2"],
        image_meta=[{"region": "Head", "modality": "CT"}, {"region": "Thorax", "modality": "MR"}, {"modality": "CT"}],
        # c0's report matches image c0 best; image c1 prefers report c2 (0.8) over its own (0.6);
        # image c2 scores report c2 0.6, c0 0, c1 -0.8.
        report_emb=np.array([[1, 0, 0], [0, 0.6, -0.8], [0, 0.8, 0.6]], np.float32),
    )
    pool = EmbeddedSet(
        records=[_record(f"p{i}") for i in range(4)],
        image_emb=np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [-1, -1, -1]], np.float32) / [[1], [1], [1], [3**0.5]],
        image_case=["p0", "p1", "p2", "p3"],
        image_meta=[{"region": "Head", "modality": "CT"}, {"region": "Head", "modality": "CT"},
                    {"region": "Thorax", "modality": "MR"}, {"region": "Abdomen", "modality": "MR"}],
        report_emb=np.eye(4, 3, dtype=np.float32),
    )
    return queries, pool


def test_precision_at_k_against_the_pool():
    metrics = retrieval_metrics(*_hand_sets())
    # P@1: c0 -> p0 (Head = Head), c1 -> p1 (Head != Thorax); c2 has no region and is skipped.
    assert metrics["region_P@1"] == pytest.approx(0.5)
    # Modality P@1: c0 -> p0 CT = CT, c1 -> p1 CT != MR, c2 -> p2 MR != CT.
    assert metrics["modality_P@1"] == pytest.approx(1 / 3)
    # P@5 with 4 pool images (Head, Head, Thorax, Abdomen): c0 (Head) 2 of 4, c1 (Thorax) 1 of 4.
    assert metrics["region_P@5"] == pytest.approx(0.375)


def test_modality_prior_moves_image_neighbours_to_the_same_modality():
    queries, pool = _hand_sets()
    metrics = retrieval_metrics(queries, pool, AnatomyPriorConfig(modality_weight=2.0))
    # c1 (MR) now takes p2 (MR, Thorax) over p1 (CT, cosine 1); c2 (CT) takes p0 (CT) over p2.
    assert metrics["modality_P@1"] == pytest.approx(1.0)
    assert metrics["region_P@1"] == pytest.approx(1.0)
    off = retrieval_metrics(queries, pool, AnatomyPriorConfig())
    assert off == retrieval_metrics(queries, pool)


def test_case_recall_within_the_queries():
    metrics = retrieval_metrics(*_hand_sets())
    # image -> report ranks 1, 2, 1; report -> image: r0 -> c0 first, r1 -> c1 first, r2 ranks c1 over c2.
    assert metrics["image_to_report"] == pytest.approx({"R@1": 2 / 3, "R@5": 1.0, "R@10": 1.0, "median_rank": 1.0})
    assert metrics["report_to_image"] == pytest.approx({"R@1": 2 / 3, "R@5": 1.0, "R@10": 1.0, "median_rank": 1.0})
    assert metrics["image_to_report_curve"] == pytest.approx({"1": 2 / 3, "2": 1.0, "3": 1.0})


def test_recall_curve_stops_at_the_number_of_cases():
    queries, _ = _hand_sets()
    assert list(recall_curve(queries)) == [str(k) for k in CURVE_KS if k <= 3]


def test_precision_is_none_without_metadata_and_no_readable_query_is_an_error():
    queries, pool = _hand_sets()
    bare = dataclasses.replace(queries, image_meta=[{}, {}, {}])
    metrics = retrieval_metrics(bare, pool)
    assert metrics["region_P@1"] is None and metrics["region_P@5"] is None and metrics["modality_P@1"] is None
    empty = dataclasses.replace(queries, image_emb=np.zeros((0, 3), np.float32), image_case=[], image_meta=[])
    with pytest.raises(ValueError, match="no query image"):
        retrieval_metrics(empty, pool)


def test_query_vectors_are_normalised_means_of_a_cases_images():
    queries, _ = _hand_sets()
    two = dataclasses.replace(queries, image_emb=np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32),
                              image_case=["c0", "c0", "c2"])
    vectors = query_vectors(two)
    assert sorted(vectors) == ["c0", "c2"]
    np.testing.assert_allclose(vectors["c0"], [2**-0.5, 2**-0.5, 0], atol=1e-6)
    np.testing.assert_allclose(vectors["c2"], [0, 0, 1], atol=1e-6)


def _hash_embedder(texts: list[str]) -> np.ndarray:
    rows = [np.random.default_rng(zlib.crc32(t.encode())).normal(size=3) for t in texts]
    return np.array([r / np.linalg.norm(r) for r in rows]).reshape(len(texts), 3)


def test_draft_reports_read_only_the_pool_and_name_the_nearest_report_with_findings():
    queries, _ = _hand_sets()
    pool_records = [
        ManifestRecord(("/p/a.png",), "IMPRESSION: No findings section here.", "pA"),
        ManifestRecord(("/p/b.png",), "FINDINGS: Mass in the left lobe. Small effusion.\nIMPRESSION: Mass.", "pB"),
        ManifestRecord(("/p/c.png",), "FINDINGS: The lungs are clear.", "pC"),
    ]
    pool = EmbeddedSet(records=pool_records, image_emb=np.eye(3, dtype=np.float32), image_case=["pA", "pB", "pC"],
                       image_meta=[{}, {}, {}],
                       # query c0 = [1,0,0] scores pA 0.9 > pB 0.5 > pC 0; c1 = [0,1,0] scores pC highest.
                       report_emb=np.array([[0.9, 0.1, 0], [0.5, 0, 0.5], [0, 1, 0]], np.float32))
    drafts, nearest = draft_reports(queries, pool, _hash_embedder, DraftConfig(top_k_cases=2))
    assert sorted(drafts) == sorted(nearest) == ["c0", "c1", "c2"]
    # pA is the best report for c0 but has no FINDINGS: the next one's findings are the nearest report.
    assert nearest["c0"] == "Mass in the left lobe. Small effusion."
    assert nearest["c1"] == "The lungs are clear."
    pool_sentences = {s for r in pool_records for s in split_sentences(reference_findings(r))}
    for text in drafts.values():
        assert set(split_sentences(text)) <= pool_sentences, "a draft only reuses pool FINDINGS sentences"
    # c0 reads pA and pB only (top 2): its draft can only hold pB's findings.
    assert set(split_sentences(drafts["c0"])) <= {"Mass in the left lobe.", "Small effusion."}
    run = run_drafts(queries, pool, _hash_embedder, DraftConfig(top_k_cases=2))
    assert run.findings == drafts and run.nearest == nearest
    assert [s["case_id"] for s in run.details["c0"]["sources"]] == ["pA", "pB"]
    assert run.details["c0"]["sources"][0]["score"] == pytest.approx(0.9)
    for case, text in run.reports.items():
        sentences = run.details[case]["sentences"]
        assert text == "\n".join(f"{name}: {' '.join(s['text'] for s in sentences if s['section'] == name)}"
                                 for name in dict.fromkeys(s["section"] for s in sentences))
        assert all(set(s["sources"]) <= {"pA", "pB", "pC"} and s["sources"] for s in sentences)
    assert run.details["c0"]["sentences"] and all(s["sources"] == ["pB"] for s in run.details["c0"]["sentences"])


# --- evaluate() end to end ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint_dir(tiny_model, tiny_config, tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("eval-ckpt") / "ckpt", tiny_model, tiny_config)


@pytest.fixture(scope="module")
def checkpoint(checkpoint_dir):
    return load_checkpoint(checkpoint_dir)


@pytest.fixture(scope="module")
def eval_records(synthetic_manifest):
    """24 pool and 8 query cases; one pool case has no FINDINGS, one query case has no FINDINGS and
    one query case lists an image that does not exist."""
    records = read_manifest(synthetic_manifest)
    train = [r for r in records if r.split == "train"][:24]
    dev = [r for r in records if r.split == "dev"][:8]
    # Every case is Thorax; pool images are MR and query images CT: region P@k is 1, modality P@1 is 0.
    pool = [dataclasses.replace(r, meta={**r.meta, "region": "Thorax", "modality": "MR"}) for r in train]
    queries = [dataclasses.replace(r, meta={**r.meta, "region": "Thorax", "modality": "CT"}) for r in dev]
    pool[3] = dataclasses.replace(pool[3], report="IMPRESSION: Normal study.")
    queries[2] = dataclasses.replace(queries[2], report="IMPRESSION: Normal study.")
    queries[5] = dataclasses.replace(queries[5], images=(*queries[5].images, str(synthetic_manifest.parent / "missing.dcm")))
    # The demo's truth: odd queries hold a left pulmonary nodule, even ones are normal; the last query has none.
    truths = [{"finding": "pulmonary nodule", "side": "left"} if i % 2 else {"finding": "normal"} for i in range(7)]
    queries[:7] = [dataclasses.replace(r, meta={**r.meta, **truth}) for r, truth in zip(queries, truths)]
    return pool, queries


@pytest.fixture(scope="module")
def meteor_calls():
    return []


@pytest.fixture(scope="module")
def results(checkpoint, eval_records, meteor_calls):
    pool, queries = eval_records
    with pytest.MonkeyPatch.context() as patcher:
        _patch_meteor(patcher, meteor_calls)
        return evaluate(checkpoint, pool, queries, seed=0)


def test_results_structure_and_counts(results, checkpoint):
    assert set(results) == {"checkpoint", "model_id", "counts", "retrieval", "draft", "baselines", "gap_closed",
                            "trust", "draft_config", "anatomy_prior", "seed", "examples", "samples", "errors"}
    assert results["anatomy_prior"] is None  # evaluate() without a prior ranks by cosine
    assert results["checkpoint"] == str(checkpoint.path) and results["model_id"] == checkpoint.model_id
    assert results["counts"] == {"pool_cases": 24, "pool_images": 24, "query_cases": 8, "query_images": 8,
                                 "scored_drafts": 7, "unreadable_images": 1}
    assert len(results["errors"]) == 1 and "missing.dcm" in results["errors"][0]
    assert results["seed"] == 0
    assert results["draft_config"] == dataclasses.asdict(DraftConfig())
    json.dumps(results)  # JSON-ready


def test_results_retrieval(results):
    retrieval = results["retrieval"]
    for key in ("image_to_report", "report_to_image"):
        m = retrieval[key]
        assert set(m) == {"R@1", "R@5", "R@10", "median_rank"}
        assert 0.0 <= m["R@1"] <= m["R@5"] <= m["R@10"] == 1.0, "8 query cases: every case is in the top 10"
        assert 1 <= m["median_rank"] <= 8
    curve = retrieval["image_to_report_curve"]
    assert list(curve) == ["1", "2", "3", "5"]
    assert curve["1"] == retrieval["image_to_report"]["R@1"] and curve["5"] == retrieval["image_to_report"]["R@5"]
    assert list(curve.values()) == sorted(curve.values())
    assert retrieval["region_P@1"] == 1.0 and retrieval["region_P@5"] == 1.0
    assert retrieval["modality_P@1"] == 0.0


def test_results_draft_and_baselines(results, meteor_calls):
    assert list(results["baselines"]) == BASELINES
    for name, metrics in [("draft", results["draft"]), *results["baselines"].items()]:
        assert list(metrics) == [*BLEU_ROUGE, "METEOR"], name
        assert all(0.0 <= metrics[k] <= 1.0 for k in BLEU_ROUGE), name
        assert metrics["METEOR"] == FAKE_METEOR
    # One METEOR call per row; the random baselines score all their draws in one call.
    assert sorted(meteor_calls) == [7, 7, 7, 7, 7 * RANDOM_DRAWS, 7 * RANDOM_DRAWS]
    baselines = results["baselines"]
    assert baselines["oracle"]["BLEU-4"] >= baselines["random"]["BLEU-4"]
    assert baselines["oracle"]["BLEU-4"] >= baselines["random_same_modality_region"]["BLEU-4"]
    gap = results["gap_closed"]
    assert list(gap) == [*BLEU_ROUGE, "METEOR"]
    assert gap["METEOR"] is None, "the stubbed METEOR is the same for random and oracle: no gap"
    for key in BLEU_ROUGE:
        low, high = baselines["random"][key], baselines["oracle"][key]
        assert gap[key] == pytest.approx((results["draft"][key] - low) / (high - low)), key


def test_consensus_and_oracle_use_pool_findings_against_query_findings(results, eval_records):
    pool, queries = eval_records
    pool_findings = [f for f in map(reference_findings, pool) if f]
    refs = [f for f in map(reference_findings, queries) if f]
    assert len(pool_findings) == 23 and len(refs) == 7
    consensus = draft_metrics([consensus_report(pool_findings)] * 7, refs, meteor=False)
    oracle = draft_metrics(oracle_reports(refs, pool_findings), refs, meteor=False)
    assert {k: results["baselines"]["consensus"][k] for k in BLEU_ROUGE} == pytest.approx(consensus)
    assert {k: results["baselines"]["oracle"][k] for k in BLEU_ROUGE} == pytest.approx(oracle)


def test_examples_are_scored_query_cases_with_their_findings(results, eval_records):
    pool, queries = eval_records
    by_id = {r.case_id: r for r in queries}
    examples = results["examples"]
    assert len(examples) == 5
    pool_sentences = {s for r in pool for s in split_sentences(reference_findings(r))}
    for example in examples:
        record = by_id[example["case_id"]]
        assert example["reference"] == reference_findings(record) != ""
        assert set(split_sentences(example["draft"])) <= pool_sentences
    assert queries[2].case_id not in {e["case_id"] for e in examples}, "a query without FINDINGS is not scored"


def test_trust_block(results):
    trust = results["trust"]
    systems = ["draft", "draft_report", "reference", *BASELINES]
    assert list(trust["self_contradiction"]) == systems and list(trust["diversity"]) == systems
    for name in systems:
        rate, spread = trust["self_contradiction"][name], trust["diversity"][name]
        assert rate["texts"] == spread["texts"] == 7, name
        assert rate["rate"] == pytest.approx(rate["contradicting"] / 7), name
        assert 0 < spread["distinct_share"] <= 1 and 1 / 7 <= spread["top_share"] <= 1, name
    # one consensus report for every query: one distinct text taking every query
    assert trust["diversity"]["consensus"] == {"distinct_share": pytest.approx(1 / 7), "top_share": 1.0, "texts": 7}
    tests = trust["randomization"]["metrics"]
    assert list(tests) == ["BLEU-4", "ROUGE-L"] and trust["randomization"]["shuffles"] == 10_000
    for metric, row in tests.items():
        candidates = {k: v[metric] for k, v in results["baselines"].items() if k != "oracle"}
        assert row["baseline"] == max(candidates, key=candidates.get), metric
        assert row["draft"] == pytest.approx(results["draft"][metric]), metric
        assert 1 / 10_001 <= row["p_value"] <= 1.0
    if tests["BLEU-4"]["baseline"] not in ("random", "random_same_modality_region"):  # those test their first draw
        assert tests["BLEU-4"]["baseline_value"] == pytest.approx(results["baselines"][tests["BLEU-4"]["baseline"]]["BLEU-4"])


def test_findings_block_where_the_queries_carry_the_truth(results):
    trust = results["trust"]
    findings = trust["findings"]
    # scored: queries 0, 1, 3-7; query 7 has no truth; queries 1, 3, 5 hold a nodule, 0, 4, 6 are normal
    assert findings["studies"] == 6 and findings["truth"] == {"normal": 3, "pulmonary nodule (left)": 3}
    assert list(findings["systems"]) == list(trust["self_contradiction"]) and findings["primary"] == "draft_report"
    for name, system in findings["systems"].items():
        assert system["studies"] == 6 and system["tp"] + system["fn"] == 3, name
        assert 0 <= system["hallucination"]["studies"] <= 6, name
    report = findings["targets"]["self-contradicting drafts"]
    assert report["value"] == trust["self_contradiction"]["draft_report"]["contradicting"]
    assert "| finding F1 | >= 0.85 |" in markdown_table(results)


def test_samples_are_every_scored_draft_with_its_sources(results, eval_records):
    pool, queries = eval_records
    samples, pool_ids = results["samples"], {r.case_id for r in pool}
    scored = [r.case_id for r in queries if reference_findings(r)]
    assert [s["case_id"] for s in samples] == scored, "fewer than 30 scored drafts: all of them, in order"
    by_id = {r.case_id: r for r in queries}
    for sample in samples:
        assert sample["reference"] == reference_findings(by_id[sample["case_id"]])
        assert len(sample["sources"]) == DraftConfig().top_k_cases
        assert {s["case_id"] for s in sample["sources"]} <= pool_ids
        assert all(set(s["sources"]) <= pool_ids for s in sample["sentences"])
        assert sample["contradictions"] == [c.describe() for c in find_contradictions(sample["draft"])]
    contradicting = sum(bool(s["contradictions"]) for s in samples)
    assert contradicting == results["trust"]["self_contradiction"]["draft_report"]["contradicting"]


def test_seed_moves_only_the_random_baselines(results, checkpoint, eval_records, monkeypatch):
    _patch_meteor(monkeypatch, [])
    again = evaluate(checkpoint, *eval_records, seed=0)
    assert again["baselines"] == results["baselines"] and again["draft"] == results["draft"]
    other = evaluate(checkpoint, *eval_records, seed=1)
    assert other["retrieval"] == results["retrieval"] and other["draft"] == results["draft"]
    assert other["baselines"]["oracle"] == results["baselines"]["oracle"]
    assert other["baselines"]["random"] != results["baselines"]["random"]
    assert other["seed"] == 1


def test_evaluate_rejects_shared_or_empty_case_sets(checkpoint, eval_records):
    pool, queries = eval_records
    with pytest.raises(ValueError, match="both in the pool and the queries"):
        evaluate(checkpoint, pool, [*queries, pool[0]])
    with pytest.raises(ValueError, match="0 pool"):
        evaluate(checkpoint, [], queries)
    with pytest.raises(ValueError, match="0 query"):
        evaluate(checkpoint, pool, [])


# --- written files -----------------------------------------------------------------------------


def test_output_names_keep_a_dotted_stem():
    paths = output_paths("runs/eval-w0.1.json")  # a weight in the name: only ".json" is replaced
    assert {kind: p.name for kind, p in paths.items()} == {
        "json": "eval-w0.1.json", "markdown": "eval-w0.1.md", "samples": "eval-w0.1.samples.md",
        "recall_plot": "eval-w0.1.recall.png", "draft_plot": "eval-w0.1.draft.png"}


def test_write_results_writes_json_markdown_samples_and_two_pngs(results, tmp_path):
    paths = write_results(results, tmp_path / "out" / "res.json")
    assert paths == output_paths(tmp_path / "out" / "res.json")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["res.draft.png", "res.json", "res.md",
                                                                    "res.recall.png", "res.samples.md"]
    samples = paths["samples"].read_text(encoding="utf-8")
    assert samples == samples_markdown(results)
    assert all(f"## {i}. {s['case_id']}" in samples for i, s in enumerate(results["samples"], 1))
    assert json.loads(paths["json"].read_text(encoding="utf-8")) == results
    markdown = paths["markdown"].read_text(encoding="utf-8")
    assert markdown == markdown_table(results)
    assert "| system | BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 | ROUGE-L | METEOR |" in markdown
    assert "| direction | R@1 | R@5 | R@10 | median rank |" in markdown
    for name in ("draft (medcm)", "random pool report", "random report, same modality and region", "consensus report",
                 "nearest report (whole-report retrieval)", "oracle report (ceiling of whole-report retrieval)"):
        assert f"| {name} |" in markdown
    assert f"| region_P@1 | {results['retrieval']['region_P@1']:.4f} |" in markdown
    assert "## Trust" in markdown and "| metric | baseline | draft | baseline value | difference | p |" in markdown
    rate = results["trust"]["self_contradiction"]["draft"]
    assert f"| draft (medcm), FINDINGS as scored | {rate['rate']:.4f} ({rate['contradicting']}/7) |" in markdown
    assert "| consensus report | " in markdown.split("## Trust")[1]
    # a results dict from before the trust measures still renders
    old = {k: v for k, v in results.items() if k not in ("trust", "samples")}
    assert "## Trust" not in markdown_table(old) and "0 drafts" in samples_markdown(old)
    for key in ("recall_plot", "draft_plot"):
        data = paths[key].read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 1000
    # Writing again replaces the files and leaves no temporary ones behind.
    write_results(results, tmp_path / "out" / "res.json")
    assert len(list((tmp_path / "out").iterdir())) == 5


# --- the command line --------------------------------------------------------------------------


@pytest.fixture
def small_manifest(synthetic_manifest, tmp_path):
    """12 train and 4 dev synthetic cases, images by absolute path, no region/modality metadata."""
    lines = [json.loads(line) for line in synthetic_manifest.read_text(encoding="utf-8").splitlines()]
    chosen = [x for x in lines if x["split"] == "train"][:12] + [x for x in lines if x["split"] == "dev"][:4]
    for line in chosen:
        line["image"] = str(synthetic_manifest.parent / line["image"])
    path = tmp_path / "manifest.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in chosen), encoding="utf-8")
    return path


def test_cli_eval_writes_the_five_files(checkpoint_dir, small_manifest, tmp_path, monkeypatch, capsys):
    from medcm.cli.commands import main

    _patch_meteor(monkeypatch, [])
    out = tmp_path / "r.json"
    code = main(["eval", "--checkpoint", str(checkpoint_dir), "--pool-data", str(small_manifest), "--pool-split", "train",
                 "--query-data", str(small_manifest), "--query-split", "dev", "--out", str(out), "--quiet",
                 "--device", "cpu", "--top-k-cases", "3"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    for path in output_paths(out).values():
        assert path.is_file()
    results = json.loads(out.read_text(encoding="utf-8"))
    assert results["counts"]["pool_cases"] == 12 and results["counts"]["query_cases"] == 4
    assert results["counts"]["scored_drafts"] == 4
    assert results["draft_config"]["top_k_cases"] == 3
    assert results["retrieval"]["region_P@1"] is None, "the synthetic manifest has no region metadata"
    assert "| region_P@1 | n/a |" in (tmp_path / "r.md").read_text(encoding="utf-8")
    assert "image→report R@1/5/10" in captured.out and "region P@1 n/a" in captured.out
    assert str(out) in captured.out and str(output_paths(out)["samples"]) in captured.out
    assert results["trust"]["self_contradiction"]["draft"]["texts"] == 4 and len(results["samples"]) == 4


def test_cli_eval_unknown_split_is_a_one_line_error(checkpoint_dir, small_manifest, tmp_path, capsys):
    from medcm.cli.commands import main

    code = main(["eval", "--checkpoint", str(checkpoint_dir), "--pool-data", str(small_manifest), "--pool-split", "train",
                 "--query-data", str(small_manifest), "--query-split", "test", "--out", str(tmp_path / "r.json"),
                 "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("error: --query-split 'test'")
    assert "['dev', 'train']" in err
    assert not (tmp_path / "r.json").exists()
