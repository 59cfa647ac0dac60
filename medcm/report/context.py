"""Finding claims of report sentences with medspaCy's ConText, and the pairs of sentences that contradict.

The pipeline (built once, lazily) is a blank English spaCy tokenizer, one sentence per doc (the project
splits sentences itself, :func:`medcm.report.text.split_sentences`), medspaCy's target matcher over the
project's lexicon (:mod:`medcm.report.lexicon`: findings, organs, normal phrases) and ConText with its
default rules plus a few for radiology wording ("no change", "without contrast", "is not seen",
"cannot be excluded"). Each finding becomes a :class:`~medcm.report.assertions.FindingClaim`: its
status from ConText (negated -> absent, uncertain, historical), its organ, side, degree, size and count
from the nearest words in its clause; a normal statement ("The lungs are clear.", "Normal chest
radiograph.") becomes an absent claim of any finding in the organs it covers.
"""

from __future__ import annotations

import functools
import importlib
import re
import threading
from collections.abc import Sequence
from typing import Any

from medcm.report.assertions import FindingClaim, describe, first_conflict
from medcm.report.lexicon import (
    ANY, ATTRIBUTE_WORDS, COUNTS, DEGREES, FINDINGS, NORMAL_EXCEPTIONS, NORMAL_TERMS, ORGAN_SIDES, ORGANS,
    QUALIFIERS, SIDES, SIZE_WORDS, STUDY_WORDS, THRESHOLD_WORDS, ancestors, plural_forms,
)
from medcm.report.text import split_sentences

__all__ = ["FindingClaim", "sentence_claims", "finding_claims", "contradicting_pairs", "build_pipeline", "sizes_mm",
           "NORMAL_LABEL", "finding_labels"]

# A clause ends at these: a finding's organ, side and size are looked for within its clause.
_CUT_WORDS = frozenset({"and", "or", "but", "with", "without", "while", "whereas", "which", "although", "however",
                        "though", "except", "versus", "vs", "nor", ";", ",", ".", "(", ")", "[", "]"})
# Words allowed around a generic finding with no organ ("No acute abnormality."): anything else
# ("No evidence of Crohn disease.") makes it a specific statement the lexicon cannot name.
_GLOBAL_FILLER = frozenset({"no", "not", "any", "acute", "significant", "evidence", "of", "for", "there", "is", "are",
                            "was", "were", "seen", "identified", "noted", "demonstrated", "detected", "definite",
                            "other", "intrinsic", "focal", "gross", "obvious", "radiographic", "imaging", "the"})
_DETERMINERS = frozenset({"the", "this", "that", "these", "those", "its", "their"})
_LANDMARK = frozenset({"adjacent", "near", "abutting", "overlying", "displacing", "compressing", "encasing"})
_ELSEWHERE = frozenset({"otherwise", "elsewhere", "remainder"})
_AFTER_NORMAL = STUDY_WORDS | {"in", "and", "appearing", "sized", "size", "for", "on", "at", "with", "without",
                               "throughout", "bilaterally"}
# Words that are no eponym when capitalised ("Left Pleural Effusion" is a pleural effusion).
_KNOWN_WORDS = frozenset(w for terms in ORGANS.values() for t in terms for w in t.split()) | frozenset(
    [*SIDES, *DEGREES, *COUNTS, *QUALIFIERS, *(w for t in NORMAL_TERMS for w in t.split())])
_SIZE = re.compile(r"((?:\d+(?:\.\d+)?\s*(?:x|by|\u00d7)\s*)*\d+(?:\.\d+)?)\s*-?\s*(mm|cm|millimet\w*|centimet\w*)\b",
                   re.I)
_PSEUDO_QUALIFIERS = ["significant", "appreciable", "substantial", "definite", "interval", "further", "other",
                      "major", "gross", "measurable", "notable", "overall", "new"]
_NOT = {"IN": ["not", "n't"]}
_BUILD_LOCK = threading.Lock()  # first drafts may come from several request threads at once


