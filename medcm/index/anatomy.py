"""The anatomy prior: re-rank retrieval candidates by how well their modality and body region agree with the query's.

A similar-looking case from another body region or modality is rarely a useful precedent (an ankle CT
should not borrow a lung-nodule report). Cosine similarity alone does not know that, so candidates get
a bonus: `modality_weight` when a modality is shared, and `region_weight` × the probability that query
and candidate show the same region. The region comes from the DICOM header (BodyPartExamined, else the
series description) where it maps onto one of the model's region classes, and from the model's own
region head (`region_probabilities`) where it does not. The prior is soft: a strong visual match from
another region can still win.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
import numpy as np

from medcm.config import AnatomyPriorConfig

# Coarse regions shared by DICOM body parts and the names of region classes, so that a header term
# ("LSPINE") and a label set ("Spine and Muscles") meet in the middle. Keywords of four letters or more
# match as word prefixes ("PULMON" in "PULMONARY"); shorter ones only whole words ("HIP", not "HIPPOCAMPUS").
_REGION_KEYWORDS: dict[str, tuple[str, ...]] = {
    "head": ("HEAD", "BRAIN", "SKULL", "NEURO", "ORBIT", "SELLA", "PITUIT", "IAC", "FACE", "SINUS", "TMJ", "NECK",
             "JAW", "MANDIBLE", "CEREBR", "HIPPOCAMP"),
    "spine": ("SPINE", "SPINAL", "CSPINE", "TSPINE", "LSPINE", "SSPINE", "COCCYX", "SACRUM", "VERTEBR"),
    "extremity": ("MUSCLE", "MUSCULO", "EXTREMIT", "KNEE", "ANKLE", "FOOT", "HAND", "WRIST", "ELBOW", "SHOULDER",
                  "HIP", "HIPS", "ARM", "ARMS", "LEG", "LEGS", "FEMUR", "TIBIA", "HUMERUS", "FOREARM", "FINGER", "TOE", "THIGH", "MSK"),
    "thorax": ("THORAX", "CHEST", "LUNG", "PULMON", "HEART", "CARDI", "BREAST", "RIB", "MEDIASTIN", "THORAC"),
    "abdomen": ("ABDOMEN", "ABD", "LIVER", "HEPAT", "PANCREA", "GASTRO", "STOMACH", "BOWEL", "COLON", "SPLEEN",
                "GALLBLADDER", "BILIAR"),
    "pelvis": ("PELVIS", "PELVIC", "URINARY", "GENITO", "REPRODUCT", "RENAL", "KIDNEY", "BLADDER", "PROSTATE",
               "UTER", "OVAR", "TESTI", "SCROT"),
}


def coarse_regions(text: str) -> set[str]:
    """The coarse regions ("head", "spine", …) a body-part term, series description or class name names."""
    words = re.findall(r"[A-Z]+", str(text or "").upper())
    return {region for region, keys in _REGION_KEYWORDS.items()
            if any(word == key or (len(key) >= 4 and word.startswith(key)) for word in words for key in keys)}


def header_region(body_part: str, series_description: str, classes: Sequence[str]) -> np.ndarray | None:
    """The region distribution `[K]` over `classes` that a DICOM header states, or None when it states none.

    BodyPartExamined is read first, the series description only when the body part is empty or maps to
    no class; the probability is split evenly between the classes it maps to.
    """
    class_regions = [coarse_regions(name) for name in classes]
    for text in (body_part, series_description):
        named = coarse_regions(text)
        hits = np.array([bool(named & regions) for regions in class_regions], dtype=np.float32)
        if named and hits.any():
            return hits / hits.sum()
    return None


def region_probabilities(vectors: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Softmax of a linear region head on embeddings: `[N, D]` → `[N, K]`."""
    logits = np.asarray(vectors, np.float64) @ np.asarray(weight, np.float64).T + np.asarray(bias, np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    odds = np.exp(logits)
    return (odds / odds.sum(axis=1, keepdims=True)).astype(np.float32)


def region_support(query: np.ndarray, archive: np.ndarray) -> np.ndarray:
    """The expected number of archive studies of each query's region: `Σ_i p_q · p_i`.

    Args:
        query: `[Q, K]` region distributions of the queries (`region_probabilities`).
        archive: `[S, K]` those of the archive's studies.

    Returns:
        `[Q]`: near the count of the archive's studies of the query's region when both are confident,
        near 0 when the archive holds none of it.
    """
    return np.asarray(query, np.float64) @ np.asarray(archive, np.float64).sum(axis=0)


def own_region_support(archive: np.ndarray) -> np.ndarray:
    """`region_support` of each archive study against the others (leave-one-study-out): `[S]`."""
    archive = np.asarray(archive, np.float64)
    return archive @ archive.sum(axis=0) - (archive * archive).sum(axis=1)


def modality_set(value: str | Sequence[str] | None) -> frozenset[str]:
    """Modalities as a set, from "CT", "CT,MR" or a list; upper-cased, blanks dropped."""
    parts = value.split(",") if isinstance(value, str) else (value or ())
    return frozenset(p.strip().upper() for p in parts if p and p.strip())


def anatomy_bonus(query_modalities: Sequence[frozenset[str]], candidate_modalities: Sequence[frozenset[str]],
                  query_regions: np.ndarray | None, candidate_regions: np.ndarray | None,
                  prior: AnatomyPriorConfig) -> np.ndarray:
    """The prior's bonus `[Q, N]` for every query-candidate pair.

    Args:
        query_modalities: Q sets (empty when unknown: no modality bonus).
        candidate_modalities: N sets.
        query_regions: `[Q, K]` region distributions, or None (no region bonus).
        candidate_regions: `[N, K]` over the same classes, or None.
        prior: the weights.
    """
    bonus = np.zeros((len(query_modalities), len(candidate_modalities)), np.float32)
    if prior.modality_weight:
        vocabulary = sorted(set().union(*query_modalities, *candidate_modalities))
        index = {m: i for i, m in enumerate(vocabulary)}
        q = np.zeros((len(query_modalities), len(vocabulary)), np.float32)
        c = np.zeros((len(candidate_modalities), len(vocabulary)), np.float32)
        for matrix, sets in ((q, query_modalities), (c, candidate_modalities)):
            for row, modalities in enumerate(sets):
                matrix[row, [index[m] for m in modalities]] = 1.0
        bonus += prior.modality_weight * ((q @ c.T) > 0)
    if prior.region_weight and query_regions is not None and candidate_regions is not None:
        bonus += prior.region_weight * (np.asarray(query_regions, np.float32) @ np.asarray(candidate_regions, np.float32).T)
    return bonus


def prior_scores(similarity: np.ndarray, bonus: np.ndarray, candidates: int) -> np.ndarray:
    """Ranking scores `[Q, N]`: cosine + bonus for each query's top `candidates` by cosine; the rest keep
    their cosine minus 10, so they stay below (in cosine order), as beyond an index's first page.

    With a zero bonus the order is the plain cosine order.
    """
    similarity = np.asarray(similarity, np.float32)
    scores = similarity - 10.0
    if similarity.shape[1]:
        top = np.argsort(-similarity, axis=1, kind="stable")[:, :candidates]
        rows = np.arange(len(similarity))[:, None]
        scores[rows, top] = similarity[rows, top] + np.asarray(bonus, np.float32)[rows, top]
    return scores
