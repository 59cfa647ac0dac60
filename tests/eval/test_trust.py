"""Trust measures: contradiction rates and diversity by hand, vectorised corpus BLEU against `corpus_bleu`,
the randomization test against a naive loop on the same shuffles, the best-baseline pick, the samples."""

from __future__ import annotations

import numpy as np
import pytest

from medcm.eval.metrics import corpus_bleu, mean_rouge_l
from medcm.eval.trust import (
    best_baseline,
    bleu_counts,
    bleu_from_counts,
    build_samples,
    contradiction_rates,
    diversity,
    paired_randomization,
    pick_samples,
    samples_markdown,
    trust_block,
)

WORDS = "left right lower upper lobe nodule effusion clear lungs normal small large pleural the a no is there".split()


def _texts(rng: np.random.Generator, count: int, low: int = 0, high: int = 14) -> list[str]:
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(low, high)))) for _ in range(count)]


def test_contradiction_rates_by_hand():
    texts = {"a": ["Left effusion. No effusion.", "No effusion.", "Right effusion. No left effusion."],
             "b": ["The lungs are clear. Right lower lobe nodule."], "empty": []}
    rates, described = contradiction_rates(texts)
    assert rates["a"] == {"rate": pytest.approx(1 / 3), "contradicting": 1, "texts": 3}
    assert rates["b"] == {"rate": 1.0, "contradicting": 1, "texts": 1}
    assert rates["empty"] == {"rate": None, "contradicting": 0, "texts": 0}
    assert described["a"][1:] == [[], []] and '"Left effusion."' in described["a"][0][0]


def test_diversity_by_hand():
    assert diversity(["No effusion.", "no  EFFUSION.", "Left nodule.", "No effusion."]) == {
        "distinct_share": 0.5, "top_share": 0.75, "texts": 4}
    assert diversity(["a", "b"]) == {"distinct_share": 1.0, "top_share": 0.5, "texts": 2}
    assert diversity([]) == {"distinct_share": None, "top_share": None, "texts": 0}


def test_vectorised_bleu_equals_corpus_bleu():
    rng = np.random.default_rng(0)
    for trial in range(5):
        hyps, refs = _texts(rng, 25), _texts(rng, 25, low=1)
        counts = bleu_counts(hyps, refs)
        assert counts.shape == (25, 10)
        assert float(bleu_from_counts(counts.sum(0))) == pytest.approx(corpus_bleu(hyps, refs)["BLEU-4"], abs=1e-12)
    # a batch of sums gives one score per row
    batch = bleu_from_counts(np.stack([counts.sum(0), counts[:10].sum(0)]))
    assert batch.shape == (2,) and batch[1] == pytest.approx(corpus_bleu(hyps[:10], refs[:10])["BLEU-4"], abs=1e-12)
    with pytest.raises(ValueError, match="2 hypotheses vs 1 references"):
        bleu_counts(["a", "b"], ["a"])


def _naive_p_values(a, b, refs, shuffles, seed):
    """The test written out: swap each query's pair on a coin flip, rescore both corpora from scratch."""
    swap = np.random.default_rng(seed).random((shuffles, len(refs))) < 0.5
    observed = {"BLEU-4": corpus_bleu(a, refs)["BLEU-4"] - corpus_bleu(b, refs)["BLEU-4"],
                "ROUGE-L": mean_rouge_l(a, refs) - mean_rouge_l(b, refs)}
    count = dict.fromkeys(observed, 0)
    for row in swap:
        x = [bi if s else ai for ai, bi, s in zip(a, b, row)]
        y = [ai if s else bi for ai, bi, s in zip(a, b, row)]
        diffs = {"BLEU-4": corpus_bleu(x, refs)["BLEU-4"] - corpus_bleu(y, refs)["BLEU-4"],
                 "ROUGE-L": mean_rouge_l(x, refs) - mean_rouge_l(y, refs)}
        for key in count:
            count[key] += abs(diffs[key]) >= abs(observed[key]) - 1e-12
    return {key: (count[key] + 1) / (shuffles + 1) for key in count}


def test_randomization_matches_a_naive_loop_on_the_same_shuffles():
    rng = np.random.default_rng(3)
    refs = _texts(rng, 12, low=4)
    a = [r if i % 3 else t for i, (r, t) in enumerate(zip(refs, _texts(rng, 12, low=4)))]  # close to the refs
    b = _texts(rng, 12, low=4)
    fast = paired_randomization(a, b, refs, shuffles=300, seed=5)
    naive = _naive_p_values(a, b, refs, 300, 5)
    for key in ("BLEU-4", "ROUGE-L"):
        assert fast[key]["p_value"] == pytest.approx(naive[key])
    assert fast["BLEU-4"]["draft"] == pytest.approx(corpus_bleu(a, refs)["BLEU-4"])
    assert fast["ROUGE-L"]["difference"] == pytest.approx(mean_rouge_l(a, refs) - mean_rouge_l(b, refs))


