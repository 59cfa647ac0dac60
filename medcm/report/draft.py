"""Retrieval-based drafting (after CXR-RePaiR): a draft report from similar cases' sentences.

1. FINDINGS and IMPRESSION sentences of the ``top_k_cases`` best cases are collected (a report
   with neither header gives its header-less text as FINDINGS); each distinct sentence is
   embedded once and ``similarity = cosine(query, sentence)``.
2. Same-section, same-polarity sentences with one :func:`~medcm.report.text.sentence_key` or an
   embedding cosine >= ``duplicate_threshold`` merge, keeping every source.
3. ``score = max similarity over sources + support_weight * support``; ``support`` (0..1) is
   the sources' share of the retrieval-score mass (case weight ``max(case score, 0)``), so
   a sentence every retrieved case wrote gets the full bonus: consensus is evidence.
4. With the query image's finding probabilities (``image_findings``, from a checkpoint's finding head),
   a sentence stating a finding the image does not show, or denying one it shows, is dropped first
   (:mod:`medcm.report.image_findings`): what this image supports, not what a neighbour had.
   A sentence stating a lexicon finding stays only if at least ``min_finding_share`` of the
   retrieved case weight states that finding (a neighbour's nodule is not evidence about this image).
   One finding gets one side, degree, size and count: sentences stating it otherwise never merge,
   and of such alternatives (in either section) the one most of the ``side_cases`` nearest cases state
   at that side stays (nearest by their own images when every case carries an ``image_score``; then the
   head does not judge sides), then the most query-like. Of two sentences where one denies a finding the other states
   (in either section; synonyms, organs, sides, sizes and normal statements understood by
   :mod:`medcm.report.context`), the one with less ``evidence = sum over sources of
   max(similarity, 0) + support_weight * support`` is dropped.
   With ``agreement_weight > 0``, ``score`` and ``evidence`` also gain ``agreement_weight *
   agreement``: how much of the sentence the *other* retrieved reports also say (their
   weighted n-gram precision, :func:`~medcm.report.text.ngram_precision`). This is minimum-Bayes-risk
   selection: among what similar cases wrote, prefer what most of them would agree with.
5. Per section the best sentences within ``relative_margin`` of the best and above
   ``min_score`` are kept (at most ``max_findings`` / ``max_impression``), in the order the
   sources wrote them (mean relative position). With ``length_from_sources`` a section stops
   once it holds as many words as the median source case wrote there. The IMPRESSION is rebuilt from
   the kept FINDINGS: an impression sentence stating a finding stays only if the kept FINDINGS state
   each of its (finding, side) pairs, a global normal one only when no finding is kept. A draft is always
   ``verified=False``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from medcm.report.assertions import first_alternative
from medcm.report.context import sentence_claims
from medcm.report.text import (
    SECTION_ALIASES,
    is_negated,
    ngram_counts,
    ngram_precision,
    normalize_for_metrics,
    section_order,
    sentence_key,
    split_sections,
    split_sentences,
)
from medcm.report.draft_claims import (
    Group,
    Unit,
    case_findings,
    impression_from_findings,
    resolve_alternatives,
    resolve_contradictions,
    seen,
    supported,
)
from medcm.report.draft_types import (
    DRAFT_PRESETS,
    Draft,
    DraftConfig,
    DraftSentence,
    DroppedSentence,
    Provenance,
    SourceCase,
)

__all__ = ["SourceCase", "Provenance", "DraftSentence", "DroppedSentence", "Draft",
           "DraftConfig", "DRAFT_PRESETS", "draft_findings"]

_DRAFT_SECTIONS = ("FINDINGS", "IMPRESSION")



def _case_sentences(report: str) -> dict[str, list[str]]:
    """FINDINGS (plus unknown ALL-CAPS subsections after it) and IMPRESSION sentences.

    Without either, header-less text and unknown sections are FINDINGS; known other sections
    (INDICATION, TECHNIQUE, COMPARISON...) never count.
    """
    sections = split_sections(report).sections
    known = set(SECTION_ALIASES.values())
    has_main = any(name in _DRAFT_SECTIONS for name, _ in sections)
    out: dict[str, list[str]] = {name: [] for name in _DRAFT_SECTIONS}
    current: str | None = None
    for name, body in sections:
        if name in _DRAFT_SECTIONS:
            current = name
        elif name in known or (has_main and current != "FINDINGS"):
            current = None  # a preamble before FINDINGS is usually the exam title
        elif not has_main:
            current = "FINDINGS"
        if current is not None:
            out[current].extend(split_sentences(body))
    return out


def _top_cases(cases: Sequence[SourceCase], k: int) -> list[SourceCase]:
    cases = list(cases)  # also accepts a one-shot iterable
    for case in cases:
        if not isinstance(case, SourceCase):
            raise TypeError(f"cases must hold SourceCase, got {type(case).__name__}")
        if not math.isfinite(case.score) or not math.isfinite(case.image_score or 0.0):
            raise ValueError(f"case {case.case_id!r} has a non-finite score {case.score} or image score "
                             f"{case.image_score}")
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate case ids: {sorted({i for i in ids if ids.count(i) > 1})}")
    return sorted(cases, key=lambda c: -c.score)[:k]  # stable: ties keep the caller's order


def _image_scored(used: list[SourceCase]) -> bool:
    """Whether every case knows how near its own images are to the query's."""
    return bool(used) and all(c.image_score is not None for c in used)


