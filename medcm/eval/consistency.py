"""An independent self-contradiction checker for report text (negspacy NegEx over a small lexicon of its own).

The drafter checks its own drafts with medspaCy ConText (`medcm.report.assertions`); this module shares
neither that code nor its lexicon, so the evaluation does not let the drafter grade itself. Each
descriptive section (FINDINGS, IMPRESSION, header-less text, modality subsections; not history or
technique) is split into sentences; a spaCy blank English pipeline with an EntityRuler marks findings,
organs (synonyms: hepatic → liver, pulmonary → lung), sides and normal statements ("The lungs are
clear", "Normal chest radiograph"), and negspacy's NegEx marks negated ones. Each finding becomes a
claim: (finding, organ, side, sub-sites, asserted or denied). Hedged ("possible", "cannot exclude") and
historical ("history of", "status post") mentions make no claim; a denial limited to "other", "new" or
"significant" findings, narrowed by a qualifier ("no displaced fracture") or pointing at something
already named ("no fat within the mass") denies nothing already asserted; and sentences tied to one of
several time points ("initial", "follow-up", "day 6") are not compared, as MedPix reports narrate
serial studies.

A report contradicts itself when it asserts a finding and denies the same finding (or states the organ
normal) at a compatible site: the same organ (an unknown organ fits any, except that a normal organ
only denies findings placed in it), a side the denial covers (a denial without a side covers every
side; "no right X" does not cover "left X", "no X" covers it), and sub-sites the positive shares when
the denial names some ("no nodule in the upper lobe" does not deny a lower-lobe nodule). "The lungs
are clear" speaks for the pleura too; "normal chest radiograph" for lungs, pleura, heart and mediastinum.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from medcm.eval.consistency_lexicon import (
    CLAUSE_PUNCT,
    CLAUSE_WORDS,
    EXCEPTION,
    EXCLUSIVE,
    FINDINGS,
    HEDGE,
    HISTORY,
    LIST_STOPS,
    NEGATION_WORDS,
    NORMAL_ASPECTS,
    NORMAL_COVERS,
    NORMAL_LEAD,
    NORMAL_MEANS,
    NORMAL_WORDS,
    ORGANS,
    PLAIN,
    RECOMMENDATION,
    REFERENCE,
    SIDES,
    SKIPPED_SECTIONS,
    STUDY_WORDS,
    SUBSITES,
    TIMED,
)

from medcm.report.text import split_sections, split_sentences

__all__ = ["ANY_FINDING", "Claim", "Contradiction", "contradicts", "extract_claims", "find_contradictions",
           "find_contradictions_many"]

ANY_FINDING = "*"  # the finding of a normal statement: it denies every finding in its organ(s)



@dataclass(frozen=True)
class Claim:
    """One definite statement about a finding in one sentence.

    Attributes:
        finding: canonical finding ("nodule"), or `ANY_FINDING` for a normal statement.
        negated: True for a denial ("no nodule", "the lungs are clear").
        organ: canonical organ ("lung"), or None where the sentence names none.
        side: "left", "right", "bilateral" or None.
        subsites: words naming a part of the organ ("lower", "head").
        section: the report section the sentence is in.
        sentence: the sentence.
        text: the words that made the claim.
        timed: the sentence ties itself to one of several time points ("initial", "follow-up", "day 6").
    """

    finding: str
    negated: bool
    organ: str | None
    side: str | None
    subsites: frozenset[str]
    section: str
    sentence: str
    text: str
    timed: bool = False


@dataclass(frozen=True)
class Contradiction:
    """A pair of claims of one report that cannot both hold."""

    asserted: Claim
    denied: Claim

    def describe(self) -> str:
        """``'"<asserted sentence>" vs "<denied sentence>"'`` for a reader."""
        return f'"{self.asserted.sentence}" ({self.asserted.section}) vs "{self.denied.sentence}" ({self.denied.section})'


def contradicts(asserted: Claim, denied: Claim) -> bool:
    """True when `denied` denies what `asserted` asserts at a compatible site (see the module doc)."""
    if asserted.negated or not denied.negated or asserted.timed or denied.timed:
        return False
    if denied.finding == ANY_FINDING:
        # a normal organ denies the findings placed in it; "normal study" (no organ) denies all
        if denied.organ is not None and asserted.organ != denied.organ:
            return False
    elif denied.finding != asserted.finding:
        return False
    elif None not in (asserted.organ, denied.organ) and asserted.organ != denied.organ:
        return False
    if denied.side not in (None, "bilateral") and asserted.side not in (denied.side, "bilateral"):
        return False
    return not denied.subsites or bool(denied.subsites & asserted.subsites)


def extract_claims(report: str) -> list[Claim]:
    """The definite claims of one report's descriptive sections, in reading order."""
    return _claims_many([report])[0]


