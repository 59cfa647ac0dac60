"""Which drafted claims stay (steps 2-5 of `medcm.report.draft`): a finding's alternatives, its support
by the retrieved cases and by the image, contradictions, and the IMPRESSION rebuilt from the kept FINDINGS.

`Unit` is one sentence occurrence in one source case; `Group` merges duplicates and carries their score,
evidence, sources and finding claims. The drafter builds and scores them; the functions here decide
which of them stay and say why each dropped sentence went.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

from medcm.report.assertions import FindingClaim, alternatives, describe, first_alternative, first_conflict
from medcm.report.context import sentence_claims, sizes_mm
from medcm.report.draft_types import DroppedSentence, Provenance, SourceCase
from medcm.report.image_findings import shown, unseen_claim
from medcm.report.lexicon import ANY

__all__ = ["Group", "Pair", "Unit", "alternative", "case_findings", "impression_from_findings", "resolve_alternatives",
           "resolve_contradictions", "seen", "share", "sized", "strength", "supported"]


@dataclass(frozen=True)
class Unit:
    """One sentence occurrence in one source case."""
    case: SourceCase
    weight: float  # the case's share of the support mass
    section: str
    position: float  # relative position in its section, (i + 0.5) / n
    text: str
    key: str
    order: int  # first-seen order, the last tie-break


@dataclass
class Group:
    """Merged duplicates; the fields after ``units`` are filled by the drafter (`medcm.report.draft`)."""
    section: str
    negated: bool
    units: list[Unit]
    text: str = ""
    score: float = 0.0
    evidence: float = 0.0
    position: float = 0.0
    first: int = 0
    sources: tuple[Provenance, ...] = ()
    claims: tuple[FindingClaim, ...] = ()
    support: float = 0.0  # the sources' share of the retrieval-score mass


def alternative(a: Group, b: Group) -> FindingClaim | None:
    """The finding ``b`` states at another side, degree, size or count than ``a``: the query has one
    of them. Two sentences that exactly the same cases wrote together (a bilateral finding described
    side by side) are not alternatives.
    """
    if {p.case_id for p in a.sources} == {p.case_id for p in b.sources}:
        return None
    pair = first_alternative(b.claims, a.claims)
    return pair[0] if pair else None


Pair = tuple[str, str | None]  # (finding, side)


def case_findings(units: list[Unit]) -> tuple[dict[str, set[Pair]], dict[str, float]]:
    """Per retrieved case, the (finding, side) pairs its report states as present; and its weight."""
    found: dict[str, set[Pair]] = {}
    weight: dict[str, float] = {}
    for u in units:
        weight[u.case.case_id] = u.weight
        pairs = found.setdefault(u.case.case_id, set())
        pairs.update((c.finding, c.side) for c in sentence_claims(u.text) if c.status == "present" and c.finding != ANY)
    return found, weight


def share(found: dict[str, set[Pair]], weight: dict[str, float], finding: str, side: str | None = None,
           any_side: bool = False) -> float:
    """The weighted share of retrieved cases stating ``finding`` (at ``side`` unless ``any_side``)."""
    return sum(weight[c] for c, pairs in found.items()
               if any(f == finding and (any_side or s == side) for f, s in pairs))


def strength(g: Group, found: dict[str, set[Pair]], weight: dict[str, float], near: dict[str, float],
              ) -> tuple[float, float, float]:
    """How strongly the retrieved cases back this group's findings at its sides: the share of the
    nearest cases' weight (``near``), the best score of a case stating it, the share of all cases."""
    pairs = [(c.finding, c.side) for c in g.claims if c.status == "present"]
    if not pairs:
        return 0.0, -math.inf, 0.0
    stating = {c for c, stated in found.items() if any(p in stated for p in pairs)}
    near_share = sum(w for c, w in near.items() if c in stating)
    best = max((p.case_score for p in g.sources), default=-math.inf)
    return near_share, best, max(share(found, weight, f, s) for f, s in pairs)


def resolve_alternatives(groups: list[Group], found: dict[str, set[Pair]], weight: dict[str, float],
                          near: dict[str, float]) -> tuple[list[Group], list[DroppedSentence]]:
    """One finding gets one side, degree, size and count in a draft: of alternatives (in either
    section) the one most of the nearest cases state stays, then the one the nearest case states,
    then the one most retrieved cases state, then the most query-like."""
    kept: list[Group] = []
    dropped: list[DroppedSentence] = []
    strengths = {id(g): strength(g, found, weight, near) for g in groups}
    for g in sorted(groups, key=lambda g: tuple(-x for x in strengths[id(g)]) + (-g.sources[0].sentence_score,
                                                                                  -g.evidence, g.first)):
        other = next(((k, a) for k in kept if (a := alternative(k, g))), None)
        if other is None:
            kept.append(g)
            continue
        reason = (f"alternative to '{other[0].text}' ({describe(other[1])}: same finding, other side, degree, size "
                  f"or count; stated by {strengths[id(g)][0]:.0%} of the nearest cases' weight vs "
                  f"{strengths[id(other[0])][0]:.0%})")
        dropped.append(DroppedSentence(g.text, reason, g.sources))
    return kept, dropped


