"""Report-generation metrics: BLEU-1..4, ROUGE-L and, where Java is present, METEOR.

Texts are normalised with :func:`medcm.report.text.normalize_for_metrics` (lower case, no
punctuation) and split on spaces. BLEU and ROUGE-L then reproduce pycocoevalcap's
``Bleu(4)`` (``option="closest"``) and ``Rouge`` operation for operation, so the numbers
match the ones report-generation papers quote. METEOR needs the METEOR 1.5 jar, which
medcm neither ships nor downloads: ``pip install pycocoevalcap`` (its wheel bundles the
jar) plus a ``java`` on PATH enables it.
"""

from __future__ import annotations

import importlib.util
import math
import shutil
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medcm.report.text import ngram_counts, normalize_for_metrics

__all__ = ["NgramStats", "best_by_sentence_bleu", "bleu_case_counts", "bleu_from_counts", "corpus_bleu", "corpus_meteor",
           "draft_metrics", "mean_rouge_l", "meteor_available", "rouge_l", "sentence_bleu",
           "tokenize"]

# pycocoevalcap's smoothing: a zero n-gram count gives a tiny precision rather than a
# log(0), and an empty text has a tiny length ratio, so its brevity penalty is exp(-huge) = 0.
_TINY = 1e-15
_SMALL = 1e-9


def tokenize(text: str) -> list[str]:
    """Metric tokens of ``text``: ``normalize_for_metrics(text).split()``."""
    return normalize_for_metrics(text).split()


class NgramStats:
    """Token count and 1..max_n-gram counts of one text, computed once and reused.

    Every BLEU function here accepts these in place of strings, so an oracle comparing
    one reference with thousands of candidates tokenises each text only once.

    Attributes:
        length: number of tokens.
        counts: ``counts[k - 1]`` maps each k-gram (a tuple of tokens) to its count.
    """

    __slots__ = ("counts", "length")

    def __init__(self, tokens: Sequence[str], max_n: int = 4) -> None:
        if max_n < 1:
            raise ValueError(f"max_n must be >= 1, got {max_n}")
        tokens = tuple(tokens)
        self.length = len(tokens)
        self.counts: tuple[dict[tuple[str, ...], int], ...] = ngram_counts(tokens, max_n)

    @classmethod
    def from_text(cls, text: str, max_n: int = 4) -> NgramStats:
        """Stats of ``tokenize(text)``."""
        return cls(tokenize(text), max_n)


Text = str | NgramStats  # a raw text or its precomputed stats


def _stats(text: Text, n: int) -> NgramStats:
    if not isinstance(text, NgramStats):
        return NgramStats.from_text(text, n)
    if len(text.counts) < n:
        raise ValueError(f"NgramStats holds up to {len(text.counts)}-grams, BLEU-{n} needs {n}")
    return text


def _ref_lists(hypotheses: Sequence, references: Sequence) -> list[list]:
    """Validates a corpus and turns each case's reference(s) into a non-empty list."""
    if isinstance(hypotheses, str) or isinstance(references, str):
        raise TypeError("hypotheses and references must be lists of texts, not one str")
    if len(hypotheses) != len(references):
        raise ValueError(f"hypotheses and references differ in length: "
                         f"{len(hypotheses)} hypotheses vs {len(references)} references")
    if not hypotheses:
        raise ValueError("nothing to score: hypotheses and references are empty")
    refs = [[r] if isinstance(r, Text) else list(r) for r in references]
    if missing := [i for i, r in enumerate(refs) if not r]:
        raise ValueError(f"cases without a reference: {missing[:10]}")
    return refs


def _ref_side(references: Sequence[Text], n: int) -> tuple[list[int], list[dict]]:
    """Reference lengths and, per order, each n-gram's highest count over the references."""
    refs = [_stats(r, n) for r in references]
    if len(refs) == 1:  # the common case: no merge, no copy
        return [refs[0].length], list(refs[0].counts[:n])
    merged: list[dict] = [{} for _ in range(n)]
    for ref in refs:
        for m, counts in zip(merged, ref.counts):
            for g, c in counts.items():
                m[g] = max(m.get(g, 0), c)
    return [r.length for r in refs], merged


def _cook(hyp: NgramStats, ref_lengths: list[int], ref_counts: list[dict],
          n: int) -> tuple[int, int, list[int], list[int]]:
    """(hypothesis length, effective reference length, n-gram guesses, clipped matches)."""
    testlen = hyp.length
    # "closest" reference length; a tie goes to the shorter one, as in pycocoevalcap.
    reflen = min((abs(length - testlen), length) for length in ref_lengths)[1]
    guess = [max(0, testlen - k) for k in range(n)]
    # min(count_hyp, count_ref) is symmetric, so only the shared n-grams need a look.
    correct = [sum(min(h[g], r[g]) for g in h.keys() & r.keys())
               for h, r in zip(hyp.counts[:n], ref_counts)]
    return testlen, reflen, guess, correct