def find_contradictions(report: str) -> list[Contradiction]:
    """Every (asserted, denied) pair of one report that contradicts (see the module doc)."""
    return find_contradictions_many([report])[0]


def find_contradictions_many(reports: Sequence[str]) -> list[list[Contradiction]]:
    """`find_contradictions` of each report, the sentences of all of them run through spaCy in one batch."""
    out = []
    for claims in _claims_many(reports):
        positives = [c for c in claims if not c.negated]
        negatives = [c for c in claims if c.negated]
        out.append([Contradiction(p, n) for p in positives for n in negatives if contradicts(p, n)])
    return out


def _claims_many(reports: Sequence[str]) -> list[list[Claim]]:
    if isinstance(reports, str):
        raise TypeError("reports must be a list of texts, not one str")
    units = [(i, name, sentence) for i, report in enumerate(reports) for name, body in split_sections(report).sections
             if name not in SKIPPED_SECTIONS for sentence in split_sentences(body)]
    out: list[list[Claim]] = [[] for _ in reports]
    docs = _pipeline().pipe(sentence for _, _, sentence in units)
    for (i, section, sentence), doc in zip(units, docs):
        out[i].extend(_sentence_claims(doc, section, sentence))
    return out


def _sentence_claims(doc: Any, section: str, sentence: str) -> Iterable[Claim]:
    clause_of = _clause_ids(doc)
    ents = list(doc.ents)
    for ent in ents:
        if ent.label_ == "FINDING" and (claim := _finding_claim(doc, ent, ents, clause_of, section, sentence)):
            yield claim
        elif ent.label_ == "NORMAL":
            yield from _normal_claims(doc, ent, ents, clause_of, section, sentence)


def _finding_claim(doc: Any, ent: Any, ents: list, clause_of: list[int], section: str, sentence: str) -> Claim | None:
    finding, _, intrinsic = ent.ent_id_.partition("|")
    clause = _clause_text(doc, clause_of, ent.start)
    negated = bool(ent._.negex)
    if HISTORY.search(clause) or HEDGE.search(clause):
        return None
    start = _clause_start(clause_of, ent.start)
    if negated and (EXCLUSIVE.search(doc[start:ent.start].text.lower()) or _narrowed(doc, ent, ents, start)):
        return None  # "no other nodule", "no displaced fracture", "no fat within the mass": denies less than all
    organ, side, subsites = _site(doc, ent, ents, clause_of)
    organ = organ or intrinsic or _sentence_organ(ent, ents)
    organ = "heart" if organ == "cardiomediastinal" else organ  # "enlarged cardiomediastinal silhouette"
    return Claim(finding, negated, organ, side or _sentence_side(ent, ents),
                 subsites, section, sentence, ent.text, _is_timed(sentence))


def _narrowed(doc: Any, ent: Any, ents: list, clause_start: int) -> bool:
    """True when words between a denial's negation (or list separator) and its finding narrow it: a
    qualifier ("no displaced fracture") or a reference to something named ("no fat within the mass")."""
    site_tokens = {i for e in ents if e.label_ in ("ORGAN", "SIDE") for i in range(e.start, e.end)}
    for i in range(ent.start - 1, clause_start - 1, -1):
        word = doc[i].lower_
        if word in NEGATION_WORDS or word in LIST_STOPS:
            return False
        if word in REFERENCE or (i not in site_tokens and doc[i].is_alpha and word not in PLAIN):
            return True
    return False


