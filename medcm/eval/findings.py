"""Finding-level accuracy of drafts where each query's truth is known (the demo's studies): precision,
recall and F1 over (finding, side), laterality errors and hallucinated findings, against targets.

Each text is read by the evaluation's own checker (`medcm.eval.consistency`, not the drafter's
`medcm.report.context`), and each asserted claim's canonical finding (and organ) is named in the
demo's words by `FINDING_NAMES`; claims it does not name (e.g. "atelectasis") are counted as
unmapped and judged neither way. The truth is the query's ``meta["finding"]`` (the demo's names, or
`TRUTH_ALIASES` of `medcm.data.synthetic_ct`) and ``meta["side"]``.

Per study, a text asserts a set of (finding, side) pairs. A finding named both with and without a
side counts once per side it is named with; one named without any side is (finding, None), which
matches no sided truth; one named "left" and "right" is "bilateral". Unsided findings
(`UNSIDED`: cardiomegaly) ignore sides. Then, micro-averaged over studies:

- precision = TP / (TP + FP), recall = TP / (TP + FN) over pairs; a normal study has no true pair;
- laterality error rate = studies whose text names the true finding with a side other than the true one
  (any named side differs), over studies whose text names the true (sided) finding with a side;
- hallucinated-finding rate = studies whose text asserts a finding the study does not have (a normal
  study: any finding; the true finding on the wrong side is a laterality error, not a hallucination),
  over studies; per finding, the studies hallucinating it over all studies.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from medcm.eval.consistency import ANY_FINDING, Claim, extract_claims

__all__ = ["ANY_ORGAN", "FINDING_NAMES", "NORMAL", "TARGETS", "TRUTH_ALIASES", "UNSIDED", "asserted_pairs",
           "finding_block", "finding_name", "score_texts", "study_truth", "targets_met"]

ANY_ORGAN = "*"
NORMAL = "normal"
# (checker's canonical finding, its organ or ANY_ORGAN) -> the demo's finding name; an exact organ wins.
FINDING_NAMES: dict[tuple[str, str | None], str] = {
    ("nodule", "lung"): "pulmonary nodule",
    ("nodule", None): "pulmonary nodule",  # "right upper lobe nodule" names a lobe; "12 mm nodule" no organ
    ("nodule", "liver"): "liver lesion",
    ("lesion", "liver"): "liver lesion",
    ("mass", "liver"): "liver lesion",
    ("cyst", "liver"): "liver lesion",
    ("effusion", "pleura"): "pleural effusion",
    ("effusion", None): "pleural effusion",  # "small left effusion": no organ said; a pericardial one is not mapped
    ("pneumothorax", ANY_ORGAN): "pneumothorax",
    ("consolidation", ANY_ORGAN): "consolidation",
    ("opacity", "lung"): "consolidation",  # "patchy airspace opacity"; "nodular opacity" reads as a nodule
    ("enlargement", "heart"): "cardiomegaly",
    ("cardiomegaly", ANY_ORGAN): "cardiomegaly",
    ("fracture", ANY_ORGAN): "fracture",
}
UNSIDED = frozenset({"cardiomegaly"})
TRUTH_ALIASES = {"nodule": "pulmonary nodule", "effusion": "pleural effusion"}  # medcm.data.synthetic_ct's names
_KNOWN = frozenset(FINDING_NAMES.values()) | {NORMAL}
# measure -> (comparison, threshold): issue 17's targets on the demo's held-out studies
TARGETS: dict[str, tuple[str, float]] = {"finding F1": (">=", 0.85), "laterality error rate": ("<=", 0.05),
                                         "hallucinated-finding rate": ("<=", 0.05), "self-contradicting drafts": ("<=", 0)}
_EXAMPLES = 5

Pair = tuple[str, str | None]


def finding_name(finding: str, organ: str | None) -> str | None:
    """The demo's name of the checker's (finding, organ), or None when `FINDING_NAMES` has none."""
    return FINDING_NAMES.get((finding, organ)) or FINDING_NAMES.get((finding, ANY_ORGAN))


def study_truth(meta: Mapping[str, Any]) -> Pair | None:
    """(finding, side) of a query's metadata: side None for a normal study, an unsided finding or none
    given; None when `meta` has no "finding" or one this module cannot judge."""
    finding = str(meta.get("finding") or "").strip().lower()
    finding = TRUTH_ALIASES.get(finding, finding)
    if finding not in _KNOWN:
        return None
    side = str(meta.get("side") or "").strip().lower() or None
    return finding, None if finding in UNSIDED or finding == NORMAL else side


def asserted_pairs(claims: Sequence[Claim]) -> tuple[set[Pair], Counter[str]]:
    """The (finding, side) pairs a text's claims assert (see the module doc), and the unmapped findings' counts."""
    sides: dict[str, set[str | None]] = {}
    unmapped: Counter[str] = Counter()
    for claim in claims:
        if claim.negated or claim.finding == ANY_FINDING:
            continue
        name = finding_name(claim.finding, claim.organ)
        if name is None:
            unmapped[claim.finding] += 1
            continue
        sides.setdefault(name, set()).add(None if name in UNSIDED else claim.side)
    pairs: set[Pair] = set()
    for name, named in sides.items():
        sided = named - {None}
        if {"left", "right"} <= sided:  # said of each side in turn: both sides
            sided = (sided - {"left", "right"}) | {"bilateral"}
        pairs |= {(name, side) for side in (sided or {None})}
    return pairs, unmapped


def score_texts(texts: Sequence[str], truths: Sequence[Pair], case_ids: Sequence[str] = ()) -> dict[str, Any]:
    """Finding-level measures of one system's texts against the studies' truths (see the module doc).

    Args:
        texts: one text per study.
        truths: per study, (finding, side) as `study_truth` gives it.
        case_ids: per study, its id (names the studies in "problems"; default: the index).

    Returns:
        {"studies", "tp", "fp", "fn", "precision", "recall", "f1", "laterality": {"errors", "named", "rate"},
        "hallucination": {"studies", "rate", "by_finding": {name: {"hallucinated", "asserted", "rate"}}},
        "unmapped": {checker finding: count}, "problems": [the first few wrong studies]}; rates are None
        where their denominator is 0.

    Raises:
        ValueError: `texts` and `truths` differ in length.
    """
    if len(texts) != len(truths):
        raise ValueError(f"score_texts: {len(texts)} texts vs {len(truths)} truths, expected one truth per text")
    claims = _claims_by_text(texts)
    counts, asserted, hallucinated, unmapped = Counter(), Counter(), Counter(), Counter()
    problems = []
    for i, (text, (finding, side)) in enumerate(zip(texts, truths)):
        pairs, missed = asserted_pairs(claims[text])
        pairs, judged, wrong = _judge(pairs, finding, side)
        counts += judged
        unmapped += missed
        asserted.update({name for name, _ in pairs})
        hallucinated.update(wrong)
        if (wrong or judged["wrong_side"]) and len(problems) < _EXAMPLES:
            problems.append({"case_id": case_ids[i] if case_ids else str(i), "truth": [finding, side],
                             "asserted": sorted(([name, s] for name, s in pairs), key=str),
                             "hallucinated": sorted(wrong), "wrong_side": bool(judged["wrong_side"])})
    precision = _ratio(counts["tp"], counts["tp"] + counts["fp"])
    recall = _ratio(counts["tp"], counts["tp"] + counts["fn"])
    f1 = None if precision is None or recall is None else (
        2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    studies = len(texts)
    return {"studies": studies, "tp": counts["tp"], "fp": counts["fp"], "fn": counts["fn"],
            "precision": precision, "recall": recall, "f1": f1,
            "laterality": {"errors": counts["wrong_side"], "named": counts["named"],
                           "rate": _ratio(counts["wrong_side"], counts["named"])},
            "hallucination": {"studies": counts["hallucinating"], "rate": _ratio(counts["hallucinating"], studies),
                              "by_finding": {name: {"hallucinated": hallucinated[name], "asserted": asserted[name],
                                                    "rate": _ratio(hallucinated[name], studies)}
                                             for name in sorted(asserted)}},
            "unmapped": dict(sorted(unmapped.items())), "problems": problems}


def _judge(pairs: set[Pair], finding: str, side: str | None) -> tuple[set[Pair], Counter[str], set[str]]:
    """One study: its pairs as judged, its counts (tp, fp, fn, named, wrong_side, hallucinating) and the
    findings it hallucinates."""
    if side is None:  # no side to judge: the true finding matches whatever side the text names
        pairs = {(name, None if name == finding else s) for name, s in pairs}
    truth = set() if finding == NORMAL else {(finding, side)}
    named = {s for name, s in pairs if name == finding and s is not None}
    wrong = {name for name, _ in pairs} - {finding}
    counts = Counter(tp=len(pairs & truth), fp=len(pairs - truth), fn=len(truth - pairs),
                     named=int(side is not None and bool(named)), wrong_side=int(side is not None and bool(named)
                                                                                 and named != {side}),
                     hallucinating=int(bool(wrong)))
    return pairs, counts, wrong


def targets_met(system: Mapping[str, Any], contradicting: int | None = None) -> dict[str, dict[str, Any]]:
    """Each of `TARGETS` with its value for `system` (a `score_texts` result) and whether it is met
    (None where the value is unknown: no denominator, or no contradiction count given)."""
    values = {"finding F1": system["f1"], "laterality error rate": system["laterality"]["rate"],
              "hallucinated-finding rate": system["hallucination"]["rate"], "self-contradicting drafts": contradicting}
    out = {}
    for measure, (op, threshold) in TARGETS.items():
        value = values[measure]
        met = None if value is None else (value >= threshold if op == ">=" else value <= threshold)
        out[measure] = {"target": f"{op} {threshold:g}", "value": value, "met": met}
    return out


def finding_block(texts: Mapping[str, Sequence[str]], metas: Sequence[Mapping[str, Any]], case_ids: Sequence[str] = (),
                  self_contradiction: Mapping[str, Mapping[str, Any]] | None = None,
                  primary: str = "draft_report") -> dict[str, Any] | None:
    """The "findings" part of the trust block: `score_texts` per system on the studies with a known truth.

    Args:
        texts: per system (the draft, the references, every baseline), one text per study.
        metas: per study, its metadata (the truth: "finding", "side").
        case_ids: per study, its id.
        self_contradiction: per system, {"contradicting": count, ...} (`medcm.eval.trust.contradiction_rates`),
            for the self-contradiction target.
        primary: the system the targets are checked for (falls back to "draft").

    Returns:
        None when no study has a truth this module can judge; else {"studies", "truth", "unscorable",
        "systems": {name: score}, "primary", "targets"}.
    """
    truths = [study_truth(meta) for meta in metas]
    keep = [i for i, truth in enumerate(truths) if truth is not None]
    if not keep:
        return None
    unscorable = Counter(str(m.get("finding")) for m, t in zip(metas, truths) if t is None and m.get("finding"))
    kept = [truths[i] for i in keep]
    ids = [case_ids[i] for i in keep] if case_ids else [str(i) for i in keep]
    systems = {name: score_texts([values[i] for i in keep], kept, ids) for name, values in texts.items()}
    primary = primary if primary in systems else "draft"
    contradicting = (self_contradiction or {}).get(primary, {}).get("contradicting")
    return {"studies": len(keep), "truth": dict(sorted(Counter(f"{f} ({s})" if s else f for f, s in kept).items())),
            "unscorable": dict(sorted(unscorable.items())), "systems": systems, "primary": primary,
            "targets": targets_met(systems[primary], contradicting) if primary in systems else {}}


def _claims_by_text(texts: Sequence[str]) -> dict[str, list[Claim]]:
    """The checker's claims of each distinct text (a baseline repeats texts: each is read once)."""
    return {text: extract_claims(text) for text in dict.fromkeys(texts)}


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None