def bleu_case_counts(hypothesis: Text, references: Text | Sequence[Text], max_n: int = 4) -> list[int]:
    """One case's counts that corpus BLEU sums: hypothesis length, effective ("closest") reference
    length, n-gram guesses 1..max_n, clipped matches 1..max_n (``2 + 2 max_n`` numbers)."""
    refs = [references] if isinstance(references, Text) else list(references)
    testlen, reflen, guess, correct = _cook(_stats(hypothesis, max_n), *_ref_side(refs, max_n), max_n)
    return [testlen, reflen, *guess, *correct]


def bleu_from_counts(sums: np.ndarray, max_n: int = 4) -> np.ndarray:
    """BLEU-max_n from summed `bleu_case_counts` ``[..., 2 + 2 max_n]``, vectorised over leading axes
    (a randomization test scores thousands of corpora at once), in pycocoevalcap's float order."""
    testlen, reflen = sums[..., 0], sums[..., 1]
    guess, correct = sums[..., 2 : 2 + max_n], sums[..., 2 + max_n : 2 + 2 * max_n]
    product = np.ones(testlen.shape)
    for k in range(max_n):
        product = product * ((correct[..., k] + _TINY) / (guess[..., k] + _SMALL))
    score = product ** (1.0 / max_n)
    ratio = (testlen + _TINY) / (reflen + _SMALL)
    with np.errstate(divide="ignore", over="ignore"):
        penalty = np.where(ratio < 1, np.exp(1 - 1 / ratio), 1.0)
    return score * penalty


def _bleu(testlen: float, reflen: float, guess: list[int], correct: list[int]) -> list[float]:
    """BLEU-1..n from counts, in pycocoevalcap's order of float operations."""
    scores, bleu = [], 1.0
    for k, (c, g) in enumerate(zip(correct, guess)):
        bleu *= (float(c) + _TINY) / (float(g) + _SMALL)
        scores.append(bleu ** (1.0 / (k + 1)))
    ratio = (testlen + _TINY) / (reflen + _SMALL)
    if ratio < 1:
        penalty = math.exp(1 - 1 / ratio)
        scores = [s * penalty for s in scores]
    return scores


def corpus_bleu(hypotheses: Sequence[Text], references: Sequence[Text] | Sequence[Sequence[Text]],
                max_n: int = 4) -> dict[str, float]:
    """Corpus BLEU-1..max_n exactly as pycocoevalcap's ``Bleu(4).compute_score``.

    Clipped matches, n-gram counts, hypothesis lengths and 'closest' reference lengths
    are summed over the corpus before the precisions and the brevity penalty. Each
    case has one hypothesis (may be empty) and one reference or a list of them;
    pycocoevalcap itself supports ``max_n`` up to 4.

    Returns:
        ``{"BLEU-1": ..., ..., f"BLEU-{max_n}": ...}``.

    Raises:
        ValueError: lists differ in length, are empty, or a case has no reference.
    """
    refs = _ref_lists(hypotheses, references)
    testlen = reflen = 0
    guess, correct = [0] * max_n, [0] * max_n
    for hyp, case_refs in zip(hypotheses, refs):
        t, r, *g_c = bleu_case_counts(hyp, case_refs, max_n)
        testlen, reflen = testlen + t, reflen + r
        guess = [a + b for a, b in zip(guess, g_c[:max_n])]
        correct = [a + b for a, b in zip(correct, g_c[max_n:])]
    return {f"BLEU-{k + 1}": s for k, s in enumerate(_bleu(testlen, reflen, guess, correct))}


def sentence_bleu(hypothesis: Text, references: Text | Sequence[Text], n: int = 4) -> float:
    """BLEU-n of one hypothesis, as pycocoevalcap's per-sentence scores (same smoothing)."""
    refs = [references] if isinstance(references, Text) else list(references)
    if not refs:
        raise ValueError("sentence_bleu needs at least one reference")
    return _bleu(*_cook(_stats(hypothesis, n), *_ref_side(refs, n), n))[n - 1]


