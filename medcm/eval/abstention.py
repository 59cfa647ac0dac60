"""Abstention in `medcm eval`: how often the product's rules refuse to draft, in and out of distribution.

The decision is the engine's (`medcm.engine.abstention.similarity_abstention` on a
`medcm.index.calibration.calibrate` of the archive, same `AbstentionConfig`): a query case's vector (the
normalised mean of its image rows, as the engine queries a study) is scored against the pool's reports,
its mean cosine to the `neighbours` best is compared with the pool's own leave-one-study-out
distribution. In distribution, every query is judged against the whole pool, calibrated on the pool;
few should abstain. Out of distribution, leave one region out: for each body region R of the queries
(the metadata's "region", MedPix's Location Category), the pool's cases of R are taken out, the rest
recalibrated, and the region-R queries judged against it; they should abstain. The similarity rule and,
given the model's region head, the region rule (`medcm.engine.abstention.region_reason`) are measured
(`by_similarity`, `by_region`); the header rule needs a DICOM header (Modality, BodyPartExamined) that
eval records lack.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from medcm.config import AbstentionConfig
from medcm.data.manifest import ManifestRecord
from medcm.engine.abstention import RegionHead, archive_regions, region_reason, similarity_abstention, usable_calibration
from medcm.index.calibration import calibrate, neighbour_similarities, study_means, unit_rows

__all__ = ["ABSTENTION_TARGETS", "EmbeddedLike", "abstention_block", "case_regions", "judge_queries", "query_regions"]

# (direction, bound): the out-of-distribution queries should abstain, the in-distribution ones should not.
ABSTENTION_TARGETS = {"out-of-distribution abstention": (">=", 0.90), "in-distribution abstention": ("<=", 0.10)}
HEADER_NOTE = ("similarity and region-head rules: the eval's records carry no DICOM header (Modality, "
               "BodyPartExamined), so the header rule is not measured")


class EmbeddedLike(Protocol):
    """The part of `medcm.eval.evaluate.EmbeddedSet` read here."""

    records: list[ManifestRecord]
    image_emb: np.ndarray
    image_case: list[str]
    image_meta: list[dict[str, Any]]
    report_emb: np.ndarray

    @property
    def case_ids(self) -> list[str]: ...


def case_regions(embedded: EmbeddedLike) -> dict[str, frozenset[str]]:
    """Per case, the regions it belongs to: its record's `meta["region"]` and its image rows' (empty: unknown)."""
    regions: dict[str, set[str]] = {r.case_id: {str(r.meta.get("region") or "")} for r in embedded.records}
    for case, meta in zip(embedded.image_case, embedded.image_meta):
        regions.setdefault(case, set()).add(str(meta.get("region") or ""))
    return {case: frozenset(named - {""}) for case, named in regions.items()}


def query_regions(queries: EmbeddedLike) -> dict[str, str]:
    """Per query case with image rows, its one region: its record's `meta["region"]`, else its image rows'
    most common ("" when none states one)."""
    stated = {r.case_id: str(r.meta.get("region") or "") for r in queries.records}
    counts: dict[str, Counter[str]] = {}
    for case, meta in zip(queries.image_case, queries.image_meta):
        counts.setdefault(case, Counter()).update([str(meta.get("region") or "")] if meta.get("region") else [])
    return {case: stated.get(case) or (named.most_common(1)[0][0] if named else "") for case, named in counts.items()}


def judge_queries(pool: EmbeddedLike, kept: Sequence[bool], query_vectors: np.ndarray, query_ids: Sequence[str],
                  config: AbstentionConfig, region_head: RegionHead | None = None) -> dict[str, Any]:
    """The engine's similarity and region-head verdicts on each query against the pool's `kept` cases,
    calibrated on them.

    Args:
        pool: the embedded pool.
        kept: per pool record, whether it stays in the archive.
        query_vectors: `[Q, D]` L2-normalised query case vectors.
        query_ids: `[Q]` their case ids.
        config: the abstention settings (the product's).
        region_head: the model's region head (None: the region rule is not applied).

    Returns:
        `{n, abstained, rate, abstained_cases, by_similarity, by_region, threshold, typical, median_similarity,
        pool_cases, calibrated_studies, calibrated}`; `calibrated` is False when fewer than
        `config.min_studies` studies could be calibrated, and then (as in the engine) no query abstains.
    """
    keep = {case for case, stays in zip(pool.case_ids, kept) if stays}
    rows = [i for i, case in enumerate(pool.image_case) if case in keep]
    reports = np.flatnonzero(np.asarray(kept, bool))
    candidates = unit_rows(np.asarray(pool.report_emb, np.float32)[reports])
    candidate_ids = [pool.case_ids[i] for i in reports]
    full = calibrate(np.asarray(pool.image_emb, np.float32)[rows], [pool.image_case[i] for i in rows],
                     candidates, candidate_ids, config.neighbours, config.max_studies, config.seed)
    studies, calibration = full.studies, usable_calibration(full, config)
    _, similarity = neighbour_similarities(query_vectors, query_ids, candidates, candidate_ids, config.neighbours)
    verdicts = [similarity_abstention(None if np.isnan(s) else float(s), calibration, config) for s in similarity]
    regions = archive_regions(np.asarray(pool.image_emb, np.float32)[rows], [pool.image_case[i] for i in rows],
                              region_head, config) if calibration is not None else None
    by_region = {case for case, vector in zip(query_ids, query_vectors)
                 if regions is not None and region_reason(vector, region_head, regions)}
    by_similarity = {case for case, verdict in zip(query_ids, verdicts) if verdict.abstained}
    abstained = [case for case in query_ids if case in by_similarity | by_region]
    finite = similarity[np.isfinite(similarity)]
    threshold = calibration.threshold(config.below_percentile) if calibration is not None else None
    return {"n": len(query_ids), "abstained": len(abstained),
            "rate": len(abstained) / len(query_ids) if len(query_ids) else None, "abstained_cases": abstained,
            "by_similarity": len(by_similarity), "by_region": len(by_region),
            "threshold": threshold, "typical": calibration.typical if calibration is not None else None,
            "median_similarity": float(np.median(finite)) if len(finite) else None, "pool_cases": len(keep),
            "calibrated_studies": studies, "calibrated": calibration is not None}


def abstention_block(pool: EmbeddedLike, queries: EmbeddedLike, config: AbstentionConfig = AbstentionConfig(),
                     region_head: RegionHead | None = None) -> dict[str, Any] | None:
    """Abstention in distribution and leave-one-region-out, JSON-ready (see the module doc).

    Args:
        pool: the embedded pool (the archive).
        queries: the embedded query cases; a case without a readable image is not judged.
        config: the product's abstention settings.
        region_head: the model's region head, for the region rule (None: off).

    Returns:
        `{rule, note, below_percentile, neighbours, in_distribution, out_of_distribution, targets}`:
        `in_distribution` as `judge_queries` returns it; `out_of_distribution` None when no query case
        states a region, else `{n, abstained, rate, regions: {R: judge_queries' block}, not_judged: {R:
        why}, no_region}`, the totals over the judged regions (a region whose removal leaves fewer than
        `config.min_studies` calibrated studies is not judged). None when the similarity rule is off
        (`below_percentile` 0).
    """
    if config.below_percentile <= 0 and (region_head is None or config.region_percentile <= 0):
        return None
    query_ids, vectors = study_means(queries.image_emb, queries.image_case)
    everything = [True] * len(pool.records)
    block: dict[str, Any] = {
        "rule": "similarity" + (" + region head" if region_head is not None and config.region_percentile > 0 else ""),
        "note": HEADER_NOTE, "below_percentile": config.below_percentile,
        "region_percentile": config.region_percentile if region_head is not None else None,
        "neighbours": config.neighbours,
        "in_distribution": judge_queries(pool, everything, vectors, query_ids, config, region_head),
        "out_of_distribution": _leave_one_region_out(pool, queries, vectors, query_ids, config, region_head),
    }
    block["targets"] = _targets(block["in_distribution"]["rate"], (block["out_of_distribution"] or {}).get("rate"))
    return block


def _leave_one_region_out(pool: EmbeddedLike, queries: EmbeddedLike, vectors: np.ndarray, query_ids: list[str],
                          config: AbstentionConfig, region_head: RegionHead | None) -> dict[str, Any] | None:
    """Per region of the query cases: its queries judged against the pool without that region."""
    region_of = query_regions(queries)
    if not any(region_of.values()):
        return None
    pool_regions = case_regions(pool)
    regions, not_judged = {}, {}
    for region in sorted({r for r in region_of.values() if r}):
        rows = [i for i, case in enumerate(query_ids) if region_of[case] == region]
        kept = [region not in pool_regions.get(case, frozenset()) for case in pool.case_ids]
        judged = judge_queries(pool, kept, vectors[rows], [query_ids[i] for i in rows], config, region_head)
        if judged["calibrated"]:
            regions[region] = judged
        else:
            not_judged[region] = (f"{judged['calibrated_studies']} pool studies left to calibrate without it, "
                                  f"fewer than {config.min_studies}")
    n = sum(r["n"] for r in regions.values())
    abstained = sum(r["abstained"] for r in regions.values())
    return {"n": n, "abstained": abstained, "rate": abstained / n if n else None, "regions": regions,
            "not_judged": not_judged, "no_region": sum(not region for region in region_of.values())}


def _targets(in_rate: float | None, out_rate: float | None) -> dict[str, dict[str, Any]]:
    """Each target with its value and whether it is met (None: not measured)."""
    values = {"out-of-distribution abstention": out_rate, "in-distribution abstention": in_rate}
    out = {}
    for name, (direction, bound) in ABSTENTION_TARGETS.items():
        value = values[name]
        met = None if value is None else value >= bound if direction == ">=" else value <= bound
        out[name] = {"target": f"{direction} {bound:.2f}", "value": value, "met": met}
    return out
