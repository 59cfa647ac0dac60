"""Similarity on a scale that means something: an archive's own leave-one-study-out neighbour similarities,
and where a query's similarity falls among them (its percentile).

A raw cosine says little on its own: a trained model may give an ankle CT 0.85 against a chest archive
and a true chest match 0.87. What it can say is how a query's similarity compares with what the
archive's own studies get from *other* studies. `calibrate` asks that of the archive itself: each
(sampled) stored study, its image vectors averaged into one query vector, is searched against the
candidates (e.g. the stored reports) of every other study, and two numbers are kept per study, the best
cosine (`nearest`) and the mean of the `neighbours` best (`neighbourhood`). Sorted, they are the
reference distributions: a query's percentile is the share of archive studies whose similarity is at
most the query's. Everything here is numpy on arrays; the engine reads the arrays from its store.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Calibration", "calibrate", "neighbour_similarities", "percentile_of", "study_means",
           "threshold_of", "unit_rows"]

_BLOCK = 256  # queries scored at once: a [256, M] block of cosines


@dataclass(frozen=True, eq=False)  # eq=False: field-wise comparison of numpy arrays is ambiguous
class Calibration:
    """An archive's reference similarities, each sorted ascending (one value per sampled study).

    Attributes:
        nearest: `[S]` each sampled study's best cosine to another study's candidate: the scale of one
            retrieved case's score.
        neighbourhood: `[S]` each sampled study's mean cosine to its `neighbours` best candidates of
            other studies: the scale of a query's neighbourhood (what a draft reads).
        neighbours: how many best candidates `neighbourhood` averages.
        archive_studies: the studies that could be sampled (those with image vectors).
    """

    nearest: np.ndarray
    neighbourhood: np.ndarray
    neighbours: int
    archive_studies: int

    @property
    def studies(self) -> int:
        """How many studies the reference holds (sampled, with at least one candidate of another study)."""
        return len(self.neighbourhood)

    @property
    def typical(self) -> float | None:
        """The median neighbourhood similarity of the archive's own studies; None without a reference."""
        return float(np.median(self.neighbourhood)) if self.studies else None

    def percentile(self, similarity: float) -> float | None:
        """A single case's cosine as a percentile (0–100) of the archive's `nearest` similarities."""
        return percentile_of(self.nearest, similarity)

    def neighbourhood_percentile(self, similarity: float) -> float | None:
        """A query's mean cosine to its `neighbours` best candidates as a percentile of `neighbourhood`."""
        return percentile_of(self.neighbourhood, similarity)

    def threshold(self, below: float) -> float | None:
        """The least neighbourhood similarity whose percentile reaches `below` (see `threshold_of`)."""
        return threshold_of(self.neighbourhood, below)


def percentile_of(reference: np.ndarray, value: float) -> float | None:
    """100 × the share of `reference` (sorted ascending) at or below `value`; None for an empty reference."""
    if not len(reference):
        return None
    return 100.0 * int(np.searchsorted(reference, value, side="right")) / len(reference)


