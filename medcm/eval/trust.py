"""Trust measures for `medcm eval`: self-contradiction, diversity, a paired randomization test, and samples to read.

- Self-contradiction: the share of texts with at least one contradicting pair, by the independent
  checker of `medcm.eval.consistency` (not the drafter's own).
- Diversity: the share of distinct texts (after case and whitespace normalisation) and the share
  taken by the most common one; a drafter that writes one report for everyone can score a good BLEU.
- Paired approximate randomization (Noreen 1989): per query, the draft's and a baseline's texts are
  swapped with probability 1/2 and the metric difference recomputed; two-sided
  ``p = (count(|shuffled diff| >= |observed diff|) + 1) / (R + 1)``. BLEU-4 is corpus-level (per-query
  n-gram counts are re-summed for every shuffle, vectorised, so 10,000 shuffles take well under a
  second); ROUGE-L is the mean of per-query scores, as `medcm.eval.metrics` computes it.
- Samples: a seeded choice of drafts beside their reference and source cases, as markdown.

`trust_block` returns a flat dict of named measures; later measures (e.g. ``"abstention_rate"``)
are added as further keys beside these.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medcm.eval.consistency import find_contradictions_many
from medcm.eval.metrics import bleu_case_counts, bleu_from_counts, rouge_l

__all__ = ["CEILINGS", "SAMPLE_COUNT", "SHUFFLES", "TESTED_METRICS", "best_baseline", "bleu_from_counts",
           "bleu_counts", "build_samples", "contradiction_rates", "diversity", "paired_randomization",
           "pick_samples", "samples_markdown", "trust_block"]

SHUFFLES = 10_000
SAMPLE_COUNT = 30
TESTED_METRICS = ("BLEU-4", "ROUGE-L")
CEILINGS = ("oracle",)  # baselines that read the reference: never "the best baseline" to beat
_CHUNK = 2_000  # shuffles per vectorised block (memory: CHUNK x queries)


def contradiction_rates(texts: Mapping[str, Sequence[str]]) -> tuple[dict[str, dict[str, Any]], dict[str, list[list[str]]]]:
    """Per named list of texts, the share with at least one self-contradicting pair.

    Returns:
        (name → {"rate", "contradicting", "texts"} (rate None for no texts),
         name → per text, each contradiction described as one line).
    """
    names = list(texts)
    flat = [t for name in names for t in texts[name]]
    found = find_contradictions_many(flat)
    rates, described, start = {}, {}, 0
    for name in names:
        chunk = found[start : start + len(texts[name])]
        start += len(texts[name])
        hits = sum(bool(c) for c in chunk)
        rates[name] = {"rate": hits / len(chunk) if chunk else None, "contradicting": hits, "texts": len(chunk)}
        described[name] = [[c.describe() for c in pairs] for pairs in chunk]
    return rates, described


def diversity(texts: Sequence[str]) -> dict[str, Any]:
    """Share of distinct texts and share of the most common one (case and whitespace ignored).

    Returns:
        {"distinct_share", "top_share", "texts"}; shares are None for no texts.
    """
    keys = [" ".join(t.lower().split()) for t in texts]
    if not keys:
        return {"distinct_share": None, "top_share": None, "texts": 0}
    counts = Counter(keys)
    return {"distinct_share": len(counts) / len(keys), "top_share": counts.most_common(1)[0][1] / len(keys),
            "texts": len(keys)}


def bleu_counts(hypotheses: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """Per query, `medcm.eval.metrics.bleu_case_counts` as a ``[Q, 10]`` array (BLEU-4, one reference each)."""
    if len(hypotheses) != len(references):
        raise ValueError(f"bleu_counts: {len(hypotheses)} hypotheses vs {len(references)} references, expected equal")
    return np.array([bleu_case_counts(h, r) for h, r in zip(hypotheses, references)], dtype=np.float64).reshape(-1, 10)


def paired_randomization(draft: Sequence[str], baseline: Sequence[str], references: Sequence[str],
                         shuffles: int = SHUFFLES, seed: int = 0) -> dict[str, dict[str, float]]:
    """Two-sided paired approximate-randomization p-values of `draft` vs `baseline`, per metric of `TESTED_METRICS`.

    Returns:
        metric → {"draft", "baseline", "difference", "p_value"}.

    Raises:
        ValueError: the lists differ in length, are empty, or `shuffles` < 1.
    """
    if not (len(draft) == len(baseline) == len(references)) or not references:
        raise ValueError(f"paired_randomization: got {len(draft)} draft, {len(baseline)} baseline and "
                         f"{len(references)} reference texts, expected equal non-zero counts")
    if shuffles < 1:
        raise ValueError(f"paired_randomization: shuffles must be >= 1, got {shuffles}")
    rng = np.random.default_rng(seed)
    a, b = bleu_counts(draft, references), bleu_counts(baseline, references)
    rouge_a = np.array([rouge_l(h, r) for h, r in zip(draft, references)])
    rouge_b = np.array([rouge_l(h, r) for h, r in zip(baseline, references)])
    observed = {"BLEU-4": (float(bleu_from_counts(a.sum(0))), float(bleu_from_counts(b.sum(0)))),
                "ROUGE-L": (float(rouge_a.mean()), float(rouge_b.mean()))}
    extreme = dict.fromkeys(observed, 0)
    delta = b - a
    for start in range(0, shuffles, _CHUNK):
        swap = rng.random((min(_CHUNK, shuffles - start), len(references))) < 0.5  # [R, Q]
        moved = swap.astype(np.float64) @ delta  # [R, K]: what the swaps move from the draft's sums to the baseline's
        bleu_diff = bleu_from_counts(a.sum(0) + moved) - bleu_from_counts(b.sum(0) - moved)
        rouge_diff = (np.where(swap, rouge_b, rouge_a) - np.where(swap, rouge_a, rouge_b)).mean(axis=1)
        for key, diff in (("BLEU-4", bleu_diff), ("ROUGE-L", rouge_diff)):
            gap = abs(observed[key][0] - observed[key][1])
            extreme[key] += int(np.sum(np.abs(diff) >= gap - 1e-12))
    return {key: {"draft": ours, "baseline": theirs, "difference": ours - theirs,
                  "p_value": (extreme[key] + 1) / (shuffles + 1)} for key, (ours, theirs) in observed.items()}


def best_baseline(baselines: Mapping[str, Mapping[str, float]], metric: str,
                  exclude: Sequence[str] = CEILINGS) -> str | None:
    """The baseline with the highest `metric`, ceilings excluded; None when none has it."""
    scored = {name: m[metric] for name, m in baselines.items() if name not in exclude and m.get(metric) is not None}
    return max(scored, key=lambda name: scored[name]) if scored else None


def trust_block(texts: Mapping[str, Sequence[str]], references: Sequence[str], draft_key: str,
                baseline_texts: Mapping[str, Sequence[str]], baseline_metrics: Mapping[str, Mapping[str, float]],
                shuffles: int = SHUFFLES, seed: int = 0) -> dict[str, Any]:
    """The "trust" block of the results.

    Args:
        texts: per system (the draft, the references, every baseline), its texts, one per scored query.
        references: the scored queries' reference texts.
        draft_key: the key in `texts` whose texts the metrics scored.
        baseline_texts: per non-ceiling baseline, the exact texts to test against (random baselines: one draw).
        baseline_metrics: per baseline, its metrics as reported (picks the best baseline per metric).
        shuffles: randomization shuffles.
        seed: seeds the shuffles.
    """
    rates, described = contradiction_rates(texts)
    examples = [{"system": name, "query": i, "pairs": pairs[:2]} for name in texts if name.startswith("draft")
                for i, pairs in enumerate(described[name]) if pairs][:5]
    start = time.perf_counter()
    runs: dict[str, dict[str, dict[str, float]]] = {}  # one run per baseline serves every metric
    tests = {}
    for metric in TESTED_METRICS:
        name = best_baseline(baseline_metrics, metric)
        if name is None or name not in baseline_texts:
            continue
        if name not in runs:
            runs[name] = paired_randomization(texts[draft_key], baseline_texts[name], references, shuffles, seed)
        result = runs[name][metric]
        tests[metric] = {"baseline": name, "draft": result["draft"], "baseline_value": result["baseline"],
                         "difference": result["difference"], "p_value": result["p_value"]}
    return {
        "checker": "medcm.eval.consistency (negspacy NegEx, own lexicon; not the drafter's)",
        "self_contradiction": rates,
        "contradiction_examples": examples,
        "diversity": {name: diversity(values) for name, values in texts.items()},
        "randomization": {"method": "paired approximate randomization, two-sided, p = (count + 1) / (R + 1)",
                          "levels": {"BLEU-4": "corpus", "ROUGE-L": "mean of per-query scores"},
                          "shuffles": shuffles, "seed": seed, "seconds": round(time.perf_counter() - start, 3),
                          "against": "best non-oracle baseline per metric (random baselines: their first seeded draw)",
                          "metrics": tests},
    }


def pick_samples(case_ids: Sequence[str], count: int = SAMPLE_COUNT, seed: int = 0) -> list[str]:
    """A seeded choice of `count` case ids (all if fewer), in their original order."""
    if len(case_ids) <= count:
        return list(case_ids)
    chosen = np.random.default_rng(seed).choice(len(case_ids), size=count, replace=False)
    return [case_ids[i] for i in sorted(chosen)]


def build_samples(case_ids: Sequence[str], references: Mapping[str, str], drafts: Mapping[str, str],
                  details: Mapping[str, Mapping[str, Any]], count: int = SAMPLE_COUNT, seed: int = 0) -> list[dict[str, Any]]:
    """The samples a reader checks: per chosen case its reference, draft (as drafted, with its sections),
    source cases and sentence provenance (from `details`) and the checker's contradictions."""
    chosen = pick_samples(case_ids, count, seed)
    found = find_contradictions_many([drafts[c] for c in chosen])
    return [{"case_id": c, "reference": references[c], "draft": drafts[c], **details.get(c, {}),
             "contradictions": [pair.describe() for pair in pairs]} for c, pairs in zip(chosen, found)]