def test_randomization_extremes():
    rng = np.random.default_rng(4)
    refs = _texts(rng, 30, low=6)
    same = paired_randomization(refs, refs, refs, shuffles=500)
    assert same["BLEU-4"]["p_value"] == 1.0 and same["ROUGE-L"]["p_value"] == 1.0  # no difference at all
    clear = paired_randomization(refs, _texts(rng, 30, low=6), refs, shuffles=2000)
    assert clear["BLEU-4"]["p_value"] == pytest.approx(1 / 2001)  # the perfect system beats every shuffle
    assert clear["ROUGE-L"]["p_value"] == pytest.approx(1 / 2001)
    with pytest.raises(ValueError, match="expected equal non-zero counts"):
        paired_randomization(["a"], ["a", "b"], ["a"])


def test_best_baseline_skips_the_oracle_and_missing_metrics():
    baselines = {"random": {"BLEU-4": 0.01, "ROUGE-L": 0.2}, "consensus": {"BLEU-4": 0.03, "ROUGE-L": 0.1},
                 "oracle": {"BLEU-4": 0.5, "ROUGE-L": 0.5}}
    assert best_baseline(baselines, "BLEU-4") == "consensus"
    assert best_baseline(baselines, "ROUGE-L") == "random"
    assert best_baseline(baselines, "METEOR") is None


def test_trust_block_structure_and_numbers():
    refs = ["Left effusion.", "Right nodule.", "Clear lungs.", "No effusion."]
    texts = {"draft": ["Left effusion. No effusion.", "Right nodule.", "Clear lungs.", "No effusion."],
             "reference": refs, "consensus": ["No effusion."] * 4, "oracle": refs}
    metrics = {"consensus": {"BLEU-4": 0.1, "ROUGE-L": 0.3}, "oracle": {"BLEU-4": 1.0, "ROUGE-L": 1.0}}
    block = trust_block(texts, refs, "draft", {"consensus": texts["consensus"]}, metrics, shuffles=200, seed=1)
    assert set(block) == {"checker", "self_contradiction", "contradiction_examples", "diversity", "randomization"}
    assert block["self_contradiction"]["draft"]["rate"] == 0.25
    assert block["self_contradiction"]["oracle"]["rate"] == 0.0
    assert block["contradiction_examples"][0]["system"] == "draft" and block["contradiction_examples"][0]["query"] == 0
    assert block["diversity"]["consensus"] == {"distinct_share": 0.25, "top_share": 1.0, "texts": 4}
    tests = block["randomization"]["metrics"]
    assert set(tests) == {"BLEU-4", "ROUGE-L"} and tests["BLEU-4"]["baseline"] == "consensus"
    assert 0 < tests["BLEU-4"]["p_value"] <= 1 and block["randomization"]["shuffles"] == 200
    direct = paired_randomization(texts["draft"], texts["consensus"], refs, shuffles=200, seed=1)
    assert tests["ROUGE-L"]["p_value"] == direct["ROUGE-L"]["p_value"]
    assert tests["ROUGE-L"]["baseline_value"] == direct["ROUGE-L"]["baseline"]


def test_samples_are_a_seeded_ordered_choice():
    ids = [f"c{i:02d}" for i in range(50)]
    chosen = pick_samples(ids, 30, seed=0)
    assert len(chosen) == 30 == len(set(chosen)) and chosen == sorted(chosen)
    assert chosen == pick_samples(ids, 30, seed=0) != pick_samples(ids, 30, seed=1)
    assert pick_samples(ids[:7], 30) == ids[:7]


def test_samples_markdown_shows_draft_reference_sources_and_contradictions():
    ids = ["q1", "q2"]
    references = {"q1": "Small left effusion.", "q2": "Normal."}
    drafts = {"q1": "FINDINGS: Left effusion. No pleural effusion.", "q2": "FINDINGS: The lungs are clear."}
    details = {"q1": {"sources": [{"case_id": "p7", "score": 0.81234}],
                      "sentences": [{"section": "FINDINGS", "text": "Left effusion.", "sources": ["p7"]},
                                    {"section": "FINDINGS", "text": "No pleural effusion.", "sources": ["p7", "p9"]}]},
               "q2": {"sources": [], "sentences": []}}
    samples = build_samples(ids, references, drafts, details, count=30, seed=0)
    assert [s["case_id"] for s in samples] == ids
    assert len(samples[0]["contradictions"]) == 1 and samples[1]["contradictions"] == []
    text = samples_markdown({"model_id": "m1", "seed": 0, "samples": samples})
    assert "## 1. q1" in text and "## 2. q2" in text
    assert "- FINDINGS: No pleural effusion. _(from p7, p9)_" in text
    assert "> Small left effusion." in text and "p7 (0.812)" in text
    assert "**Self-contradictions found:**" in text and "_(empty draft)_" in text
