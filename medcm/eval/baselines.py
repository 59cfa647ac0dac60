"""Report baselines a drafting system must beat, and the oracle ceiling of whole-report retrieval.

Every baseline draws only on the pool's reports (never the query's own), so it is measured on the
same footing as the drafts:
- `random_reports`: any pool report.
- `random_matching_reports`: a pool report of the same body region and modality (what a
  radiologist gets by opening any old case of the same kind of study).
- `consensus_report`: one report for every query, the pool's most typical report (the medoid
  by mean sentence BLEU-4 against the other pool reports).
- `oracle_reports`: per query, the pool report with the best sentence BLEU-4 against the query's
  own reference; no retrieval system that copies one whole report can do better.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medcm.eval.metrics import NgramStats, best_by_sentence_bleu, sentence_bleu

CONSENSUS_SAMPLE = 200  # reports the medoid is scored against: the mean settles long before all of them


def random_reports(count: int, pool: Sequence[str], rng: np.random.Generator) -> list[str]:
    """`count` pool reports drawn uniformly with replacement.

    Raises:
        ValueError: the pool is empty.
    """
    if not pool:
        raise ValueError("the pool has no report to draw from")
    return [pool[i] for i in rng.integers(0, len(pool), size=count)]


def _modalities(meta: dict[str, Any]) -> frozenset[str]:
    return frozenset(m.strip().upper() for m in str(meta.get("modality") or "").split(",") if m.strip())


def random_matching_reports(query_meta: Sequence[dict[str, Any]], pool_meta: Sequence[dict[str, Any]],
                            pool: Sequence[str], rng: np.random.Generator) -> list[str]:
    """Per query, a random pool report of the same region sharing a modality.

    Falls back to the same region, then to any report, when nothing in the pool matches.

    Raises:
        ValueError: the pool is empty or `pool_meta` and `pool` differ in length.
    """
    if len(pool_meta) != len(pool) or not pool:
        raise ValueError(f"pool: got {len(pool)} reports and {len(pool_meta)} metadata rows, expected equal and > 0")
    regions = [str(m.get("region") or "") for m in pool_meta]
    modalities = [_modalities(m) for m in pool_meta]
    out = []
    for meta in query_meta:
        region, modality = str(meta.get("region") or ""), _modalities(meta)
        same_region = [i for i, r in enumerate(regions) if region and r == region]
        both = [i for i in same_region if modalities[i] & modality]
        choices = both or same_region or list(range(len(pool)))
        out.append(pool[choices[int(rng.integers(0, len(choices)))]])
    return out


def consensus_report(pool: Sequence[str], seed: int = 0) -> str:
    """The pool report with the highest mean sentence BLEU-4 against (a seeded sample of) the others.

    Raises:
        ValueError: the pool is empty.
    """
    if not pool:
        raise ValueError("the pool has no report to choose from")
    stats = [NgramStats.from_text(text) for text in pool]
    rng = np.random.default_rng(seed)
    sample = rng.choice(len(pool), size=min(CONSENSUS_SAMPLE, len(pool)), replace=False)
    best, best_score = 0, -1.0
    for i, candidate in enumerate(stats):
        others = [stats[j] for j in sample if j != i]
        score = float(np.mean([sentence_bleu(candidate, ref) for ref in others])) if others else 0.0
        if score > best_score:
            best, best_score = i, score
    return pool[best]


def oracle_reports(references: Sequence[str], pool: Sequence[str]) -> list[str]:
    """Per reference, the pool report with the best sentence BLEU-4 against it.

    Raises:
        ValueError: the pool is empty.
    """
    if not pool:
        raise ValueError("the pool has no report to choose from")
    stats = [NgramStats.from_text(text) for text in pool]
    return [pool[best_by_sentence_bleu(NgramStats.from_text(ref), stats)[0]] for ref in references]