def samples_markdown(results: Mapping[str, Any]) -> str:
    """The samples of `results` as markdown: each draft beside its reference, sources and contradictions."""
    samples = results.get("samples") or []
    lines = [f"# medcm eval samples: {results.get('model_id', '')}", "",
             f"{len(samples)} drafts (a seeded choice, seed {results.get('seed', 0)}) beside the written report and "
             "the cases the draft read; each draft sentence names the source cases it was copied from.", ""]
    for number, sample in enumerate(samples, 1):
        lines += [f"## {number}. {sample['case_id']}", "", "**Draft**", ""]
        sentences = sample.get("sentences") or []
        lines += ([f"- {s['section']}: {s['text']} _(from {', '.join(s['sources']) or 'n/a'})_" for s in sentences]
                  or ["_(empty draft)_"])
        lines += ["", "**Reference (written findings)**", "", _quote(sample["reference"]), ""]
        sources = sample.get("sources") or []
        lines.append("**Sources read:** " + (", ".join(f"{s['case_id']} ({s['score']:.3f})" for s in sources) or "n/a"))
        if sample.get("contradictions"):
            lines += ["", "**Self-contradictions found:**", *(f"- {c}" for c in sample["contradictions"])]
        lines.append("")
    return "\n".join(lines)


def _quote(text: str) -> str:
    return "\n".join(f"> {line}" if line else ">" for line in (text or "(none)").splitlines())