def _side_cases(used: list[SourceCase], k: int) -> list[SourceCase]:
    """The ``k`` cases that decide between sides: the nearest by image when every case knows its image
    score (image-to-image neighbours name sides best), else by retrieval score."""
    if _image_scored(used):
        return sorted(used, key=lambda c: -c.image_score)[:k]
    return used[:k]


def _extract_units(cases: list[SourceCase]) -> list[Unit]:
    mass = [max(c.score, 0.0) for c in cases]
    # With no positive case score there is no ranking information: count cases equally.
    weights = [m / sum(mass) for m in mass] if sum(mass) > 0 else [1 / len(cases)] * len(cases)
    units: list[Unit] = []
    for case, weight in zip(cases, weights):
        for section, sentences in _case_sentences(case.report).items():
            keyed = [(s, k) for s in sentences if (k := sentence_key(s))]
            for i, (text, key) in enumerate(keyed):
                pos = (i + 0.5) / len(keyed)
                units.append(Unit(case, weight, section, pos, text, key, len(units)))
    return units


def _check_query(query: np.ndarray) -> np.ndarray:
    q = np.asarray(query, dtype=np.float64)
    if q.ndim != 1 or q.size == 0:
        raise ValueError(f"query must have shape [D] with D > 0, got {tuple(q.shape)}")
    norm = float(np.linalg.norm(q))
    if not math.isfinite(norm) or norm == 0.0:
        raise ValueError(f"query must be finite and non-zero, got norm {norm}")
    return q / norm


def _embed(units: list[Unit], embed_sentences: Callable[[list[str]], np.ndarray],
           dim: int) -> tuple[dict[str, int], np.ndarray]:
    """Embeds one text per sentence key in a single call: ``(key -> row, [K, D])``."""
    texts: dict[str, str] = {}
    for u in units:
        texts.setdefault(u.key, u.text)  # the first wording of each key
    emb = np.asarray(embed_sentences(list(texts.values())), dtype=np.float64)
    if emb.shape != (len(texts), dim):
        raise ValueError(f"embed_sentences returned shape {tuple(emb.shape)} for "
                         f"{len(texts)} sentences, expected ({len(texts)}, {dim})")
    if not np.isfinite(emb).all():
        raise ValueError("embed_sentences returned non-finite values")
    norms = np.linalg.norm(emb, axis=1, keepdims=True)  # cheap insurance for cosines
    return {key: i for i, key in enumerate(texts)}, emb / np.where(norms > 0, norms, 1.0)


