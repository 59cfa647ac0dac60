"""Report metrics: BLEU/ROUGE-L against hand-computed values and against pycocoevalcap,
the oracle pick, METEOR when Java and the jar are present, and input errors."""

from __future__ import annotations

import math
import random

import pytest

from medcm.eval.metrics import (
    NgramStats,
    best_by_sentence_bleu,
    corpus_bleu,
    corpus_meteor,
    draft_metrics,
    mean_rouge_l,
    meteor_available,
    rouge_l,
    sentence_bleu,
    tokenize,
)

TOL = 1e-9  # pycocoevalcap's smoothing (1e-15 / 1e-9) moves the exact values by < 1e-9
TINY, SMALL = 1e-15, 1e-9

CAT_HYP, CAT_REF = "The cat sat on the mat.", "the cat is on the mat"
# hyp: the cat sat on the mat (6 tokens)   ref: the cat is on the mat (6 tokens)
# 1-grams: the x2, cat, on, mat match -> 5/6
# 2-grams: "the cat", "on the", "the mat" match of 5 -> 3/5
# 3-grams: "on the mat" of 4 -> 1/4
# 4-grams: none of 3 -> smoothed (0 + 1e-15) / (3 + 1e-9)
# equal lengths -> brevity penalty 1
CAT_P = [5 / 6, 3 / 5, 1 / 4, TINY / 3]

NAD_HYP = "No acute disease."
NAD_REFS = ["No acute cardiopulmonary disease.", "No acute disease is seen in the chest."]
# hyp: no acute disease (3)   refs: 4 and 8 tokens; n-grams clip against either reference
# 1-grams 3/3, 2-grams "no acute" + "acute disease" 2/2, 3-grams "no acute disease" 1/1,
# 4-grams: no hypothesis 4-gram -> (0 + 1e-15) / (0 + 1e-9) = 1e-6
# 'closest' reference length is 4 (|3-4| < |3-8|): brevity penalty exp(1 - 4/3)
NAD_P = [1.0, 1.0, 1.0, 1e-6]


def _bleu(precisions, bp):
    return [bp * math.prod(precisions[: k + 1]) ** (1 / (k + 1)) for k in range(4)]


def _close(got: dict, expected: list[float], rel: float = 0.0) -> None:
    assert list(got) == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"]
    for value, want in zip(got.values(), expected):
        assert value == pytest.approx(want, abs=TOL, rel=rel)


def test_tokenize_normalises():
    assert tokenize("The Patient's  lungs: CLEAR, 2.3 cm.") == ["the", "patients", "lungs", "clear", "2.3", "cm"]


def test_bleu_by_hand_single_reference():
    # BLEU-1 5/6, BLEU-2 sqrt(5/6 * 3/5) = sqrt(1/2), BLEU-3 cbrt(1/8) = 1/2
    _close(corpus_bleu([CAT_HYP], [CAT_REF]), [5 / 6, math.sqrt(0.5), 0.5, (0.125 * TINY / 3) ** 0.25],
           rel=1e-6)
    assert sentence_bleu(CAT_HYP, CAT_REF, n=3) == pytest.approx(0.5, abs=TOL)


def test_bleu_brevity_penalty_uses_closest_reference():
    bp = math.exp(1 - 4 / 3)  # 0.7165; with the 8-token reference it would be exp(1 - 8/3)
    _close(corpus_bleu([NAD_HYP], [NAD_REFS]), _bleu(NAD_P, bp), rel=1e-6)
    assert sentence_bleu(NAD_HYP, NAD_REFS, n=1) == pytest.approx(bp, abs=TOL)
    # Tie: lengths 2 and 4 are both 1 away from 3; the shorter wins, so no penalty.
    assert sentence_bleu("a b c", ["a b", "a b c d"], n=1) == pytest.approx(1.0, abs=TOL)