def _normal_claims(doc: Any, ent: Any, ents: list, clause_of: list[int], section: str, sentence: str) -> list[Claim]:
    """A normal statement's denials: one per organ it covers ("chest" covers lung, pleura, heart, ...)."""
    kind = ent.ent_id_
    word = next((t.lower_ for t in ent if t.lower_ in _organ_words()), None)
    organ = _organ_words().get(word or "")
    before = doc[_clause_start(clause_of, ent.start):ent.start].text.lower()
    if ent._.negex or EXCEPTION.search(sentence.lower()) or EXCLUSIVE.search(before):
        return []  # "lungs are not clear", "otherwise normal", "the remaining heart is normal": no global denial
    if kind == "lead" and any(t.lower_ not in NORMAL_LEAD for t in doc[: ent.start]):
        return []  # "normal liver" mid-sentence is often "surrounding normal liver", not a verdict
    if kind == "organ" and ent.start > 0 and doc[ent.start - 1].lower_ in {"and", "or", "of"}:
        return []  # "the tendons of the tarsus and foot are normal": the organ is not the subject
    if kind == "organ" and ent.end < len(doc) and doc[ent.end].lower_ == "in":
        aspects = {t.lower_ for t in doc[ent.end + 1:] if t.is_alpha}
        if not aspects & NORMAL_ASPECTS:  # "normal in size and attenuation" speaks for the whole organ
            if not aspects & {"size", "caliber", "calibre"}:
                return []  # "normal in configuration": says one thing, not every thing
            kind = "size"
    _, side, subsites = _site(doc, ent, ents, clause_of)
    finding = "enlargement" if kind == "size" else NORMAL_MEANS.get(word or "", ANY_FINDING)
    organs = NORMAL_COVERS.get(organ or "", (organ,)) if finding == ANY_FINDING else (organ,)
    timed = _is_timed(sentence)
    return [Claim(finding, True, o, side, subsites, section, sentence, ent.text, timed) for o in organs]


def _site(doc: Any, ent: Any, ents: list, clause_of: list[int]) -> tuple[str | None, str | None, frozenset[str]]:
    """The organ, side and sub-sites said in `ent`'s clause (nearest first; an organ term can carry them)."""
    here = clause_of[ent.start]
    near = sorted((e for e in ents if clause_of[e.start] == here), key=lambda e: abs(e.start - ent.start))
    organ_ent = next((e for e in near if e.label_ == "ORGAN"), None)
    organ, organ_side, organ_subsite = (organ_ent.ent_id_.split("|") + ["", ""])[:3] if organ_ent else ("", "", "")
    side_ent = next((e for e in near if e.label_ == "SIDE"), None)
    side = side_ent.ent_id_ if side_ent else (organ_side if organ_side not in ("", "-") else None)
    subsites = {t.lower_ for t in doc if clause_of[t.i] == here and t.lower_ in SUBSITES}
    if organ_subsite:
        subsites.add(organ_subsite)
    return organ or None, side, frozenset(subsites)


def _is_timed(sentence: str) -> bool:
    """True when the sentence ties itself to a time point (a recommended follow-up is not one)."""
    return bool(TIMED.search(RECOMMENDATION.sub(" ", sentence.lower())))


def _sentence_organ(ent: Any, ents: list) -> str | None:
    organs = sorted((e for e in ents if e.label_ == "ORGAN"), key=lambda e: abs(e.start - ent.start))
    return organs[0].ent_id_.split("|")[0] if organs else None


def _sentence_side(ent: Any, ents: list) -> str | None:
    sides = sorted((e for e in ents if e.label_ == "SIDE"), key=lambda e: abs(e.start - ent.start))
    return sides[0].ent_id_ if sides else None


def _clause_ids(doc: Any) -> list[int]:
    """Per token, the number of its clause (split at , ; : ( ) and at and/but/with/which/...)."""
    ids, current = [], 0
    for token in doc:
        if token.lower_ in CLAUSE_PUNCT or token.lower_ in CLAUSE_WORDS:
            current += 1
        ids.append(current)
    return ids


def _clause_start(clause_of: list[int], i: int) -> int:
    start = i
    while start > 0 and clause_of[start - 1] == clause_of[i]:
        start -= 1
    return start


def _clause_text(doc: Any, clause_of: list[int], i: int) -> str:
    return " ".join(t.lower_ for t in doc if clause_of[t.i] == clause_of[i])