def _context_rules(rule_class: Any) -> list[Any]:
    """Radiology wording that medspaCy's default ConText rules lack."""
    def rule(literal: str, category: str, direction: str, pattern: list[dict[str, Any]]) -> Any:
        return rule_class(literal, category, direction=direction, pattern=pattern)

    be = {"LOWER": {"IN": ["is", "are", "was", "were", "be", "been"]}, "OP": "?"}
    seen = ["seen", "identified", "visualized", "visualised", "present", "evident", "appreciated", "demonstrated",
            "detected", "noted", "visible", "apparent", "shown"]
    return [
        rule("no change", "PSEUDO", "PSEUDO", [{"LOWER": {"IN": ["no", "without"]}},
                                               {"LOWER": {"IN": _PSEUDO_QUALIFIERS}, "OP": "*"},
                                               {"LOWER": {"IN": ["change", "changes", "increase", "decrease",
                                                                 "growth", "progression"]}}]),
        rule("not changed", "PSEUDO", "PSEUDO", [{"LOWER": _NOT}, {"LOWER": {"IN": ["significantly"]}, "OP": "?"},
                                                 {"LOWER": {"IN": ["changed", "increased", "decreased"]}}]),
        rule("without contrast", "PSEUDO", "PSEUDO", [{"LOWER": {"IN": ["without", "no", "non"]}},
                                                      {"ORTH": "-", "OP": "?"},
                                                      {"LOWER": {"IN": ["iv", "intravenous", "oral"]}, "OP": "?"},
                                                      {"LOWER": "contrast"}]),
        rule("not only", "PSEUDO", "PSEUDO", [be, {"LOWER": _NOT}, {"LOWER": "been", "OP": "?"}, {"LOWER": {"IN": [
            "only", "allow", "permit", "obtained", "performed", "available", "included", "provided", "done"]}}]),
        rule("partial resolution", "PSEUDO", "PSEUDO", [
            {"LOWER": {"IN": ["partial", "partially", "incomplete", "incompletely", "slight", "some"]}},
            {"LOWER": {"IN": ["resolution", "resolved", "resolving"]}}]),
        rule("is not seen", "NEGATED_EXISTENCE", "BACKWARD", [be, {"LOWER": _NOT}, {"LOWER": {"IN": seen}}]),
        rule("no longer seen", "NEGATED_EXISTENCE", "BACKWARD", [be, {"LOWER": "no"}, {"LOWER": "longer"},
                                                                  {"LOWER": {"IN": seen}, "OP": "?"}]),
        rule("is absent", "NEGATED_EXISTENCE", "BACKWARD", [be, {"LOWER": "absent"}]),
        rule("has resolved", "NEGATED_EXISTENCE", "BACKWARD", [{"LOWER": {"IN": ["has", "have", "had"]}},
                                                               {"LOWER": "resolved"}]),
        rule("resolution of", "NEGATED_EXISTENCE", "FORWARD", [{"LOWER": "resolution"}, {"LOWER": "of"}]),
        rule("cannot be excluded", "POSSIBLE_EXISTENCE", "BACKWARD", [
            {"LOWER": {"IN": ["can", "could"]}, "OP": "?"}, {"LOWER": _NOT}, {"LOWER": "be"},
            {"LOWER": {"IN": ["entirely", "completely", "definitely", "fully", "totally"]}, "OP": "?"},
            {"LOWER": {"IN": ["excluded", "ruled"]}}, {"LOWER": "out", "OP": "?"}]),
        rule("cannot exclude", "POSSIBLE_EXISTENCE", "FORWARD", [
            {"LOWER": {"IN": ["can", "could"]}}, {"LOWER": _NOT}, {"LOWER": {"IN": ["exclude", "rule"]}},
            {"LOWER": "out", "OP": "?"}]),
        rule("may represent", "POSSIBLE_EXISTENCE", "FORWARD", [
            {"LOWER": {"IN": ["may", "might", "could"]}}, {"LOWER": {"IN": ["represent", "reflect", "be",
                                                                              "indicate"]}}]),
        rule("questionable", "POSSIBLE_EXISTENCE", "FORWARD", [{"LOWER": {"IN": [
            "questionable", "equivocal", "indeterminate", "suspected", "presumed", "probable", "possibly",
            "differential", "ddx", "question"]}}]),
        rule("versus", "POSSIBLE_EXISTENCE", "BIDIRECTIONAL", [{"LOWER": {"IN": ["versus", "vs", "vs."]}}]),
        rule("to evaluate for", "HYPOTHETICAL", "FORWARD", [
            {"LOWER": {"IN": ["to", "performed"]}}, {"LOWER": {"IN": ["evaluate", "assess", "exclude", "check",
                                                                      "look"]}}, {"LOWER": "for"}]),
        rule("to suggest", "HYPOTHETICAL", "FORWARD", [{"LOWER": "to"}, {"LOWER": {"IN": ["suggest", "indicate"]}}]),
        rule("was considered", "POSSIBLE_EXISTENCE", "BACKWARD", [{"LOWER": {"IN": ["was", "were", "is", "are"]}},
                                                                  {"LOWER": "considered"}]),
        rule("initial", "HISTORICAL", "FORWARD", [{"LOWER": {"IN": ["initial", "initially", "previous",
                                                                     "previously"]}}]),
        rule(";", "TERMINATE", "TERMINATE", [{"ORTH": {"IN": [";", ")"]}}]),
    ]