def supported(groups: list[Group], found: dict[str, set[Pair]], weight: dict[str, float], floor: float,
               probabilities: Mapping[str, float] | None = None, threshold: float = 0.5,
               ) -> tuple[list[Group], list[DroppedSentence]]:
    """A sentence stating a finding stays only if at least ``floor`` of the retrieved case weight states
    that finding (at any side): one neighbour's nodule is that patient's, not evidence about this image.
    A finding the query image itself shows (``probabilities``, `medcm.report.image_findings.shown`) needs no
    neighbour's word for it."""
    kept: list[Group] = []
    dropped: list[DroppedSentence] = []
    for g in groups:
        shares = [(share(found, weight, c.finding, any_side=True), c) for c in g.claims
                  if c.status == "present" and c.finding != ANY and not (probabilities and shown(c, probabilities, threshold))]
        weak = min(shares, key=lambda sc: sc[0], default=None)
        if weak is None or weak[0] >= floor:
            kept.append(g)
            continue
        reason = (f"unsupported finding: {weak[0]:.0%} of the retrieved case weight states {weak[1].finding} "
                  f"< min_finding_share {floor:.0%}")
        dropped.append(DroppedSentence(g.text, reason, g.sources))
    return kept, dropped


def seen(groups: list[Group], probabilities: Mapping[str, float] | None, threshold: float, sides: bool,
          ) -> tuple[list[Group], list[DroppedSentence]]:
    """Drops sentences the query image disagrees with (`medcm.report.image_findings.unseen_claim`); the
    head judges left against right only when ``sides``."""
    if not probabilities:
        return groups, []
    kept: list[Group] = []
    dropped: list[DroppedSentence] = []
    for g in groups:
        if (unseen := unseen_claim(g.claims, probabilities, threshold, sides)) is None:
            kept.append(g)
            continue
        claim, why = unseen
        reason = f"not this image: {'denies' if claim.status == 'absent' else 'states'} {why}"
        dropped.append(DroppedSentence(g.text, reason, g.sources))
    return kept, dropped


def resolve_contradictions(groups: list[Group]) -> tuple[list[Group], list[DroppedSentence]]:
    """Keeps groups strongest-evidence first; one contradicting a kept group (in either section) is dropped."""
    kept: list[Group] = []
    dropped: list[DroppedSentence] = []  # the order drops happen in
    for g in sorted(groups, key=lambda g: (-g.evidence, -g.score, g.first)):
        rival = next(((k, c) for k in kept if (c := first_conflict(k.claims, g.claims))), None)
        if rival is None:
            kept.append(g)
            continue
        reason = f"contradicts '{rival[0].text}' on {describe(rival[1][1])} (weaker evidence)"
        dropped.append(DroppedSentence(g.text, reason, g.sources))
    return kept, dropped


def sized(claim: FindingClaim) -> FindingClaim:
    """The claim with the size its sentence gives where the claim has none ("nodule ..., measuring 1.2 cm")."""
    sizes = sizes_mm(claim.sentence)
    return claim if claim.size_mm is not None or len(sizes) != 1 else dataclasses.replace(claim, size_mm=sizes[0])


def impression_from_findings(groups: list[Group], findings: list[Group],
                              ) -> tuple[list[Group], list[DroppedSentence]]:
    """The IMPRESSION is rebuilt from the kept FINDINGS rather than copied from another patient: an
    impression sentence stating a finding stays only if every (finding, side) it states is stated by a
    kept FINDINGS sentence, with no other side, degree, size or count; a global normal impression ("No
    acute abnormality.") only when no finding is kept. Sentences naming no lexicon finding are left as they were.
    """
    stated = [c for g in findings for c in g.claims if c.status == "present" and c.finding != ANY]
    pairs = {(c.finding, c.side) for c in stated}
    kept: list[Group] = []
    dropped: list[DroppedSentence] = []
    for g in groups:
        positive = [c for c in g.claims if c.status in ("present", "uncertain") and c.finding != ANY]
        missing = next((c for c in positive if (c.finding, c.side) not in pairs), None)
        other = next((c for c in positive for f in stated if alternatives(sized(c), f)), None)
        normal = next((c for c in g.claims if c.status == "absent" and c.finding == ANY), None)
        if missing is not None:
            reason = f"impression not in the kept findings: {describe(missing)}"
        elif other is not None:
            reason = f"impression differs from the kept findings on {describe(other)}"
        elif normal is not None and stated:
            reason = f"normal impression beside a kept finding ({describe(stated[0])})"
        else:
            kept.append(g)
            continue
        dropped.append(DroppedSentence(g.text, reason, g.sources))
    return kept, dropped
