"""`medcm eval`'s history block: each query's History blended into its query, beside the image-only arm;
by hand on made-up embeddings, then through `evaluate()` on a few synthetic cases with a tiny untrained model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import medcm.eval.evaluate as evaluate_module
import medcm.eval.metrics as metrics_module
from medcm.checkpoint import load_checkpoint, save_checkpoint
from medcm.config import QuestionConfig
from medcm.data.manifest import ManifestRecord, read_manifest
from medcm.eval.evaluate import EmbeddedSet, evaluate, retrieval_metrics
from medcm.eval.history import blended_queries, history_block, history_lines, history_texts, summary
from medcm.eval.report import markdown_table


def _record(case_id: str, history: str = "") -> ManifestRecord:
    return ManifestRecord(images=(f"/nowhere/{case_id}.png",), report="FINDINGS: x.", case_id=case_id,
                          meta={"history": history} if history else {})


def _queries() -> EmbeddedSet:
    # Image c0 points at report c1 rather than its own; c0's History points at its own report (axis 2).
    return EmbeddedSet(records=[_record("c0", "Headache."), _record("c1")],
                       image_emb=np.array([[1, 0, 0], [0, 1, 0]], np.float32), image_case=["c0", "c1"],
                       image_meta=[{"region": "Head"}, {"region": "Thorax"}],
                       report_emb=np.array([[0, 0.3, 0.954], [0.9, 0.436, 0]], np.float32))


def test_only_records_with_a_history_count():
    assert history_texts([_record("a", " Fall. "), _record("b"), _record("c", "   ")]) == {"a": "Fall."}


def test_the_history_moves_a_querys_own_report_up_and_the_block_has_both_arms():
    queries = _queries()
    pool = dataclasses.replace(queries, records=[_record("p0"), _record("p1")])
    without = summary(retrieval_metrics(queries, pool), {"BLEU-4": 0.1})
    encode = lambda texts: np.array([[0, 0, 1.0]] * len(texts), np.float32)  # noqa: E731
    block = history_block(queries, encode, 0.6, without, lambda blended: retrieval_metrics(blended, pool),
                          lambda per_case: {"BLEU-4": float(len(per_case))})
    assert (block["queries"], block["queries_with_history"], block["weight"]) == (2, 1, 0.6)
    assert block["without"]["image_to_report"]["R@1"] == 0.5  # c0's image prefers c1's report
    assert block["with"]["image_to_report"]["R@1"] == 1.0  # its History brings its own report first
    assert block["with"]["draft"] == {"BLEU-4": 1.0}  # one case drafted from a blended query
    blended, per_case = blended_queries(queries, {"c0": np.array([0, 0, 1.0], np.float32)}, 0.6)
    np.testing.assert_allclose(blended.image_emb[1], [0, 1, 0])  # no History: the image row as it was
    np.testing.assert_allclose(per_case["c0"], np.array([0.4, 0, 0.6]) / np.hypot(0.4, 0.6), rtol=1e-6)
    assert history_lines(block)[6].startswith("| without History | 0.5000")
    assert history_block(dataclasses.replace(queries, records=[_record("c0"), _record("c1")]), encode, 0.6, without,
                         lambda b: {}, lambda p: {}) is None


@pytest.fixture(scope="module")
def checkpoint(tiny_model, tiny_config, tmp_path_factory):
    return load_checkpoint(save_checkpoint(tmp_path_factory.mktemp("history-ckpt") / "ckpt", tiny_model, tiny_config))


@pytest.fixture(scope="module")
def records(synthetic_manifest):
    """12 pool and 6 query cases; 5 queries carry a History."""
    all_records = read_manifest(synthetic_manifest)
    pool = [r for r in all_records if r.split == "train"][:12]
    queries = [r for r in all_records if r.split == "dev"][:6]
    histories = ["Cough.", "Chest pain, rule out effusion.", "", "Fever; pneumonia?", "Trauma.", "Dyspnoea."]
    return pool, [dataclasses.replace(r, meta={**r.meta, "history": h}) for r, h in zip(queries, histories)]


def test_evaluate_reports_retrieval_and_draft_with_and_without_the_history(checkpoint, records, monkeypatch):
    monkeypatch.setattr(evaluate_module, "corpus_meteor", lambda hyps, refs, timeout_s=300.0: 0.25)
    monkeypatch.setattr(metrics_module, "corpus_meteor", lambda hyps, refs, timeout_s=300.0: 0.25)
    pool, queries = records
    off = evaluate(checkpoint, pool, queries, question=QuestionConfig(weight=0.0))["history"]
    assert (off["queries"], off["queries_with_history"], off["weight"]) == (6, 5, 0.0)
    assert off["with"] == off["without"]  # weight 0: the blend is the image query
    results = evaluate(checkpoint, pool, queries, question=QuestionConfig(weight=1.0))
    block = results["history"]
    assert set(block["with"]) == set(block["without"]) == {"image_to_report", "region_P@1", "region_P@5",
                                                           "modality_P@1", "draft"}
    assert block["without"]["draft"] == results["draft"]
    assert block["without"]["image_to_report"] == results["retrieval"]["image_to_report"]
    assert block["with"]["image_to_report"] != block["without"]["image_to_report"]  # text alone ranks otherwise
    assert "## The clinical question (History)" in markdown_table(results)