def test_corpus_bleu_sums_counts_before_dividing():
    # lengths 6 + 3 = 9 vs closest references 6 + 4 = 10 -> bp exp(1 - 10/9)
    # matches / n-grams: 1: (5+3)/(6+3)  2: (3+2)/(5+2)  3: (1+1)/(4+1)  4: (0+0)/(3+0)
    precisions = [8 / 9, 5 / 7, 2 / 5, TINY / 3]
    got = corpus_bleu([CAT_HYP, NAD_HYP], [[CAT_REF], NAD_REFS])
    _close(got, _bleu(precisions, math.exp(1 - 10 / 9)), rel=1e-6)


def test_empty_hypothesis_counts_zero_and_adds_reference_length():
    # testlen 6 + 0, reflen 6 + 3 -> bp exp(1 - 9/6); n-gram counts are the cat case's alone
    got = corpus_bleu([CAT_HYP, ""], [CAT_REF, "no acute disease"])
    _close(got, _bleu(CAT_P, math.exp(1 - 9 / 6)), rel=1e-6)
    assert corpus_bleu([""], ["no acute disease"]) == {f"BLEU-{k}": 0.0 for k in range(1, 5)}
    assert sentence_bleu("", "no acute disease") == 0.0


def test_rouge_l_by_hand():
    # LCS(the cat sat on the mat, the cat is on the mat) = "the cat on the mat" = 5
    # P = R = 5/6 -> F = (1 + 1.2^2) P R / (R + 1.2^2 P) = 5/6
    assert rouge_l(CAT_HYP, CAT_REF) == pytest.approx(5 / 6, abs=TOL)
    # LCS(no acute disease, no acute cardiopulmonary disease) = 3: P = 3/3, R = 3/4
    # F = 2.44 * 1 * 0.75 / (0.75 + 1.44 * 1) = 1.83 / 2.19
    assert rouge_l(NAD_HYP, NAD_REFS[0]) == pytest.approx(1.83 / 2.19, abs=TOL)
    # Maxima are taken separately over references: P = 1 from the long one (5/5),
    # R = 1 from the short one (3/3), so F = 1 although neither reference matches fully.
    hyp = "heart size normal lungs clear"
    refs = ["heart size normal", "the heart size is normal and the lungs are clear bilaterally"]
    assert rouge_l(hyp, refs) == pytest.approx(1.0, abs=TOL)
    assert rouge_l("", CAT_REF) == 0.0
    assert rouge_l("", "") == 1.0  # pycocoevalcap compares [""] with [""]
    assert mean_rouge_l([CAT_HYP, ""], [CAT_REF, "x"]) == pytest.approx(5 / 12, abs=TOL)


def test_oracle_picks_best_candidate():
    reference = "No pleural effusion or pneumothorax."
    candidates = ["Heart size is normal.", "No pleural effusion.",
                  "No pleural effusion or pneumothorax is seen.", ""]
    # candidate 2 (7 tokens, longer than the 5-token reference: no penalty):
    # 1: 5/7, 2: 4/6, 3: 3/5, 4: 2/4 -> (1/7) ** (1/4) = 0.615
    # candidate 1: precisions 1, 1, 1, 1e-6 and bp exp(1 - 5/3) -> 0.016
    want = (1 / 7) ** 0.25
    assert best_by_sentence_bleu(reference, candidates) == (2, pytest.approx(want, abs=TOL))
    stats = [NgramStats.from_text(c) for c in candidates]
    assert best_by_sentence_bleu(NgramStats.from_text(reference), stats) == (2, pytest.approx(want, abs=TOL))
    assert sentence_bleu(stats[1], reference, n=1) == pytest.approx(math.exp(1 - 5 / 3), abs=TOL)
    assert best_by_sentence_bleu(reference, [candidates[1], candidates[1]])[0] == 0  # tie: first
    with pytest.raises(ValueError, match="holds up to 2-grams"):
        sentence_bleu(NgramStats(["a"], max_n=2), reference)
    with pytest.raises(ValueError, match="at least one candidate"):
        best_by_sentence_bleu(reference, [])


_WORDS = [  # the first 12 are drawn more often, so texts share n-grams
    "no", "acute", "cardiopulmonary", "process", "the", "heart", "size", "is", "normal",
    "lungs", "are", "clear", "without", "focal", "consolidation", "pleural", "effusion", "or",
    "pneumothorax", "mild", "degenerative", "changes", "of", "spine", "left", "lower", "lobe",
    "opacity", "may", "represent", "atelectasis",
]


