"""Tests for medcm.report.lexicon: the tables are consistent, plurals and the finding hierarchy are right."""

from __future__ import annotations

import pytest

from medcm.report.lexicon import (
    ANY,
    FINDINGS,
    NORMAL_TERMS,
    ORGAN_SIDES,
    ORGANS,
    QUALIFIERS,
    SCOPE,
    ancestors,
    covers,
    is_chronic,
    plural_forms,
)


@pytest.mark.parametrize(("term", "forms"), [
    ("nodule", ("nodule", "nodules")), ("opacity", ("opacity", "opacities")), ("stenosis", ("stenosis", "stenoses")),
    ("effusion", ("effusion", "effusions")), ("abscess", ("abscess", "abscesses")), ("airway", ("airway", "airways")),
    ("lymph node", ("lymph node", "lymph nodes")), ("renal", ("renal",)), ("enlarged", ("enlarged",)),
    ("x-ray", ("x-ray",)),
])
def test_plural_forms(term: str, forms: tuple[str, ...]) -> None:
    assert plural_forms(term) == forms


def test_terms_are_lower_case_and_name_one_finding_or_organ() -> None:
    owner: dict[str, str] = {}
    for finding in FINDINGS:
        assert finding.terms, finding
        for term in finding.terms:
            assert term == term.lower().strip() and "  " not in term, term
            assert owner.setdefault(term, finding.name) == finding.name, f"{term!r} names two findings"
    organ_owner: dict[str, str] = {}
    for organ, terms in ORGANS.items():
        for term in terms:
            assert term == term.lower().strip(), term
            assert organ_owner.setdefault(term, organ) == organ, f"{term!r} names two organs"
    assert not set(owner) & set(organ_owner), "a word is both a finding and an organ"


def test_references_point_at_known_names() -> None:
    names = {f.name for f in FINDINGS}
    for finding in FINDINGS:
        assert finding.organ is None or finding.organ in ORGANS, finding
        assert set(finding.kinds) <= names, finding
        assert not finding.fixed or finding.organ is not None, finding
    for region, organs in SCOPE.items():
        assert region in ORGANS and organs <= set(ORGANS), region
    assert set(ORGAN_SIDES) <= {t for terms in ORGANS.values() for t in terms}
    assert {QUALIFIERS[w] for w in QUALIFIERS} == {"other", "new", "acute", "significant", "chronic"}
    assert all(organs is None or organs <= set(ORGANS) for organs in NORMAL_TERMS.values())


@pytest.mark.parametrize(("finding", "expected"), [
    ("nodule", {"nodule", "lesion", "opacity", ANY}),
    ("pneumonia", {"pneumonia", "consolidation", "opacity", ANY}),
    ("metastasis", {"metastasis", "tumor", "lesion", ANY}),
    ("midline shift", {"midline shift", "mass effect", ANY}),
    ("bankart lesion", {"bankart lesion", ANY}),  # a named finding the lexicon does not know
])
def test_ancestors(finding: str, expected: set[str]) -> None:
    assert ancestors(finding) == expected


def test_covers_and_chronic() -> None:
    assert covers(None) is None
    assert covers("lung") == {"lung", "pleura"}
    assert {"lung", "heart", "pleura"} <= covers("chest") and "liver" not in covers("chest")
    assert covers("liver") == {"liver", "biliary"} and covers("thyroid") == {"thyroid"}
    assert is_chronic("nodule") and is_chronic("enlargement") and not is_chronic("effusion")
    assert not is_chronic("fracture") and not is_chronic("unknown finding")
