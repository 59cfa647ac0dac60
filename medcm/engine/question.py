"""A study's clinical question (indication / history): stored scrubbed, and blended into its image query.

The clinician's question is free text and may hold identifiers, so it is scrubbed like a person's report
(`medcm.engine.reports.scrubbed_report`) before the store keeps it. Retrieval and drafting of a study with
a question search with `blend_query(image_query, text_query, weight)`: the question's text embedding
moves the query, in the shared space, toward reports that answer it. Only comparisons with report text
use the blend (case retrieval, the draft's sentence scores); the anatomy prior, the finding head, the
image-to-image scores that decide sides, and abstention keep the image query alone, so a question never
makes an ankle CT look like a chest match.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from medcm.config import QuestionConfig
from medcm.dicom.deid import DeidConfig
from medcm.engine.reports import scrubbed_report

__all__ = ["QuestionBlender", "QuestionStoreLike", "blend_query", "blend_rows", "set_question"]

_CACHE = 256  # question texts whose embeddings are remembered


class QuestionStoreLike(Protocol):
    """The part of `db.store.CaseStore` the clinical question uses."""

    def get_study(self, study_uid: str) -> Any: ...
    def clinical_question(self, study_uid: str) -> str | None: ...
    def set_clinical_question(self, study_uid: str, text: str | None, user: str) -> Any: ...


def _unit(vector: np.ndarray, what: str) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float64)
    norm = float(np.linalg.norm(v))
    if v.ndim != 1 or not np.isfinite(norm) or norm == 0.0:
        raise ValueError(f"{what}: got shape {v.shape} with norm {norm}; expected a finite non-zero [D] vector")
    return v / norm


def blend_query(image_query: np.ndarray, text_query: np.ndarray | None, weight: float) -> np.ndarray:
    """`normalize((1 - weight) * image + weight * text)` of the two normalised vectors, float32 `[D]`.

    Args:
        image_query: the study's image query `[D]`.
        text_query: its question's text embedding `[D]`; None: no question (the image query is returned).
        weight: the question's share, 0 to 1.

    Raises:
        ValueError: a weight outside [0, 1], a zero or non-finite vector, or vectors of different sizes.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"question weight: got {weight}, expected a number from 0 to 1")
    image = _unit(image_query, "image query")
    if text_query is None or weight == 0.0:
        return image.astype(np.float32)
    text = _unit(text_query, "question vector")
    if text.shape != image.shape:
        raise ValueError(f"question vector: got shape {text.shape}; expected the image query's {image.shape}")
    mixed = (1.0 - weight) * image + weight * text
    norm = float(np.linalg.norm(mixed))
    return (mixed / norm if norm > 1e-12 else image).astype(np.float32)  # opposite vectors at 0.5: keep the image


def blend_rows(image_rows: np.ndarray, text_rows: np.ndarray, has_text: np.ndarray, weight: float) -> np.ndarray:
    """`blend_query` row by row: `[N, D]` image vectors with `[N, D]` text vectors where `has_text` `[N]` is True."""
    out = np.asarray(image_rows, np.float32).copy()
    for row in np.flatnonzero(has_text):
        out[row] = blend_query(image_rows[row], text_rows[row], weight)
    return out


def set_question(store: QuestionStoreLike, study_uid: str, text: str | None, user: str,
                 deid: DeidConfig | None) -> Any:
    """Store a study's clinical question, scrubbed as a person's report is (`scrubbed_report`); "" or None clears it.

    Returns:
        The study as the store now holds it (`db.store.StudyView`, with `clinical_question`).

    Raises:
        StoreError: unknown study, or a text over 2,000 characters or with control characters
            (nothing is written then).
    """
    if isinstance(text, str) and text.strip():
        text = scrubbed_report(store, study_uid, text, deid)
    return store.set_clinical_question(study_uid, text or None, user)


class QuestionBlender:
    """Blends a stored study's question into its image query, remembering the questions' embeddings.

    Args:
        store: the case store.
        config: the question's weight.
        embed_texts: the engine's text encoder (`[N] texts → [N, D]` normalised vectors).
    """

    def __init__(self, store: QuestionStoreLike, config: QuestionConfig,
                 embed_texts: Callable[[list[str]], np.ndarray]) -> None:
        self.store, self.config, self._embed = store, config, embed_texts
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()

    def text_vector(self, text: str) -> np.ndarray:
        """The question's text embedding `[D]` (cached)."""
        if text not in self._vectors:
            self._vectors[text] = np.asarray(self._embed([text])[0], np.float32)
            if len(self._vectors) > _CACHE:
                self._vectors.popitem(last=False)
        self._vectors.move_to_end(text)
        return self._vectors[text]

    def retrieval_query(self, study_uid: str, image_query: np.ndarray) -> np.ndarray:
        """The query a stored study's report retrieval and draft use: its image query, blended with its question
        when it has one and the weight is above 0."""
        question = self.store.clinical_question(study_uid) if self.config.weight > 0 else None
        if not question:
            return image_query
        return blend_query(image_query, self.text_vector(question), self.config.weight)