def threshold_of(reference: np.ndarray, below: float) -> float | None:
    """The least value of `reference` (sorted ascending) whose `percentile_of` is at least `below`.

    A value is below the `below`-th percentile exactly when it is below this threshold. None when no
    value can be (`below` is 0 or the reference is empty).

    Raises:
        ValueError: `below` outside [0, 100].
    """
    if not 0.0 <= below <= 100.0:
        raise ValueError(f"abstention percentile: got {below!r}, expected a number from 0 to 100")
    rank = math.ceil(below * len(reference) / 100.0 - 1e-9)  # values at or below it: at least `rank`
    return float(reference[rank - 1]) if rank >= 1 else None


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """`[M, D]` vectors as float32 unit rows (zero rows stay zero); anything not 2D (an empty store's
    matrix) as an empty `[0, 1]` array."""
    vectors = np.asarray(vectors, np.float32)
    if vectors.ndim != 2:
        return np.zeros((0, 1), np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def study_means(vectors: np.ndarray, studies: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """One L2-normalised vector per study: the mean of its rows.

    Args:
        vectors: `[N, D]` image vectors.
        studies: `[N]` the study of each row.

    Returns:
        The studies in order of first appearance, and their vectors `[S, D]` float32.

    Raises:
        ValueError: `studies` and `vectors` differ in length.
    """
    vectors = np.asarray(vectors, np.float32)
    if vectors.ndim != 2 or len(studies) != len(vectors):
        raise ValueError(f"study_means: got vectors of shape {vectors.shape} and {len(studies)} study ids, "
                         f"expected [N, D] and N ids")
    order = {uid: i for i, uid in enumerate(dict.fromkeys(studies))}
    inverse = np.fromiter((order[uid] for uid in studies), np.int64, len(studies))
    if len(inverse) and np.any(np.diff(inverse) < 0):  # a study's rows apart (stores keep them together)
        rows = np.argsort(inverse, kind="stable")
        vectors, inverse = vectors[rows], inverse[rows]
    # running sums differenced at each study's end: ~10x faster than np.add.at or np.add.reduceat on axis 0
    totals = np.cumsum(vectors, axis=0, dtype=np.float64)
    ends = np.r_[np.flatnonzero(np.diff(inverse)), len(inverse) - 1] if len(inverse) else np.zeros(0, np.int64)
    sums = totals[ends] - np.vstack([np.zeros((1, vectors.shape[1])), totals[ends[:-1]]])[: len(ends)]
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return list(order), (sums / np.maximum(norms, 1e-12)).astype(np.float32)


def neighbour_similarities(queries: np.ndarray, query_groups: Sequence[str], candidates: np.ndarray,
                           candidate_groups: Sequence[str], neighbours: int) -> tuple[np.ndarray, np.ndarray]:
    """Each query's best cosine, and its mean cosine over its `neighbours` best, among candidates of other groups.

    Args:
        queries: `[S, D]` L2-normalised query vectors.
        query_groups: `[S]` each query's study; candidates of the same study are left out.
        candidates: `[M, D]` L2-normalised candidate vectors.
        candidate_groups: `[M]` each candidate's study.
        neighbours: k ≥ 1; a query with fewer than k candidates left averages those it has.

    Returns:
        `nearest` `[S]` and `neighbourhood` `[S]`, float64; NaN for a query without any candidate left.
    """
    if neighbours < 1:
        raise ValueError(f"neighbours: got {neighbours!r}, expected an integer >= 1")
    queries, candidates = np.asarray(queries, np.float32), np.asarray(candidates, np.float32)
    codes = {uid: i for i, uid in enumerate(dict.fromkeys([*candidate_groups, *query_groups]))}
    own = np.fromiter((codes[uid] for uid in query_groups), np.int64, len(query_groups))
    theirs = np.fromiter((codes[uid] for uid in candidate_groups), np.int64, len(candidate_groups))
    nearest = np.full(len(queries), np.nan)
    neighbourhood = np.full(len(queries), np.nan)
    k = min(neighbours, len(candidates))
    for start in range(0, len(queries) if k else 0, _BLOCK):
        scores = queries[start : start + _BLOCK] @ candidates.T
        scores[own[start : start + _BLOCK, None] == theirs[None, :]] = -np.inf  # leave the study's own out
        best = -np.sort(-np.partition(scores, -k, axis=1)[:, -k:], axis=1)  # [b, k], best first
        valid = np.isfinite(best)
        counts = valid.sum(axis=1)
        nearest[start : start + _BLOCK] = np.where(counts > 0, best[:, 0], np.nan)
        totals = np.where(valid, best, 0.0).sum(axis=1)
        neighbourhood[start : start + _BLOCK] = np.where(counts > 0, totals / np.maximum(counts, 1), np.nan)
    return nearest, neighbourhood


def calibrate(image_vectors: np.ndarray, image_studies: Sequence[str], candidates: np.ndarray,
              candidate_studies: Sequence[str], neighbours: int = 5, max_studies: int = 1000,
              seed: int = 0) -> Calibration:
    """The archive's reference similarities, leave-one-study-out.

    Each study's query vector is the normalised mean of its image rows (a stored upload's query is the
    normalised mean of its series' means: the same for the usual one-series study). At most
    `max_studies` studies are sampled (seeded, without replacement); each is searched against every
    candidate of the other studies.

    Args:
        image_vectors: `[N, D]` the archive's image vectors, one row per stored image.
        image_studies: `[N]` the study of each image row.
        candidates: `[M, D]` L2-normalised vectors the queries are scored against (e.g. one report
            vector per study, the scale of retrieved cases' scores).
        candidate_studies: `[M]` the study of each candidate.
        neighbours: how many best candidates the neighbourhood similarity averages.
        max_studies: most studies sampled as queries (bounds the cost to `max_studies` × M cosines).
        seed: the sample's seed.

    Raises:
        ValueError: mismatched lengths, neighbours < 1 or max_studies < 1.
    """
    if max_studies < 1:
        raise ValueError(f"max_studies: got {max_studies!r}, expected an integer >= 1")
    if len(candidate_studies) != len(candidates):
        raise ValueError(f"calibrate: got {len(candidates)} candidates and {len(candidate_studies)} study ids, "
                         f"expected one id per candidate")
    if len(image_studies) != len(image_vectors):
        raise ValueError(f"calibrate: got {len(image_vectors)} image vectors and {len(image_studies)} study ids, "
                         f"expected one id per vector")
    codes = {uid: i for i, uid in enumerate(dict.fromkeys(image_studies))}
    rows = np.arange(len(image_studies))
    if len(codes) > max_studies:  # only the sampled studies' rows are averaged
        picked = np.random.default_rng(seed).choice(len(codes), max_studies, replace=False)
        inverse = np.fromiter((codes[uid] for uid in image_studies), np.int64, len(image_studies))
        rows = np.flatnonzero(np.isin(inverse, picked))
    studies, vectors = study_means(np.asarray(image_vectors)[rows], [image_studies[i] for i in rows])
    nearest, neighbourhood = neighbour_similarities(vectors, studies, candidates, candidate_studies, neighbours)
    kept = np.isfinite(nearest)
    return Calibration(np.sort(nearest[kept]), np.sort(neighbourhood[kept]), neighbours, len(codes))