@lru_cache(maxsize=1)
def _pipeline() -> Any:
    """spaCy blank English + sentencizer + EntityRuler (this module's lexicon) + negspacy NegEx, built once."""
    try:
        import spacy
        from negspacy.negation import Negex  # noqa: F401  (registers the "negex" factory)
        from negspacy.termsets import termset
    except ImportError as err:
        raise ImportError(f"medcm.eval.consistency needs spaCy and negspacy ({err}); run `bash scripts/setup.sh`") from err
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    ruler = nlp.add_pipe("entity_ruler", config={"phrase_matcher_attr": "LOWER"})
    ruler.add_patterns(_patterns())
    terms = termset("en_clinical")
    terms.add_patterns({
        "pseudo_negations": ["cannot exclude", "can not exclude", "cannot be excluded", "not excluded",
                             "not be excluded", "cannot rule out", "no interval", "without change",
                             "not significantly changed", "no significant interval", "without contrast",
                             "with and without contrast", "without and with contrast", "without iv contrast",
                             "without intravenous contrast", "not allow", "partial resolution", "incomplete resolution",
                             "not adequately", "not well"],
        "preceding_negations": ["resolution of", "no evidence for", "negative for"],
        "following_negations": ["resolved", "has resolved", "have resolved", "is absent", "are absent",
                                "not seen", "not identified", "not visualized"],
        "termination": ["there is", "there are", "consistent with", "compatible with", "representing", "whereas",
                        "while", "with", "indicating", "demonstrating", "suggesting", "showing", "shows",
                        "demonstrates", "reveals"],
    })
    nlp.add_pipe("negex", config={"neg_termset": terms.get_patterns(), "ent_types": ["FINDING", "NORMAL"]})
    return nlp


def _variants(term: str) -> list[str]:
    """The term and plural forms of its last word (over-generation is harmless: they never occur otherwise)."""
    head, _, last = term.rpartition(" ")
    forms = {last, last + "s", last + "es"} | ({last[:-1] + "ies"} if last.endswith("y") else set())
    return sorted(f"{head} {f}".strip() for f in forms)


@lru_cache(maxsize=1)
def _organ_words() -> dict[str, str]:
    """One-word organ terms (and "chest") -> canonical organ, for normal statements ("the liver is normal")."""
    words = {v: organ for organ, terms in ORGANS.items() for term in terms
             if " " not in (w := term.partition("|")[0]) for v in _variants(w)}
    return {**words, "chest": "chest"}


def _patterns() -> list[dict[str, Any]]:
    """EntityRuler patterns: FINDING, ORGAN and SIDE phrases, and NORMAL token patterns."""
    patterns: list[dict[str, Any]] = []
    for finding, terms in FINDINGS.items():
        for term in terms:
            words, _, organ = term.partition("|")
            patterns += [{"label": "FINDING", "pattern": v, "id": f"{finding}|{organ}"} for v in _variants(words)]
    for organ, terms in ORGANS.items():
        for term in terms:
            words, _, rest = term.partition("|")
            patterns += [{"label": "ORGAN", "pattern": v, "id": f"{organ}|{rest}".rstrip("|")} for v in _variants(words)]
    patterns += [{"label": "SIDE", "pattern": word, "id": side} for word, side in SIDES.items()]
    organ = {"LOWER": {"IN": sorted(_organ_words())}}
    verbs = {"LOWER": {"IN": ["is", "are", "appear", "appears", "remain", "remains", "look", "looks"]}}
    adverb = {"LOWER": {"IN": ["grossly", "essentially", "entirely", "completely", "again"]}, "OP": "?"}
    verdict = {"LOWER": {"IN": NORMAL_WORDS}}
    part = {"LOWER": {"IN": ["silhouette", "contour", "contours", "parenchyma", "field", "fields", "angle", "angles",
                             "structures"]}, "OP": "?"}
    expanded = [{"LOWER": "well", "OP": "?"}, {"LOWER": "expanded", "OP": "?"}, {"LOWER": "and", "OP": "?"}]
    patterns += [
        {"label": "NORMAL", "id": "organ", "pattern": [organ, part, verbs, *expanded, adverb, verdict]},
        {"label": "NORMAL", "id": "organ",
         "pattern": [organ, part, verbs, {"LOWER": "within"}, {"LOWER": "normal"}, {"LOWER": "limits"}]},
        {"label": "NORMAL", "id": "lead", "pattern": [verdict, organ, {"LOWER": {"IN": STUDY_WORDS}, "OP": "?"}]},
        {"label": "NORMAL", "id": "lead", "pattern": [verdict, {"LOWER": {"IN": STUDY_WORDS}}]},
        {"label": "NORMAL", "id": "size",
         "pattern": [organ, {"LOWER": "size"}, verbs, {"LOWER": {"IN": ["normal", "unremarkable"]}}]},
        {"label": "NORMAL", "id": "size", "pattern": [{"LOWER": "normal"}, organ, {"LOWER": "size"}]},
    ]
    return patterns