def _target_rules(rule_class: Any) -> list[Any]:
    """One target rule per lexicon wording (and its plural); the lexicon entry rides in ``metadata``."""
    rules = []
    for finding in FINDINGS:
        for term in finding.terms:
            rules += [rule_class(form, "FINDING", metadata={"finding": finding}) for form in plural_forms(term)]
    for organ, terms in ORGANS.items():
        for term in terms:
            rules += [rule_class(form, "ORGAN", metadata={"organ": organ, "side": ORGAN_SIDES.get(term)})
                      for form in plural_forms(term)]
    rules += [rule_class(term, "NORMAL", metadata={"organs": organs}) for term, organs in NORMAL_TERMS.items()]
    # One token pattern, so that spaCy's Matcher is not empty (it warns on every doc otherwise).
    rules.append(rule_class("within normal limit", "NORMAL", metadata={"organs": NORMAL_TERMS["within normal limits"]},
                            pattern=[{"LOWER": "within"}, {"LOWER": "normal"}, {"LOWER": {"IN": ["limit", "range"]}}]))
    return rules


def _one_sentence(doc: Any) -> Any:
    """Marks sentence starts: the doc is one sentence, unless a period runs into a capital ("seen.Axial")."""
    for token in doc:
        token.is_sent_start = token.i == 0 or (doc[token.i - 1].text == "." and token.text[:1].isupper())
    return doc


@functools.lru_cache(maxsize=1)
def build_pipeline() -> Any:
    """The spaCy pipeline (built on first use, then cached): tokenizer, one sentence, targets, ConText.

    Raises:
        ImportError: medspaCy or spaCy is not installed.
    """
    try:
        importlib.import_module("medspacy")  # registers medspaCy's pipeline factories
        import spacy
        from medspacy.context import ConTextRule
        from medspacy.target_matcher import TargetRule
        from spacy.language import Language
    except ImportError as e:
        raise ImportError(f"medcm.report.context needs spacy and medspacy (missing: {e.name}); "
                          "run `bash scripts/setup.sh`") from e
    with _BUILD_LOCK:
        if not Language.has_factory("medcm_one_sentence"):
            Language.component("medcm_one_sentence", func=_one_sentence)
        nlp = spacy.blank("en")
        nlp.add_pipe("medcm_one_sentence")
        nlp.add_pipe("medspacy_target_matcher").add(_target_rules(TargetRule))
        nlp.add_pipe("medspacy_context").add(_context_rules(ConTextRule))
    return nlp


def _status(span: Any) -> str | None:
    ext = span._
    if ext.is_hypothetical or ext.is_family:
        return None
    if ext.is_historical:  # "Initial radiographs were negative for fracture." tells of another time
        return "historical"
    if ext.is_negated:
        return "absent"
    return "uncertain" if ext.is_uncertain else "present"


