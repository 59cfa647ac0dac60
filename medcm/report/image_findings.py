"""Whether the query image itself shows what a sentence says, judged by the model's finding head.

The head (`REPORT_FINDINGS` in `medcm.config`) reads the shared embedding and gives, per label of
:func:`medcm.report.context.finding_labels` ("effusion", "effusion:left", "opacity"...), the probability
that an image shows it; training sets 0.5 at each label's best threshold (`medcm.model.finding_head`).
A copied sentence is another patient's unless this image agrees:

- a finding it states must be shown (its label's probability at least the threshold);
- stated at the left or the right, the image must not show the other side instead (that side's label
  at least the threshold, this side's below it); where the head is unsure of the side, the neighbours'
  side stands. The drafter skips this check when it knows which stored images are nearest the query's:
  their side was right more often than the head's on the demo (BENCHMARKS.md). Stated as bilateral, the
  bilateral label must be shown;
- a denial ("No pleural effusion.", "The lungs are clear.") must not deny a finding the image shows
  (:func:`medcm.report.assertions.denies`).

Labels the head was never trained on (a finding no training report stated) are not judged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from medcm.report.assertions import FindingClaim, denies, describe
from medcm.report.lexicon import ANY, default_organ

__all__ = ["claim_label", "shown", "unseen_claim"]

_OTHER_SIDE = {"left": "right", "right": "left"}


def claim_label(claim: FindingClaim) -> str:
    """The head's label of a claim: its finding, with its side when it names one ("nodule:right")."""
    return f"{claim.finding}:{claim.side}" if claim.side else claim.finding


def shown(claim: FindingClaim, probabilities: Mapping[str, float], threshold: float) -> bool:
    """Whether the image shows a present claim's finding (at the threshold; False for unknown labels)."""
    return (claim.status == "present" and claim.finding != ANY
            and probabilities.get(claim.finding, -1.0) >= threshold)


def _present_reason(claim: FindingClaim, probabilities: Mapping[str, float], threshold: float,
                    sides: bool) -> str | None:
    p = probabilities.get(claim.finding)
    if p is not None and p < threshold:
        return f"the image's P({claim.finding}) is {p:.2f} < {threshold:.2f}"
    side, other = claim.side, _OTHER_SIDE.get(claim.side or "") if sides else None
    here, there = probabilities.get(f"{claim.finding}:{side}"), probabilities.get(f"{claim.finding}:{other}")
    if other and here is not None and there is not None and there >= threshold > here:
        return (f"the image shows the {other} side, not this one: P({claim.finding}:{other}) {there:.2f}, "
                f"P({claim.finding}:{side}) {here:.2f}")
    both = probabilities.get(f"{claim.finding}:bilateral")
    if side == "bilateral" and both is not None and both < threshold:
        return f"the image's P({claim.finding}:bilateral) is {both:.2f} < {threshold:.2f}"
    return None


def _denial_reason(denial: FindingClaim, probabilities: Mapping[str, float], threshold: float) -> str | None:
    for label, p in sorted(probabilities.items(), key=lambda kv: -kv[1]):
        if p < threshold:
            break
        if ":" in label:
            continue
        # A specific denial speaks of its own organ; a normal statement covers only the organs it names.
        organ = default_organ(label) if denial.finding == ANY else denial.organ
        if denies(denial, FindingClaim(label, organ, None, "present", "")):
            return f"the image shows {label}: P({label}) {p:.2f} >= {threshold:.2f}"
    return None


def unseen_claim(claims: Iterable[FindingClaim], probabilities: Mapping[str, float], threshold: float,
                 sides: bool = True) -> tuple[FindingClaim, str] | None:
    """The first claim of a sentence the image disagrees with and why (see the module doc), or None.

    Args:
        claims: a sentence's claims.
        probabilities: the head's probability per label.
        threshold: the probability from which the image shows a label.
        sides: also judge left against right (False: the caller decides sides otherwise).
    """
    for claim in claims:
        if claim.status == "present" and claim.finding != ANY:
            reason = _present_reason(claim, probabilities, threshold, sides)
        elif claim.status == "absent":
            reason = _denial_reason(claim, probabilities, threshold)
        else:
            continue
        if reason is not None:
            return claim, f"{describe(claim) if claim.finding != ANY else 'normal'} — {reason}"
    return None