def _random_corpus(seed: int = 0, cases: int = 20):
    rng = random.Random(seed)

    def text(lo: int, hi: int) -> str:
        words = [rng.choice(_WORDS[:12]) if rng.random() < 0.5 else rng.choice(_WORDS)
                 for _ in range(rng.randint(lo, hi))]
        return " ".join(words).capitalize() + "."

    hyps = [text(1, 30) for _ in range(cases)]
    hyps[3] = ""
    refs = [[text(2, 30) for _ in range(rng.randint(1, 3))] for _ in range(cases)]
    return hyps, refs


def test_matches_pycocoevalcap():
    pytest.importorskip("pycocoevalcap.bleu.bleu", reason="pip install pycocoevalcap to compare")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.rouge.rouge import Rouge

    hyps, refs = _random_corpus()
    res = {i: [" ".join(tokenize(h))] for i, h in enumerate(hyps)}
    gts = {i: [" ".join(tokenize(r)) for r in rs] for i, rs in enumerate(refs)}
    scores, per_sentence = Bleu(4).compute_score(gts, res, verbose=0)
    ours = corpus_bleu(hyps, refs)
    assert list(ours.values()) == pytest.approx(scores, abs=TOL)
    assert 0.05 < ours["BLEU-1"] < 0.95  # not a degenerate corpus
    for k in range(4):
        mine = [sentence_bleu(h, r, n=k + 1) for h, r in zip(hyps, refs)]
        assert mine == pytest.approx(per_sentence[k], abs=TOL)
    rouge_mean, rouge_each = Rouge().compute_score(gts, res)
    assert mean_rouge_l(hyps, refs) == pytest.approx(rouge_mean, abs=TOL)
    assert [rouge_l(h, r) for h, r in zip(hyps, refs)] == pytest.approx(list(rouge_each), abs=TOL)


def test_draft_metrics_combines_and_validates():
    hyps, refs = _random_corpus(seed=1, cases=5)
    refs = [r[0] for r in refs]
    metrics = draft_metrics(hyps, refs, meteor=False)
    assert metrics == {**corpus_bleu(hyps, refs), "ROUGE-L": mean_rouge_l(hyps, refs)}
    with pytest.raises(ValueError, match="3 hypotheses vs 2 references"):
        draft_metrics(["a", "b", "c"], ["a", "b"])
    with pytest.raises(ValueError, match="empty"):
        draft_metrics([], [])
    with pytest.raises(ValueError, match=r"without a reference: \[1\]"):
        corpus_bleu(["a", "b"], [["a"], []])
    with pytest.raises(TypeError, match="not one str"):
        corpus_bleu("a b", ["a b"])


@pytest.mark.skipif(not meteor_available(),
                    reason="METEOR needs `pip install pycocoevalcap` (bundles the jar) and java on PATH")
def test_meteor_perfect_and_disjoint():
    reports = ["No acute cardiopulmonary process.", "Heart size is normal. Lungs are clear.",
               "Left lower lobe opacity may represent atelectasis."]
    assert corpus_meteor(reports, reports) == pytest.approx(1.0, abs=0.01)
    disjoint = ["Mild degenerative changes of the spine.", "Pleural effusion.", "Pneumothorax."]
    assert corpus_meteor(disjoint, reports) == pytest.approx(0.0, abs=0.01)


def test_meteor_returns_none_when_unavailable(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert not meteor_available()
    assert corpus_meteor(["a"], ["a"]) is None
    assert "METEOR" not in draft_metrics(["a"], ["a"])


@pytest.mark.skipif(not meteor_available(), reason="METEOR needs `pip install pycocoevalcap` and java on PATH")
def test_meteor_timeout_kills_java_and_raises():
    with pytest.raises(RuntimeError, match="ran past 0.5 s"):
        corpus_meteor(["a b c"] * 5, ["a b c"] * 5, timeout_s=0.5)
