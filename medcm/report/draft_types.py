"""What drafting takes and gives: the retrieved cases, the draft with per-sentence provenance, the
sentences it dropped, and the knobs (`DraftConfig`, with the named presets of `medcm draft`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from medcm.report.text import SECTION_ALIASES, section_order

__all__ = ["DRAFT_PRESETS", "Abstention", "Draft", "DraftConfig", "DraftSentence", "DroppedSentence", "Provenance",
           "SourceCase"]


@dataclass(frozen=True)
class SourceCase:
    """A retrieved past case; ``score`` is its retrieval cosine to the query. ``image_score``, when
    known, is the query image's cosine to this case's own images: image-to-image neighbours name a
    finding's side more reliably than image-to-report ones, so they decide between sides."""
    case_id: str
    score: float
    report: str
    image_score: float | None = None


@dataclass(frozen=True)
class Provenance:
    """One source of a draft sentence: the case and the sentence as written there."""
    case_id: str
    case_score: float
    sentence_score: float  # cosine(query, this source sentence)
    original: str


@dataclass(frozen=True)
class DraftSentence:
    """A drafted sentence; ``sources`` best first (by sentence_score, then case_score)."""
    text: str
    section: str  # "FINDINGS" or "IMPRESSION"
    score: float  # the final score used for selection
    sources: tuple[Provenance, ...]


@dataclass(frozen=True)
class DroppedSentence:
    """A candidate left out of the draft, with the reason."""
    text: str
    reason: str
    sources: tuple[Provenance, ...]


@dataclass(frozen=True)
class Abstention:
    """Whether the archive holds anything like the study (decided before drafting), with the numbers.

    Similarities are the mean cosine of the query to its ``neighbours`` most similar cases (k = 1: the
    nearest); ``percentile`` places it among the archive's own studies' (leave-one-study-out), and the
    draft abstains below ``threshold`` (the similarity at the abstention percentile). Numbers are None
    where there was nothing to compute them from (an archive too small to calibrate).
    """
    abstained: bool
    reason: str  # "" when not abstained
    nearest_similarity: float | None = None
    typical_similarity: float | None = None  # the archive's own median
    percentile: float | None = None  # 0-100
    threshold: float | None = None
    neighbours: int = 1


@dataclass(frozen=True)
class Draft:
    """A draft report: sentences in report order, what was dropped, the cases read; ``abstention`` says
    whether the archive held anything like the study (None: not checked). An abstained draft has no sentences."""
    sentences: tuple[DraftSentence, ...]
    dropped: tuple[DroppedSentence, ...]
    source_cases: tuple[str, ...]
    verified: bool = False
    abstention: Abstention | None = None

    def section_text(self, section: str) -> str:
        """The sentences of one section (name or alias, any case) joined by spaces."""
        name = " ".join(section.upper().split())
        name = SECTION_ALIASES.get(name, name)
        return " ".join(s.text for s in self.sentences if s.section == name)

    def text(self) -> str:
        """``"FINDINGS: s1 s2\\nIMPRESSION: s3"``; empty sections omitted, ``""`` if none."""
        parts = ((name, self.section_text(name)) for name in section_order)
        return "\n".join(f"{name}: {body}" for name, body in parts if body)


@dataclass(frozen=True)
class DraftConfig:
    """Drafting knobs.

    Attributes:
        top_k_cases: only this many best-scoring cases are read.
        max_findings: most FINDINGS sentences in a draft.
        max_impression: most IMPRESSION sentences in a draft.
        duplicate_threshold: embedding cosine from which two sentences are one.
        support_weight: weight of cross-case support (0..1) added to the similarity.
        relative_margin: per section, keep scores >= best - relative_margin * |best|.
        min_score: absolute floor on the score (model-dependent; calibrate per model).
        agreement_weight: weight of the other retrieved reports' agreement with a sentence
            (0 turns it off).
        length_from_sources: stop a section at the median length the source cases wrote.
        min_finding_share: a sentence stating a lexicon finding stays only if at least this share of the
            retrieved cases (by case score) state that finding too (0 turns it off); calibrated
            leave-one-out on the demo archive (0.3 keeps 97% of true findings, 5% of absent ones).
        side_cases: of sentences stating one finding at other sides (degrees, sizes, counts), the one
            most of the ``side_cases`` nearest cases state stays: nearest by their images when the
            cases carry ``image_score``, else the best by retrieval score (leave-one-out on the demo
            archive the majority side of the 3 nearest cases is right 85% of the time, of all 40 only
            60%; by image, 3 seeds: laterality errors 3.4% vs 9.3% with the head judging sides).
        image_threshold: with the query image's finding probabilities (a checkpoint trained with a
            finding head, `medcm.report.image_findings`), a sentence stating a finding the image shows
            with less probability, or denying one it shows with at least this, is dropped.
    """
    top_k_cases: int = 5
    max_findings: int = 6
    max_impression: int = 2
    duplicate_threshold: float = 0.92
    support_weight: float = 0.1
    relative_margin: float = 0.25
    min_score: float = 0.0
    agreement_weight: float = 0.0
    length_from_sources: bool = False
    min_finding_share: float = 0.0
    side_cases: int = 3
    image_threshold: float = 0.5

    def __post_init__(self) -> None:
        checks = {"top_k_cases": self.top_k_cases >= 1, "max_findings": self.max_findings >= 0,
                  "max_impression": self.max_impression >= 0,
                  "duplicate_threshold": -1.0 < self.duplicate_threshold <= 1.0,
                  "support_weight": 0.0 <= self.support_weight < math.inf,
                  "relative_margin": 0.0 <= self.relative_margin < math.inf,
                  "min_score": math.isfinite(self.min_score),
                  "agreement_weight": 0.0 <= self.agreement_weight < math.inf,
                  "min_finding_share": 0.0 <= self.min_finding_share <= 1.0, "side_cases": self.side_cases >= 1,
                  "image_threshold": 0.0 <= self.image_threshold <= 1.0}
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"DraftConfig.{name} out of range: {getattr(self, name)!r}")


DRAFT_PRESETS: dict[str, DraftConfig] = {
    # Few, near cases; a sentence must match the query image: short drafts of what this study shows.
    "similarity": DraftConfig(),
    # Many neighbours and minimum-Bayes-risk agreement: the sentences most similar cases would
    # also write, as long as they usually write. Best on MedPix 2.0 dev (BENCHMARKS.md).
    "consensus": DraftConfig(top_k_cases=40, max_findings=30, relative_margin=100.0, min_score=-100.0,
                             agreement_weight=100.0, length_from_sources=True, min_finding_share=0.3),
}