def _cluster(units: list[Unit], row: dict[str, int], emb: np.ndarray, sims: np.ndarray,
             threshold: float) -> list[Group]:
    """Leader clustering, best-scoring first, within a section and a polarity.

    Polarity must match because text encoders place "No effusion." next to "Effusion.".
    """
    exact: dict[tuple[str, str], list[Unit]] = {}
    for u in units:
        exact.setdefault((u.section, u.key), []).append(u)
    leaders: list[tuple[int, Group]] = []
    for (section, key), members in sorted(exact.items(), key=lambda kv: -sims[row[kv[0][1]]]):
        negated, r = is_negated(members[0].text), row[key]
        claims = sentence_claims(members[0].text)
        # "Small right effusion." and "Small left effusion." embed alike but are alternatives, never one sentence.
        matches = [(float(emb[lr] @ emb[r]), g) for lr, g in leaders
                   if g.section == section and g.negated == negated
                   and not first_alternative(sentence_claims(g.units[0].text), claims)]
        best = max(matches, key=lambda m: m[0], default=(-math.inf, None))
        if best[1] is not None and best[0] >= threshold:
            best[1].units.extend(members)
        else:
            leaders.append((r, Group(section, negated, list(members))))
    return [g for _, g in leaders]


def _summarise(group: Group, row: dict[str, int], sims: np.ndarray, weight: float) -> None:
    """Fills text, sources, score, evidence, position and claims of a group."""
    best: dict[str, tuple[float, Unit]] = {}  # per case, its best-matching occurrence
    for u in sorted(group.units, key=lambda u: u.order):
        s = float(sims[row[u.key]])
        if u.case.case_id not in best or s > best[u.case.case_id][0]:
            best[u.case.case_id] = (s, u)
    group.sources = tuple(sorted(
        (Provenance(u.case.case_id, float(u.case.score), s, u.text) for s, u in best.values()),
        key=lambda p: (-p.sentence_score, -p.case_score)))
    support = sum(u.weight for _, u in best.values())
    group.support = support
    group.score = group.sources[0].sentence_score + weight * support
    group.evidence = sum(max(p.sentence_score, 0.0) for p in group.sources) + weight * support
    group.position = float(np.mean([u.position for u in group.units]))
    group.first = min(u.order for u in group.units)
    # The wording most cases used, then the most query-like, then the first seen.
    wordings: dict[str, list[float]] = {}
    for s, u in best.values():
        wordings.setdefault(u.text, []).append(s)
    group.text = max(wordings, key=lambda t: (len(wordings[t]), max(wordings[t])))
    group.claims = sentence_claims(group.text)


def _section_counts(cases: list[SourceCase]) -> dict[tuple[str, str], tuple]:
    """(case id, section) → n-gram counts of that section's text, for the agreement score."""
    out = {}
    for case in cases:
        for section, sentences in _case_sentences(case.report).items():
            if sentences:
                out[(case.case_id, section)] = ngram_counts(normalize_for_metrics(" ".join(sentences)).split())
    return out


def _add_agreement(groups: list[Group], units: list[Unit], counts: dict[tuple[str, str], tuple],
                   weight: float) -> None:
    """Adds ``weight * agreement`` to each group's score and evidence (see the module doc)."""
    case_weight = {u.case.case_id: u.weight for u in units}
    for g in groups:
        own = {p.case_id for p in g.sources}
        others = [(case_weight[c], ref) for (c, section), ref in counts.items()
                  if section == g.section and c not in own and c in case_weight]
        mass = sum(w for w, _ in others)
        if mass <= 0:
            continue
        mine = ngram_counts(normalize_for_metrics(g.text).split())
        agreement = sum(w * ngram_precision(mine, ref) for w, ref in others) / mass
        g.score += weight * agreement
        g.evidence += weight * agreement


def _median_words(cases: list[SourceCase], section: str) -> float:
    lengths = [len(normalize_for_metrics(" ".join(s)).split())
               for c in cases if (s := _case_sentences(c.report)[section])]
    return float(np.median(lengths)) if lengths else math.inf