def _clause(doc: Any, span: Any) -> tuple[int, int]:
    """Token range of the clause holding ``span``: between the nearest cut words on either side."""
    start, end = span.start, span.end
    while start > 0 and doc[start - 1].lower_ not in _CUT_WORDS:
        start -= 1
    while end < len(doc) and doc[end].lower_ not in _CUT_WORDS:
        end += 1
    return start, end


def _nearest_at(items: list[tuple[int, Any]], span: Any, lo: int, hi: int) -> tuple[int, Any] | None:
    """The item ``(token index, value)`` in [lo, hi) closest to ``span`` (ties: the later), else None."""
    inside = [(min(abs(i - span.start), abs(i - (span.end - 1))), -i, v) for i, v in items if lo <= i < hi
              and not span.start <= i < span.end]
    best = min(inside, key=lambda x: x[:2]) if inside else None
    return (-best[1], best[2]) if best else None


def _nearest(items: list[tuple[int, Any]], span: Any, lo: int, hi: int) -> Any:
    """The value of :func:`_nearest_at`, else None."""
    hit = _nearest_at(items, span, lo, hi)
    return hit[1] if hit else None


def sizes_mm(text: str) -> list[float]:
    """Every size `text` states, in mm ("2 x 3 cm" is one size, its largest: 30)."""
    return [max(float(n) for n in re.findall(r"\d+(?:\.\d+)?", m[1])) * (10.0 if m[2].lower().startswith("c") else 1.0)
            for m in _SIZE.finditer(text)]


def _size(text: str) -> tuple[float | None, float | None]:
    """``(size in mm, threshold in mm)`` of a clause: "No nodule larger than 5 mm" gives a threshold."""
    for m in _SIZE.finditer(text):
        mm = max(float(n) for n in re.findall(r"\d+(?:\.\d+)?", m[1]))
        mm *= 10.0 if m[2].lower().startswith("c") else 1.0
        if set(text[:m.start()].lower().split()[-3:]) & THRESHOLD_WORDS:
            return None, mm
        return mm, None
    return None, None


def _is_reference(doc: Any, span: Any) -> bool:
    """A denial that reaches a finding through "the"/"this" is about something else of it: "no fat
    within the mass", "no enhancement of this lesion" deny the fat and the enhancement, not the mass."""
    ends = [m.modifier_span[1] for m in span._.modifiers
            if m.category == "NEGATED_EXISTENCE" and m.modifier_span[1] <= span.start]
    return bool(ends) and any(t.lower_ in _DETERMINERS for t in doc[max(ends):span.start])


def _name(doc: Any, span: Any, name: str) -> str:
    """The finding's name, or "<eponym> <name>" for a named finding the lexicon does not know
    ("Bankart lesion", "Hill-Sachs lesion"): a capitalised word mid-sentence, in a sentence not in Title Case."""
    prev = doc[span.start - 1] if span.start > 0 else None
    if prev is None or not prev.is_title or prev.is_sent_start or prev.lower_ in _KNOWN_WORDS:
        return name
    words = [t for t in doc if t.is_alpha]
    return name if sum(t.is_title or t.is_upper for t in words) > len(words) / 2 else f"{prev.lower_} {name}"


