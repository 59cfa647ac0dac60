"""What a report sentence claims: the findings it asserts and the ones it denies.

The drafter (`medcm.report.draft`) uses this to drop one of two sentences that contradict each other
("No pleural effusion." / "Small left pleural effusion.") or name the same finding at another
site or degree. Stdlib only; words are compared after `normalize_for_metrics`.
"""

from __future__ import annotations

import functools
import re

from medcm.report.text import is_negated, normalize_for_metrics

Claims = tuple[frozenset[str], tuple[frozenset[str], ...]]
"""``(terms asserted present, term sets asserted absent)`` of a sentence."""

# Words that carry no finding identity: function words, "seen"-type verbs, negation cues,
# quantity/size/degree modifiers and units. What remains names the finding and its site.
_IGNORED = frozenset("""a an the is are was were be been being there this that these those it its
of in on at to for with within by from as and or nor but has have had which who also again appear
appears seen noted identified present demonstrated visualized visualised appreciated detected
observed evident evidence shown suggest finding findings no not none without cannot never neither
absent absence free negative denies denied ruled out rules isnt arent wasnt werent doesnt dont
didnt hasnt havent small smaller tiny trace minimal minimally mild mildly moderate moderately large
larger severe severely marked markedly massive extensive slight slightly subtle minor significant
significantly substantial appreciable definite definitive obvious gross focal very cm mm ml size
sized amount""".split())
# Degree words (a subset of the ignored ones): "small" and "large" effusions are alternatives.
DEGREE_WORDS = frozenset("""small smaller tiny trace minimal mild moderate large larger severe massive extensive
slight subtle minor substantial""".split())
# Site words: "No pleural effusion." and "Small right basilar pleural effusion." still clash.
LOCATION_WORDS = frozenset("""left right bilateral bilaterally unilateral upper lower middle mid lobe
lobes base bases basilar basal apex apices apical lingula lingular perihilar hilar retrocardiac
lateral medial anterior posterior superior inferior proximal distal""".split())
# Clause cuts: punctuation, scope terminators, and just before a mid-sentence "no"/"without"
# so "Lungs are clear without consolidation." asserts {lungs, clear}, denies {consolidation}.
_CLAUSE = re.compile(r"([,;:]|\b(?:but|however|although|though|whereas|except)\b"
                     r"|(?=\b(?:no|without)\b))", re.I)
_SCOPE_END = frozenset({"but", "however", "although", "though", "whereas", "except"})
_PHRASE = re.compile(r"\b(?:and|or|nor)\b", re.I)


def content_terms(text: str) -> frozenset[str]:
    """The words of `text` that name a finding or its site (function, degree and negation words dropped)."""
    words = normalize_for_metrics(text).split()
    return frozenset(w for w in words if w not in _IGNORED and any(c.isalpha() for c in w))


def sentence_claims(text: str) -> Claims:
    """``(terms asserted present, term sets asserted absent)`` of a sentence.

    Clauses are cut at ",;:", "but"/"however"... and before "no"/"without"; a negated
    clause's scope runs forward until "but"/"however"..., and it denies each of its
    "and"/"or" phrases: "Small effusion and no pneumothorax or consolidation." asserts
    {effusion}, denies {pneumothorax} and {consolidation}. Whether a clause is negated is
    decided by :func:`medcm.report.text.is_negated` (so "no change" denies nothing).
    """
    if not is_negated(text):
        return content_terms(text), ()
    parts = _CLAUSE.split(text)
    present: set[str] = set()
    absent: list[frozenset[str]] = []
    in_scope = False
    for i in range(0, len(parts), 2):
        clause = parts[i]
        if i and parts[i - 1].strip().lower() in _SCOPE_END:
            in_scope = False
        in_scope = in_scope or is_negated(clause)
        if in_scope:
            absent.extend(t for t in map(content_terms, _PHRASE.split(clause)) if t)
        else:
            present |= content_terms(clause)
    return frozenset(present), tuple(absent)


def claims_contradict(a: Claims, b: Claims, max_extra: int) -> bool:
    """One asserts what the other denies: one term set contains the other, give or take at
    most ``max_extra`` non-site words (more means a different statement)."""
    def same(x: frozenset[str], y: frozenset[str]) -> bool:
        small, large = sorted((x, y), key=len)
        return bool(small) and small <= large and len(large - small - LOCATION_WORDS) <= max_extra

    (a_pos, a_neg), (b_pos, b_neg) = a, b
    return any(same(a_pos, n) for n in b_neg) or any(same(b_pos, n) for n in a_neg)


def same_finding_elsewhere(a: Claims, b: Claims, a_text: str, b_text: str, max_extra: int) -> bool:
    """Two positive sentences naming the same finding at another site or degree
    ("Large left pleural effusion." vs "Moderate right pleural effusion.")."""
    if a[1] or b[1]:
        return False
    if site_and_degree(a_text) == site_and_degree(b_text):
        return False  # same site and degree: different statements, e.g. "No change in the nodule." / "Nodule."
    small, large = sorted((a[0] - LOCATION_WORDS, b[0] - LOCATION_WORDS), key=len)
    return bool(small) and small <= large and len(large - small) <= max_extra


@functools.lru_cache(maxsize=65536)  # called for every pair of candidate sentences
def site_and_degree(text: str) -> tuple[frozenset[str], frozenset[str]]:
    """The site words and the degree words of a sentence."""
    words = set(normalize_for_metrics(text).split())
    return frozenset(words & LOCATION_WORDS), frozenset(words & DEGREE_WORDS)