def _select(groups: list[Group], config: DraftConfig, cases: list[SourceCase],
            ) -> tuple[list[Group], list[DroppedSentence]]:
    """Per section, greedily by score within the margin, above the floor, up to the limit."""
    chosen: list[Group] = []
    dropped: list[DroppedSentence] = []
    for section in _DRAFT_SECTIONS:
        limit = config.max_findings if section == "FINDINGS" else config.max_impression
        words_limit = _median_words(cases, section) if config.length_from_sources else math.inf
        candidates = [g for g in groups if g.section == section]
        if section == "IMPRESSION":
            candidates, unfounded = impression_from_findings(candidates, chosen)
            dropped.extend(unfounded)
        ranked = sorted(candidates, key=lambda g: (-g.score, g.first))
        best = ranked[0].score if ranked else 0.0
        cutoff, taken, words = best - config.relative_margin * abs(best), 0, 0
        for g in ranked:
            if g.score < config.min_score:
                reason = f"below threshold: score {g.score:.3f} < min_score {config.min_score:.3f}"
            elif g.score < cutoff:
                reason = (f"below threshold: score {g.score:.3f} outside the relative margin "
                          f"of the best {best:.3f}")
            elif taken >= limit:
                reason = f"over limit: max_{section.lower()}={limit}"
            elif words >= words_limit:
                reason = f"over length: the source cases' median {section.lower()} is {words_limit:.0f} words"
            else:
                chosen.append(g)
                taken += 1
                words += len(normalize_for_metrics(g.text).split())
                continue
            dropped.append(DroppedSentence(g.text, reason, g.sources))
    return chosen, dropped


def draft_findings(query: np.ndarray, cases: Sequence[SourceCase],
                   embed_sentences: Callable[[list[str]], np.ndarray],
                   config: DraftConfig = DraftConfig(), image_findings: Mapping[str, float] | None = None) -> Draft:
    """Drafts FINDINGS/IMPRESSION from the reports of retrieved cases (see module doc).

    Args:
        query: ``[D]`` image embedding in the shared image-text space (normalised here).
        cases: retrieved cases in any order; the ``config.top_k_cases`` best by score are used.
        embed_sentences: maps ``n`` sentences to ``[n, D]`` L2-normalised text embeddings;
            called at most once, with one text per distinct :func:`sentence_key`.
        config: selection weights and limits.
        image_findings: the probability per finding label that the query image shows it (the
            checkpoint's finding head, `DualEncoder.image_findings`); None: not judged.

    Returns:
        An unverified :class:`Draft`; empty (not an error) when there is nothing to use.

    Raises:
        ValueError: ``query`` is not a finite non-zero ``[D]`` vector, the embedder's
            output is not ``[n, D]`` and finite, or case ids repeat / scores are not finite.
        TypeError: an element of ``cases`` is not a :class:`SourceCase`.
    """
    q = _check_query(query)
    used = _top_cases(cases, config.top_k_cases)
    case_ids = tuple(c.case_id for c in used)
    units = _extract_units(used) if used else []
    if not units:
        return Draft((), (), case_ids)
    row, emb = _embed(units, embed_sentences, q.shape[0])
    sims = emb @ q  # [K] cosine of each distinct sentence with the query
    groups = _cluster(units, row, emb, sims, config.duplicate_threshold)
    for g in groups:
        _summarise(g, row, sims, config.support_weight)
    if config.agreement_weight > 0:
        _add_agreement(groups, units, _section_counts(used), config.agreement_weight)
    found, weight = case_findings(units)
    groups, unseen = seen(groups, image_findings, config.image_threshold, sides=not _image_scored(used))
    kept, unsupported = supported(groups, found, weight, config.min_finding_share, image_findings,
                                   config.image_threshold)
    nearest = _side_cases(used, config.side_cases)
    mass = sum(max(c.score, 0.0) for c in nearest)
    near = {c.case_id: (max(c.score, 0.0) / mass if mass > 0 else 1 / len(nearest)) for c in nearest}
    kept, alternative = resolve_alternatives(kept, found, weight, near)
    kept, contradicted = resolve_contradictions(kept)
    chosen, unselected = _select(kept, config, used)
    chosen.sort(key=lambda g: (section_order.index(g.section), g.position, -g.score, g.first))
    sentences = tuple(DraftSentence(g.text, g.section, g.score, g.sources) for g in chosen)
    return Draft(sentences, tuple(unseen + unsupported + alternative + contradicted + unselected), case_ids)