def _finding_claim(doc: Any, span: Any, status: str, organs: list, sides: list, sentence: str) -> FindingClaim:
    finding = span._.target_rule.metadata["finding"]
    lo, hi = _clause(doc, span)
    found = None if finding.fixed else _nearest(organs, span, lo, hi)
    side = _nearest(sides, span, lo, hi)
    sent = span.sent
    if status == "absent" and not finding.fixed and found is None:
        found = _nearest(organs, span, sent.start, sent.end)  # "The left kidney is normal with no masses."
    if status == "absent" and side is None:
        side = _nearest(sides, span, sent.start, sent.end)  # a narrower denial: never a false contradiction
    organ, organ_side = found or (finding.organ, None)
    words = [(t.i, t.lower_) for t in doc[lo:hi]]
    qualifiers = {QUALIFIERS[w] for i, w in words if w in QUALIFIERS
                  and (i < span.start or QUALIFIERS[w] in ("chronic", "other"))}
    if status == "absent" and any(t.lower_ in _ELSEWHERE for t in sent):
        qualifiers.add("other")  # "The lungs are otherwise clear without mass." denies other masses
    size_mm, max_mm = _size(doc[lo:hi].text)
    degree = _nearest([(i, DEGREES[w]) for i, w in words if w in DEGREES], span, lo, hi)
    count = _nearest([(i, COUNTS[w]) for i, w in words if w in COUNTS and i < span.start], span, lo, hi)
    return FindingClaim(_name(doc, span, finding.name), organ, side or organ_side, status, sentence, span.text,
                        degree, size_mm, count, frozenset(qualifiers), max_mm)


def _normal_claim(doc: Any, span: Any, organs: list, sides: list, sentence: str) -> FindingClaim | None:
    """A normal statement as an absent claim of any finding (or of enlargement: "Heart size is normal.")."""
    lo, hi = _clause(doc, span)
    found = _nearest_at(organs, span, lo, hi) or _nearest_at(organs, span, span.sent.start, span.start)
    # "normal in size and attenuation": the words after it up to the next organ qualify it too.
    tail = next((i for i, _ in organs if i >= span.end), len(doc))
    words = {t.lower_ for t in doc[lo:max(hi, tail)]}
    allowed = span._.target_rule.metadata["organs"]
    if found is None:
        if allowed is not None or not words & STUDY_WORDS:
            return None
        organ, organ_side = None, None  # "Normal study.": the whole study
    else:
        at, (organ, organ_side) = found
        if allowed is not None and organ not in allowed:
            return None
        near = [*doc[min(at + 1, span.end):max(at, span.start)], *doc[at + 1:at + 3]]
        if any(t.lower_ in ATTRIBUTE_WORDS for t in near):
            return None  # "pulmonary vascularity is normal", "normal intracranial flow voids"
    finding = "enlargement" if words & SIZE_WORDS and not words & ATTRIBUTE_WORDS else ANY
    side = _nearest(sides, span, lo, hi) or organ_side
    if side == "bilateral":
        side = None  # "Both lungs are clear." is about either side, unlike "No bilateral effusions."
    return FindingClaim(finding, organ, side, "absent", sentence, span.text)


def _organ_tokens(doc: Any, ents: list) -> list[tuple[int, tuple[str, str | None]]]:
    """``(token index, (organ, side))`` of the organ words, leaving out landmarks ("adjacent to the patella")."""
    out = []
    for e in ents:
        if e.label_ == "ORGAN" and not any(t.lower_ in _LANDMARK for t in doc[max(0, e.start - 5):e.start]):
            meta = e._.target_rule.metadata
            out += [(i, (meta["organ"], meta["side"])) for i in range(e.start, e.end)]
    return out


def _bare_generic(doc: Any, span: Any) -> bool:
    """A generic finding with nothing around it but negation and filler words ("No acute abnormality.")."""
    lo, hi = _clause(doc, span)
    return all(not t.is_alpha or t.lower_ in _GLOBAL_FILLER for t in doc[lo:hi] if not span.start <= t.i < span.end)