def best_by_sentence_bleu(reference: Text, candidates: Sequence[Text],
                          n: int = 4) -> tuple[int, float]:
    """``(index, score)`` of the candidate with the highest :func:`sentence_bleu` against
    ``reference`` (oracle pick); the first wins a tie. Pass :class:`NgramStats` to reuse
    tokenisation across calls.

    Raises:
        ValueError: ``candidates`` is empty.
    """
    if not candidates:
        raise ValueError("best_by_sentence_bleu needs at least one candidate")
    ref_side = _ref_side([reference], n)
    best, best_score = 0, -1.0
    for i, cand in enumerate(candidates):
        score = _bleu(*_cook(_stats(cand, n), *ref_side, n))[n - 1]
        if score > best_score:
            best, best_score = i, score
    return best, best_score


def _lcs(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence (one DP row kept at a time)."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(hypothesis: str, reference: str | Sequence[str], beta: float = 1.2) -> float:
    """ROUGE-L as pycocoevalcap's ``Rouge``: LCS precision P and recall R, each the
    maximum over the references, combined as ``(1 + beta^2) P R / (R + beta^2 P)``."""
    refs = [reference] if isinstance(reference, str) else list(reference)
    if not refs:
        raise ValueError("rouge_l needs at least one reference")
    # pycocoevalcap splits on " ", which turns "" into [""]: so empty vs empty scores 1.
    hyp = tokenize(hypothesis) or [""]
    prec, rec = [], []
    for ref in refs:
        ref_tokens = tokenize(ref) or [""]
        lcs = _lcs(ref_tokens, hyp)
        prec.append(lcs / float(len(hyp)))
        rec.append(lcs / float(len(ref_tokens)))
    p, r = max(prec), max(rec)
    if p == 0 or r == 0:
        return 0.0
    return ((1 + beta**2) * p * r) / float(r + beta**2 * p)


def mean_rouge_l(hypotheses: Sequence[str],
                 references: Sequence[str] | Sequence[Sequence[str]]) -> float:
    """ROUGE-L averaged over cases (pycocoevalcap's corpus ROUGE-L)."""
    refs = _ref_lists(hypotheses, references)
    return float(np.mean([rouge_l(h, r) for h, r in zip(hypotheses, refs)]))


def meteor_available() -> bool:
    """True when pycocoevalcap with its bundled jar is installed and ``java`` is on PATH."""
    try:  # find_spec locates the package without importing it
        spec = importlib.util.find_spec("pycocoevalcap")
    except (ImportError, ValueError):
        return False
    roots = (spec.submodule_search_locations or []) if spec else []
    has_jar = any((Path(root) / "meteor" / "meteor-1.5.jar").is_file() for root in roots)
    return has_jar and shutil.which("java") is not None


def corpus_meteor(hypotheses: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]],
                  timeout_s: float = 300.0) -> float | None:
    """Corpus METEOR 1.5 via pycocoevalcap's ``Meteor`` on normalised, space-joined texts.

    Each call starts a JVM that loads a paraphrase table (~8 s), so score a whole corpus
    at once. Returns None when :func:`meteor_available` is False.

    Raises:
        ValueError: lists differ in length, are empty, or a case has no reference.
        RuntimeError: the Java process failed or ran longer than ``timeout_s``.
    """
    refs = _ref_lists(hypotheses, references)
    if not meteor_available():
        return None
    from pycocoevalcap.meteor.meteor import Meteor

    res = {i: [" ".join(tokenize(h))] for i, h in enumerate(hypotheses)}
    gts = {i: [" ".join(tokenize(r)) for r in rs] for i, rs in enumerate(refs)}
    scorer = Meteor()
    # A wedged JVM would block readline() forever; killing it makes readline() return b"".
    timer = threading.Timer(timeout_s, scorer.meteor_p.kill)
    timer.start()
    try:
        return float(scorer.compute_score(gts, res)[0])
    except (ValueError, OSError) as exc:
        raise RuntimeError(f"METEOR failed or ran past {timeout_s:g} s: {exc!r}") from exc
    finally:
        timer.cancel()
        # compute_score keeps its lock when it raises; Meteor.__del__ would then deadlock.
        if scorer.lock.locked():
            scorer.lock.release()
        scorer.meteor_p.kill()
        scorer.meteor_p.wait()


def draft_metrics(hypotheses: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]],
                  meteor: bool = True) -> dict[str, float]:
    """BLEU-1..4, ``"ROUGE-L"`` and ``"METEOR"`` (only if ``meteor`` and it is available).

    Raises:
        ValueError: lists differ in length, are empty, or a case has no reference.
        RuntimeError: METEOR's Java process failed or timed out.
    """
    metrics = corpus_bleu(hypotheses, references)
    metrics["ROUGE-L"] = mean_rouge_l(hypotheses, references)
    if meteor and (score := corpus_meteor(hypotheses, references)) is not None:
        metrics["METEOR"] = score
    return metrics
