"""What a report sentence claims about a finding, and when two sentences' claims clash.

A :class:`FindingClaim` is one finding a sentence asserts, denies, doubts or recalls, with its organ,
side, degree, size and count; `medcm.report.context` extracts them with medspaCy's ConText.
:func:`first_conflict` finds a claim denied by another sentence ("No pleural effusion." /
"Small left effusion."; "The lungs are clear." / "12 mm nodule in the right lower lobe.");
:func:`first_alternative` finds the same positive finding at another side, degree, size or count
("Small right pleural effusion." / "Large left pleural effusion."). Stdlib only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from medcm.report.lexicon import ANY, ancestors, covers, is_chronic

__all__ = ["FindingClaim", "STATUSES", "denies", "alternatives", "first_conflict", "first_alternative", "describe"]

STATUSES = ("present", "absent", "uncertain", "historical")

_SIZE_RATIO = 1.25
"""Two sizes differ when the larger is more than this many times the smaller (12 mm is 1.2 cm)."""


@dataclass(frozen=True)
class FindingClaim:
    """One finding as one sentence states it.

    Attributes:
        finding: the canonical finding (:data:`medcm.report.lexicon.ANY` for "normal"/"no abnormality").
        organ: the canonical organ or region, None when the sentence names none.
        side: "left", "right", "bilateral" or None.
        status: "present", "absent", "uncertain" or "historical" (ConText's negation, uncertainty, history).
        sentence: the sentence it comes from.
        term: the words that named the finding.
        degree: "small", "moderate", "large" or None.
        size_mm: the largest dimension given, in mm.
        count: "one", "many" or None.
        qualifiers: narrowing words' classes ("new", "other", "acute", "significant", "chronic").
        max_mm: for a denial with a threshold ("No nodule larger than 5 mm."), the threshold in mm.
    """
    finding: str
    organ: str | None
    side: str | None
    status: str
    sentence: str
    term: str = ""
    degree: str | None = None
    size_mm: float | None = None
    count: str | None = None
    qualifiers: frozenset[str] = frozenset()
    max_mm: float | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"FindingClaim.status: got {self.status!r}, expected one of {STATUSES}")


def _organs_meet(denial: FindingClaim, claim: FindingClaim) -> bool:
    if denial.finding == ANY:  # a normal statement covers only the organs it names
        scope = covers(denial.organ)
        return scope is None or claim.organ in scope
    if denial.organ is None:  # "No mass." denies a mass anywhere
        return True
    # "No renal mass." says nothing of a mass of unknown site, "No pulmonary nodule." nothing of a chest wall one.
    return claim.organ in covers(denial.organ)


def _sides_meet(denied: str | None, stated: str | None) -> bool:
    """"No effusion." denies any side; "No left effusion." a left or bilateral one, not a right one."""
    if denied is None:
        return True
    if denied == "bilateral":
        return stated == "bilateral"
    return stated in (denied, "bilateral")


def denies(denial: FindingClaim, claim: FindingClaim) -> bool:
    """Whether ``denial`` (absent) says that ``claim`` (present or uncertain) is not there.

    The denied finding must be the claimed one or include it ("no opacity" denies a nodule, "normal
    chest" denies everything in the chest); "no other/new/acute/significant ..." leave room for named,
    old, chronic and small findings; "no nodule larger than 5 mm" for a 4 mm nodule.
    """
    if denial.status != "absent" or claim.status not in ("present", "uncertain"):
        return False
    if claim.finding == ANY or denial.finding not in ancestors(claim.finding):
        return False
    q = denial.qualifiers
    if "other" in q or ("new" in q and "new" not in claim.qualifiers):
        return False
    if "acute" in q and ("chronic" in claim.qualifiers or is_chronic(claim.finding)):
        return False
    if "significant" in q and claim.degree == "small":
        return False
    if denial.max_mm is not None and (claim.size_mm is None or claim.size_mm <= denial.max_mm):
        return False
    return _organs_meet(denial, claim) and _sides_meet(denial.side, claim.side)


def _differ(a: object, b: object) -> bool:
    return a is not None and b is not None and a != b


def alternatives(a: FindingClaim, b: FindingClaim) -> bool:
    """The same positive finding in one organ, stated with another side, degree, size or count."""
    if a.status != "present" or b.status != "present" or a.finding != b.finding or a.finding == ANY:
        return False
    if a.organ is not None and b.organ is not None and not (a.organ in covers(b.organ) or b.organ in covers(a.organ)):
        return False
    sizes = (a.size_mm, b.size_mm)
    sizes_differ = None not in sizes and max(sizes) > _SIZE_RATIO * min(sizes)
    return _differ(a.side, b.side) or _differ(a.degree, b.degree) or _differ(a.count, b.count) or sizes_differ


def first_conflict(a: Iterable[FindingClaim], b: Iterable[FindingClaim],
                   ) -> tuple[FindingClaim, FindingClaim] | None:
    """``(denial, denied claim)`` for the first claim of one sentence that the other denies, else None."""
    a, b = tuple(a), tuple(b)
    for denials, claims in ((a, b), (b, a)):
        for n in denials:
            for p in claims:
                if denies(n, p):
                    return n, p
    return None


def first_alternative(a: Iterable[FindingClaim], b: Iterable[FindingClaim],
                      ) -> tuple[FindingClaim, FindingClaim] | None:
    """The first pair of claims, one per sentence, that are :func:`alternatives`, else None."""
    b = tuple(b)
    return next(((x, y) for x in a for y in b if alternatives(x, y)), None)


def describe(claim: FindingClaim) -> str:
    """A short name for a claim: "right lung nodule", "pleura effusion"."""
    return " ".join(w for w in (claim.side, claim.organ, claim.finding) if w)