def _claims(doc: Any, sentence: str) -> tuple[FindingClaim, ...]:
    ents = list(doc.ents)
    organs = _organ_tokens(doc, ents)
    sides = [(t.i, SIDES[t.lower_]) for t in doc if t.lower_ in SIDES]
    finding_at = {e.start for e in ents if e.label_ == "FINDING"}
    organ_at = {e.start for e in ents if e.label_ == "ORGAN"}
    # "normal" used as an adjective of a finding or a property: "normal enhancement", "normal signal".
    adjective_end = {e.end for e in ents if e.label_ == "NORMAL" and e.text.lower() in ("normal", "unremarkable")}
    claims: list[FindingClaim] = []
    for e in ents:
        status = _status(e) if e.label_ == "FINDING" else None
        if status is None or adjective_end & {e.start, e.start - 1}:
            continue
        if status == "absent" and _is_reference(doc, e):
            continue
        if e._.target_rule.metadata["finding"].name == ANY:  # only denied, only as a noun, only with a site
            if status != "absent" or e.end in finding_at | organ_at:
                continue  # "abnormality" asserts nothing; "transverse process fracture" is a fracture
            claim = _finding_claim(doc, e, status, organs, sides, sentence)
            if claim.organ is not None or _bare_generic(doc, e):
                claims.append(claim)
        else:
            claims.append(_finding_claim(doc, e, status, organs, sides, sentence))
    if any(c.status in ("present", "uncertain") for c in claims) or any(t.lower_ in NORMAL_EXCEPTIONS for t in doc):
        return tuple(claims)  # a sentence that states a finding, or a partial one, is no normal statement
    organ_words = {i for i, _ in organs}
    for e in ents:
        # "normal <X>" speaks of the organ only when X is one ("normal liver") or the study ("normal CT");
        # "normal biodistribution", "normal arterial flow", "clear cell" speak of something else.
        nxt = doc[e.end] if e.end < len(doc) else None
        of_organ = nxt is None or nxt.i in organ_words or not nxt.is_alpha or nxt.lower_ in _AFTER_NORMAL
        if e.label_ == "NORMAL" and _status(e) == "present" and of_organ:
            claims += [c for c in [_normal_claim(doc, e, organs, sides, sentence)] if c]
    return tuple(claims)


@functools.lru_cache(maxsize=65536)  # drafts re-read the same source sentences
def sentence_claims(sentence: str) -> tuple[FindingClaim, ...]:
    """The finding claims of one sentence (already split), in the order they are named.

    Raises:
        TypeError: ``sentence`` is not a str.
        ImportError: medspaCy is not installed.
    """
    if not isinstance(sentence, str):
        raise TypeError(f"sentence must be str, got {type(sentence).__name__}")
    return _claims(build_pipeline()(sentence), sentence)


def finding_claims(text: str) -> list[FindingClaim]:
    """The finding claims of every sentence of ``text`` (split with :func:`~medcm.report.text.split_sentences`).

    Raises:
        TypeError: ``text`` is not a str.
    """
    return [c for s in split_sentences(text) for c in sentence_claims(s)]


NORMAL_LABEL = "normal"


def finding_labels(text: str) -> tuple[str, ...]:
    """Weak labels of a report's text for training (as CheXpert's labeller gives): each finding it states
    as present and each more general finding that includes it (`medcm.report.lexicon.ancestors`: a
    pneumonia is a consolidation and an opacity), alone and with its side ("nodule", "nodule:right",
    "opacity:right"...), or ``NORMAL_LABEL`` when it states none.

    Raises:
        TypeError: ``text`` is not a str.
    """
    labels: set[str] = set()
    for claim in finding_claims(text):
        if claim.status == "present" and claim.finding != ANY:
            for finding in ancestors(claim.finding) - {ANY}:
                labels.add(finding)
                if claim.side:
                    labels.add(f"{finding}:{claim.side}")
    return tuple(sorted(labels)) or (NORMAL_LABEL,)


def contradicting_pairs(sentences: Sequence[str]) -> list[tuple[int, int, str]]:
    """``(i, j, reason)`` for each pair of sentences ``i < j`` where one denies what the other states.

    Sentences may come from different sections (FINDINGS and IMPRESSION are compared too); the reason
    names both claims, e.g. ``"'no nodule' (lung nodule) vs 'nodule' (right lung nodule)"``.
    """
    claims = [sentence_claims(s) for s in sentences]
    pairs = []
    for i in range(len(sentences)):
        for j in range(i + 1, len(sentences)):
            if hit := first_conflict(claims[i], claims[j]):
                denial, claim = hit
                pairs.append((i, j, f"'{denial.term}' ({describe(denial)}) vs '{claim.term}' ({describe(claim)})"))
    return pairs
