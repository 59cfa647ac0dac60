"""Tests for medcm.report.draft with a fake bag-of-words embedder, so every cosine is known."""

from __future__ import annotations

import math
import re
import zlib

import numpy as np
import pytest

from medcm.report.context import contradicting_pairs
from medcm.report.draft import (
    Draft,
    DraftConfig,
    DraftSentence,
    DroppedSentence,
    Provenance,
    SourceCase,
    draft_findings,
)

VOCAB = ("no", "pleural", "effusion", "small", "left", "right", "lungs", "clear", "acute",
         "osseous", "abnormality", "heart", "normal", "nodule", "change", "pneumothorax",
         "cardiomegaly", "mild", "consolidation", "cardiopulmonary", "process", "seen",
         "identified", "atelectasis", "fracture", "stable")
STOP = frozenset({"the", "is", "are", "a", "in", "of", "or", "and", "but",
                   "without"})
# Low-weight words make near-duplicates: cos("No pleural effusion.", "... seen.") = 0.985.
WEIGHTS = {"seen": 0.3, "identified": 0.3}
# Everything is kept unless a test says otherwise.
LOOSE = DraftConfig(relative_margin=10.0, min_score=-10.0, max_findings=20, max_impression=20)


class FakeEmbedder:
    """Bag of words over VOCAB, L2-normalised, float32; records every call."""

    def __init__(self, weights: dict[str, float] | None = None) -> None:
        self.weights = {**WEIGHTS, **(weights or {})}
        self.calls: list[list[str]] = []

    def vec(self, text: str) -> np.ndarray:
        v = np.zeros(len(VOCAB))
        for word in re.findall(r"[a-z]+", text.lower()):
            if word not in STOP:
                v[VOCAB.index(word)] += self.weights.get(word, 1.0)  # unknown word: a test bug
        return v / np.linalg.norm(v)

    def __call__(self, sentences: list[str]) -> np.ndarray:
        self.calls.append(list(sentences))
        return np.stack([self.vec(s) for s in sentences]).astype(np.float32)


def query_of(**words: float) -> np.ndarray:
    """A unit query vector weighting the given vocabulary words."""
    q = np.zeros(len(VOCAB))
    for word, w in words.items():
        q[VOCAB.index(word)] = w
    return q / np.linalg.norm(q)


Q = query_of(pleural=1, effusion=1, lungs=0.5, clear=0.5, small=0.3, left=0.3, no=0.2)


def cos(embed: FakeEmbedder, text: str, q: np.ndarray = Q) -> float:
    return float(embed.vec(text) @ q)


def by_text(draft: Draft) -> dict[str, DraftSentence]:
    return {s.text: s for s in draft.sentences}


def case(case_id: str, score: float, findings: str, impression: str = "") -> SourceCase:
    report = f"FINDINGS: {findings}" + (f"\nIMPRESSION: {impression}" if impression else "")
    return SourceCase(case_id, score, report)


# --- provenance and scoring ---------------------------------------------------------------
def test_provenance_lists_each_source_with_its_scores_best_first() -> None:
    embed = FakeEmbedder()
    cases = [case("A", 0.9, "The lungs are clear. No pleural effusion."),
             case("B", 0.8, "The lungs are clear. No pleural effusion identified."),
             case("C", 0.7, "Mild cardiomegaly.")]
    got = by_text(draft_findings(Q, cases, embed, LOOSE))
    assert set(got) == {"The lungs are clear.", "No pleural effusion.", "Mild cardiomegaly."}
    s_clear, s_eff = cos(embed, "lungs clear"), cos(embed, "no pleural effusion")
    s_ident = cos(embed, "no pleural effusion identified")
    assert s_ident < s_eff
    assert got["The lungs are clear."].sources == (
        Provenance("A", 0.9, pytest.approx(s_clear), "The lungs are clear."),
        Provenance("B", 0.8, pytest.approx(s_clear), "The lungs are clear."))
    assert got["No pleural effusion."].sources == (
        Provenance("A", 0.9, pytest.approx(s_eff), "No pleural effusion."),
        Provenance("B", 0.8, pytest.approx(s_ident), "No pleural effusion identified."))
    assert [p.case_id for p in got["Mild cardiomegaly."].sources] == ["C"]
    assert all(isinstance(p.sentence_score, float) for s in got.values() for p in s.sources)


def test_score_is_best_similarity_plus_weighted_support() -> None:
    embed = FakeEmbedder()
    config = DraftConfig(support_weight=0.5, relative_margin=10.0, min_score=-10.0)
    cases = [case("A", 0.6, "The lungs are clear."), case("B", 0.3, "The lungs are clear."),
             case("C", 0.1, "Mild cardiomegaly."), case("D", -0.2, "Mild cardiomegaly.")]
    got = by_text(draft_findings(Q, cases, embed, config))
    # Support = the sources' shares of sum(max(score, 0)) = 1.0; D's negative score adds 0.
    assert got["The lungs are clear."].score == pytest.approx(cos(embed, "lungs clear") + 0.5 * 0.9)
    assert got["Mild cardiomegaly."].score == pytest.approx(cos(embed, "mild cardiomegaly") + 0.5 * 0.1)


def test_consensus_outranks_a_slightly_more_similar_single_sentence() -> None:
    embed = FakeEmbedder()
    q = query_of(pleural=1, effusion=1, small=1, left=1, mild=1.3, cardiomegaly=1.3)
    cases = [case("A", 0.5, "Small left pleural effusion."), case("B", 0.5, "Mild cardiomegaly."),
             case("C", 0.5, "Mild cardiomegaly."), case("D", 0.5, "Mild cardiomegaly.")]
    assert cos(embed, "small left pleural effusion", q) > cos(embed, "mild cardiomegaly", q)
    draft = draft_findings(q, cases, embed, DraftConfig(support_weight=0.5, max_findings=1))
    assert draft.section_text("FINDINGS") == "Mild cardiomegaly."
    assert [d.reason for d in draft.dropped] == ["over limit: max_findings=1"]


# --- de-duplication ------------------------------------------------------------------------
def test_near_and_exact_duplicates_merge_into_one_sentence_with_all_sources() -> None:
    embed = FakeEmbedder()
    cases = [case("A", 0.9, "No pleural effusion."), case("B", 0.8, "No pleural effusion seen."),
             case("C", 0.7, "No pleural effusion."), case("D", 0.6, "NO PLEURAL EFFUSION.")]
    draft = draft_findings(Q, cases, embed, LOOSE)
    assert [s.text for s in draft.sentences] == ["No pleural effusion."]  # the majority wording
    (sentence,) = draft.sentences
    assert [p.case_id for p in sentence.sources] == ["A", "C", "D", "B"]  # B's wording scores less
    assert sentence.sources[-1].original == "No pleural effusion seen."
    assert draft.dropped == ()
    # One call, one text per distinct sentence key ("NO PLEURAL EFFUSION." is a repeat).
    assert embed.calls == [["No pleural effusion.", "No pleural effusion seen."]]


def test_below_duplicate_threshold_stays_separate() -> None:
    embed = FakeEmbedder()
    cases = [case("A", 0.9, "No pleural effusion."), case("B", 0.8, "No pleural effusion seen.")]
    draft = draft_findings(Q, cases, embed, DraftConfig(duplicate_threshold=0.99,
                                                        relative_margin=10.0, min_score=-10.0))
    assert [s.text for s in draft.sentences] == ["No pleural effusion.", "No pleural effusion seen."]


def test_opposite_polarity_never_merges_even_when_embeddings_agree() -> None:
    embed = FakeEmbedder(weights={"no": 0.1})  # like real encoders, nearly ignores "no"
    assert float(embed.vec("No pleural effusion.") @ embed.vec("Pleural effusion.")) > 0.99
    cases = [case("A", 0.9, "Pleural effusion."), case("B", 0.8, "Pleural effusion."),
             case("C", 0.7, "No pleural effusion.")]
    draft = draft_findings(Q, cases, embed, LOOSE)
    assert [s.text for s in draft.sentences] == ["Pleural effusion."]
    assert [d.text for d in draft.dropped] == ["No pleural effusion."]


# --- contradictions ------------------------------------------------------------------------
def test_contradiction_keeps_the_side_with_more_evidence() -> None:
    embed = FakeEmbedder()
    cases = [case("W", 0.5, "No pleural effusion."),
             *(case(c, 0.8, "Small left pleural effusion.") for c in "XYZ")]
    draft = draft_findings(Q, cases, embed, LOOSE)
    assert [s.text for s in draft.sentences] == ["Small left pleural effusion."]
    (dropped,) = draft.dropped
    assert dropped.text == "No pleural effusion."
    assert dropped.reason == "contradicts 'Small left pleural effusion.' on left pleura effusion (weaker evidence)"
    assert [p.case_id for p in dropped.sources] == ["W"]


def test_contradiction_reversed_evidence_reverses_the_outcome() -> None:
    embed = FakeEmbedder()
    cases = [case("W", 0.5, "Small left pleural effusion."),
             *(case(c, 0.8, "No pleural effusion.") for c in "XYZ")]
    draft = draft_findings(Q, cases, embed, LOOSE)
    assert [s.text for s in draft.sentences] == ["No pleural effusion."]
    assert [(d.text, d.reason) for d in draft.dropped] == [
        ("Small left pleural effusion.",
         "contradicts 'No pleural effusion.' on left pleura effusion (weaker evidence)")]


@pytest.mark.parametrize(
    ("weak", "strong"),
    [
        ("No pleural effusion or pneumothorax.", "Small left pleural effusion."),  # listed denial
        ("No pneumothorax.", "Small left pleural effusion, pneumothorax."),
        ("The heart is normal, no cardiomegaly.", "Mild cardiomegaly."),  # clause after a comma
        ("No pneumothorax.", "No pleural effusion, but small pneumothorax."),  # "but" ends scope
        ("Lungs are clear without pleural effusion.", "Small left pleural effusion."),
        ("No pneumothorax.", "Right lungs clear stable nodule, mild atelectasis, pneumothorax."),  # long list
        ("The lungs are clear.", "Small left pleural effusion."),  # a normal organ vs a finding in it
    ],
)
def test_contradiction_variants(weak: str, strong: str) -> None:
    embed = FakeEmbedder()
    cases = [case("W", 0.2, weak), case("X", 0.9, strong), case("Y", 0.9, strong)]
    draft = draft_findings(Q, cases, embed, LOOSE)
    assert [s.text for s in draft.sentences] == [strong]
    (reason,) = [d.reason for d in draft.dropped]
    assert reason.startswith(f"contradicts '{strong}' on ") and reason.endswith(" (weaker evidence)")


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("No change in the nodule.", "Nodule."),  # "no change" is not a negation
        ("No right pleural effusion.", "Small left pleural effusion."),  # different sides
        ("Small left pleural effusion, no pneumothorax.", "Small left pleural effusion."),
        ("No acute fracture.", "Stable nodule."),
        ("Lungs are clear without consolidation.", "The lungs are clear."),  # "without" cuts
        ("Mild cardiomegaly and no pneumothorax.", "Mild cardiomegaly."),
        ("No pneumothorax.", "Small left pleural effusion."),  # other findings
    ],
)
def test_not_contradictions(a: str, b: str) -> None:
    embed = FakeEmbedder()
    draft = draft_findings(Q, [case("A", 0.9, a), case("B", 0.8, b)], embed, LOOSE)
    assert sorted(s.text for s in draft.sentences) == sorted([a, b])
    assert draft.dropped == ()


# --- ordering ------------------------------------------------------------------------------
def test_order_follows_sections_then_mean_source_position() -> None:
    embed = FakeEmbedder()
    q = query_of(acute=1, osseous=1, abnormality=1, cardiopulmonary=1, process=1, lungs=0.1)
    cases = [case("A", 0.9, "The lungs are clear. No pleural effusion. No acute osseous abnormality.",
                  "No acute cardiopulmonary process."),
             case("B", 0.8, "The lungs are clear. No acute osseous abnormality.")]
    draft = draft_findings(q, cases, embed, LOOSE)
    # Scores would put osseous first; sources put it last (mean positions 1/6+1/4, 1/2, 5/6+3/4).
    assert by_text(draft)["No acute osseous abnormality."].score > by_text(draft)["The lungs are clear."].score
    assert [(s.section, s.text) for s in draft.sentences] == [
        ("FINDINGS", "The lungs are clear."), ("FINDINGS", "No pleural effusion."),
        ("FINDINGS", "No acute osseous abnormality."),
        ("IMPRESSION", "No acute cardiopulmonary process.")]
    assert draft.text() == ("FINDINGS: The lungs are clear. No pleural effusion. "
                            "No acute osseous abnormality.\n"
                            "IMPRESSION: No acute cardiopulmonary process.")


def test_equal_positions_break_ties_by_score() -> None:
    embed = FakeEmbedder()
    cases = [case("A", 0.9, "Mild cardiomegaly."), case("B", 0.9, "The lungs are clear.")]
    draft = draft_findings(Q, cases, embed, LOOSE)
    assert [s.text for s in draft.sentences] == ["The lungs are clear.", "Mild cardiomegaly."]


# --- selection -----------------------------------------------------------------------------
def test_limits_per_section() -> None:
    embed = FakeEmbedder()
    cases = [case("A", 0.9, "No pneumothorax. Small left pleural effusion. Mild cardiomegaly.",
                  "Small left pleural effusion. Mild cardiomegaly.")]
    config = DraftConfig(max_findings=2, max_impression=1, relative_margin=10.0, min_score=-10.0)
    draft = draft_findings(Q, cases, embed, config)
    assert draft.section_text("findings") == "No pneumothorax. Small left pleural effusion."
    assert draft.section_text("IMPRESSION") == "Small left pleural effusion."
    assert [(d.text, d.reason) for d in draft.dropped] == [
        ("Mild cardiomegaly.", "over limit: max_findings=2"),
        ("Mild cardiomegaly.", "impression not in the kept findings: heart enlargement")]


def test_min_score_and_relative_margin() -> None:
    embed = FakeEmbedder()
    s_eff = cos(embed, "small left pleural effusion")  # 0.788
    s_clear = cos(embed, "no pneumothorax")  # 0.086
    cases = [case("A", 0.9, "Small left pleural effusion. No pneumothorax. Mild cardiomegaly.")]
    margin = (1 - (s_clear + 0.01) / s_eff)  # the cutoff falls just above "no pneumothorax"
    draft = draft_findings(Q, cases, embed, DraftConfig(support_weight=0.0, relative_margin=margin,
                                                        min_score=-10.0))
    assert [s.text for s in draft.sentences] == ["Small left pleural effusion."]
    assert draft.dropped[0].reason.startswith(f"below threshold: score {s_clear:.3f}")
    assert "relative margin" in draft.dropped[0].reason
    floor = DraftConfig(support_weight=0.0, relative_margin=10.0, min_score=0.05)
    draft = draft_findings(Q, cases, embed, floor)  # cardiomegaly is orthogonal to Q: 0.0
    assert [s.text for s in draft.sentences] == ["Small left pleural effusion.", "No pneumothorax."]
    assert [(d.text, d.reason) for d in draft.dropped] == [
        ("Mild cardiomegaly.", "below threshold: score 0.000 < min_score 0.050")]


def test_only_top_k_cases_are_read() -> None:
    embed = FakeEmbedder()
    cases = [case(f"C{i}", 0.5 + i / 100, "The lungs are clear.") for i in range(5)]
    cases.insert(2, case("LOW", 0.1, "Mild cardiomegaly."))  # 6th by score, not by position
    draft = draft_findings(Q, iter(cases), embed, LOOSE)
    assert draft.source_cases == ("C4", "C3", "C2", "C1", "C0")
    assert [s.text for s in draft.sentences] == ["The lungs are clear."]
    assert all("cardiomegaly" not in t for call in embed.calls for t in call)
    assert not any(d.text == "Mild cardiomegaly." for d in draft.dropped)
    wider = draft_findings(Q, cases, FakeEmbedder(), DraftConfig(top_k_cases=6, relative_margin=10.0,
                                                                  min_score=-10.0))
    assert "Mild cardiomegaly." in wider.section_text("FINDINGS")


# --- sections ------------------------------------------------------------------------------
def test_headerless_report_is_findings_and_indication_is_ignored() -> None:
    embed = FakeEmbedder()
    cases = [SourceCase("A", 0.9, "No acute osseous abnormality. No pneumothorax."),
             SourceCase("B", 0.8, "INDICATION: Rule out pneumonia. Fever.\n"
                                  "TECHNIQUE: Frontal and lateral views.\n"
                                  "COMPARISON: None.\nFINDINGS: Mild cardiomegaly.\n"
                                  "IMPRESSION: Mild cardiomegaly."),
             SourceCase("C", 0.7, "CHEST TWO VIEWS\nFINDINGS:\nLUNGS: Small left pleural effusion.")]
    draft = draft_findings(Q, cases, embed, LOOSE)
    # Positions 0.25 | 0.5, 0.5 (tie: by score) | 0.75; C's "LUNGS:" subsection is findings.
    assert [(s.section, s.text) for s in draft.sentences] == [
        ("FINDINGS", "No acute osseous abnormality."), ("FINDINGS", "Small left pleural effusion."),
        ("FINDINGS", "Mild cardiomegaly."), ("FINDINGS", "No pneumothorax."),
        ("IMPRESSION", "Mild cardiomegaly.")]
    (call,) = embed.calls
    assert sorted(call) == ["Mild cardiomegaly.", "No acute osseous abnormality.", "No pneumothorax.",
                            "Small left pleural effusion."]


# --- the Draft object ----------------------------------------------------------------------
def test_draft_text_format_and_unverified() -> None:
    f1 = DraftSentence("The lungs are clear.", "FINDINGS", 0.5, ())
    f2 = DraftSentence("No pneumothorax.", "FINDINGS", 0.4, ())
    imp = DraftSentence("Normal chest.", "IMPRESSION", 0.3, ())
    draft = Draft((f1, f2, imp), (), ("A",))
    assert draft.text() == "FINDINGS: The lungs are clear. No pneumothorax.\nIMPRESSION: Normal chest."
    assert draft.section_text("conclusion") == "Normal chest."
    assert Draft((imp,), (), ()).text() == "IMPRESSION: Normal chest."
    assert Draft((), (), ()).text() == ""
    assert draft.verified is False
    real = draft_findings(Q, [case("A", 0.9, "The lungs are clear.")], FakeEmbedder(), LOOSE)
    assert real.verified is False
    assert isinstance(real.dropped, tuple) and isinstance(real.sentences, tuple)


def test_empty_inputs_give_an_empty_draft_without_embedding() -> None:
    embed = FakeEmbedder()
    assert draft_findings(Q, [], embed) == Draft((), (), ())
    only_history = [SourceCase("A", 0.9, "INDICATION: Cough.\nCOMPARISON: None."),
                    SourceCase("B", 0.8, "")]
    assert draft_findings(Q, only_history, embed) == Draft((), (), ("A", "B"))
    assert embed.calls == []


# --- errors --------------------------------------------------------------------------------
@pytest.mark.parametrize("query", [np.ones((1, len(VOCAB))), np.ones(()), np.zeros(0),
                                   np.zeros(len(VOCAB)), np.full(len(VOCAB), np.nan)])
def test_bad_query(query: np.ndarray) -> None:
    with pytest.raises(ValueError, match="query"):
        draft_findings(query, [case("A", 0.9, "The lungs are clear.")], FakeEmbedder())


@pytest.mark.parametrize(
    ("output", "match"),
    [(np.ones((2, len(VOCAB)), np.float32), r"shape \(2, 26\) for 1 sentences, expected \(1, 26\)"),
     (np.ones((1, 5), np.float32), r"shape \(1, 5\)"),
     (np.ones(len(VOCAB), np.float32), r"shape \(26,\)"),
     (np.full((1, len(VOCAB)), np.inf), "non-finite")],
)
def test_bad_embedder_output(output: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        draft_findings(Q, [case("A", 0.9, "The lungs are clear.")], lambda s: output)


def test_bad_cases_and_config() -> None:
    with pytest.raises(ValueError, match="duplicate case ids"):
        draft_findings(Q, [case("A", 0.9, "x."), case("A", 0.8, "y.")], FakeEmbedder())
    with pytest.raises(ValueError, match="non-finite score"):
        draft_findings(Q, [case("A", math.nan, "x.")], FakeEmbedder())
    with pytest.raises(TypeError, match="SourceCase"):
        draft_findings(Q, [("A", 0.9, "x.")], FakeEmbedder())  # type: ignore[list-item]
    for bad in ({"top_k_cases": 0}, {"max_findings": -1}, {"duplicate_threshold": 1.5},
                {"support_weight": -0.1}, {"relative_margin": math.inf}, {"min_score": math.nan}):
        with pytest.raises(ValueError):
            DraftConfig(**bad)


def test_dropped_sentence_carries_sources() -> None:
    d = DroppedSentence("x.", "below threshold", (Provenance("A", 0.9, 0.1, "x."),))
    assert d.sources[0].case_id == "A"


def test_same_finding_at_another_site_from_another_case_is_an_alternative() -> None:
    embed = FakeEmbedder()
    cases = [
        case("A", 0.9, "FINDINGS: Small right pleural effusion."),
        case("B", 0.8, "FINDINGS: Small right pleural effusion."),
        case("C", 0.7, "FINDINGS: Small left pleural effusion."),
    ]
    draft = draft_findings(Q, cases, embed, LOOSE)
    assert [s.text for s in draft.sentences] == ["Small right pleural effusion."]
    assert [d.text for d in draft.dropped] == ["Small left pleural effusion."]
    assert draft.dropped[0].reason.startswith("alternative to 'Small right pleural effusion.'")


def test_sites_written_together_by_one_case_are_both_kept() -> None:
    embed = FakeEmbedder()
    cases = [case("A", 0.9, "FINDINGS: Small right pleural effusion. Small left pleural effusion.")]
    draft = draft_findings(Q, cases, embed, LOOSE)
    assert sorted(s.text for s in draft.sentences) == ["Small left pleural effusion.", "Small right pleural effusion."]


# --- agreement (minimum Bayes risk) and length from the sources ----------------------------

def test_agreement_prefers_what_other_cases_also_wrote():
    # Case a's two sentences match the query equally; only "Small left pleural effusion."
    # is (almost) also written by cases b and c, so agreement ranks it first.
    cases = [SourceCase("a", 0.9, "FINDINGS: Small left pleural effusion. Heart normal."),
             SourceCase("b", 0.8, "FINDINGS: Small left pleural effusion seen."),
             SourceCase("c", 0.7, "FINDINGS: Small left pleural effusion identified.")]
    q = query_of(effusion=1, heart=1)
    plain = draft_findings(q, cases, FakeEmbedder(), DraftConfig(support_weight=0.0, max_findings=1, duplicate_threshold=1.0))
    agreed = draft_findings(q, cases, FakeEmbedder(), DraftConfig(support_weight=0.0, max_findings=1, duplicate_threshold=1.0,
                                                                  agreement_weight=10.0))
    assert plain.section_text("FINDINGS") == "Heart normal."
    assert agreed.section_text("FINDINGS").startswith("Small left pleural effusion")
    top = agreed.sentences[0]
    # Its own case is not a judge: the agreement comes from the two other cases only.
    assert top.score > plain.sentences[0].score


def test_agreement_value_is_the_weighted_ngram_precision_of_the_other_cases():
    from medcm.report.text import ngram_counts, ngram_precision

    cases = [SourceCase("a", 0.5, "FINDINGS: Lungs clear."), SourceCase("b", 0.5, "FINDINGS: Lungs clear. No nodule.")]
    q = query_of(lungs=1, clear=1)
    base = draft_findings(q, cases[:1], FakeEmbedder(), LOOSE)
    agreed = draft_findings(q, cases, FakeEmbedder(), DraftConfig(**{**LOOSE.__dict__, "agreement_weight": 2.0,
                                                                     "support_weight": 0.0}))
    nodule = next(s for s in agreed.sentences if "nodule" in s.text)
    # "No nodule." is written by b only; a's FINDINGS "lungs clear" shares none of its n-grams.
    expected = 2.0 * ngram_precision(ngram_counts(["no", "nodule"]), ngram_counts(["lungs", "clear"]))
    assert nodule.score == pytest.approx(nodule.sources[0].sentence_score + expected, abs=1e-9)
    assert expected < 1e-3
    assert base.sentences[0].text == "Lungs clear."


def test_length_from_sources_stops_at_the_median_source_length():
    cases = [SourceCase("a", 0.9, "FINDINGS: Small left pleural effusion. Lungs clear. Heart normal. No nodule."),
             SourceCase("b", 0.8, "FINDINGS: Mild cardiomegaly."),
             SourceCase("c", 0.7, "FINDINGS: No pneumothorax. Stable nodule.")]
    config = DraftConfig(**{**LOOSE.__dict__, "length_from_sources": True})
    draft = draft_findings(Q, cases, FakeEmbedder(), config)
    # Source FINDINGS lengths are 10, 2 and 4 words: the draft stops once it holds >= 4 words.
    words = [len(s.text.split()) for s in draft.sentences]
    assert sum(words[:-1]) < 4 <= sum(words)
    assert any(d.reason.startswith("over length: the source cases' median findings is 4 words") for d in draft.dropped)


def test_consensus_preset_is_valid_and_differs_from_the_default():
    from medcm.report.draft import DRAFT_PRESETS

    assert DRAFT_PRESETS["similarity"] == DraftConfig()
    consensus = DRAFT_PRESETS["consensus"]
    assert consensus.agreement_weight > 0 and consensus.length_from_sources and consensus.top_k_cases > 5
    with pytest.raises(ValueError, match="agreement_weight"):
        DraftConfig(agreement_weight=-1.0)


# --- no contradictions in a draft (issue 17): synonyms, sides, sizes, normal statements, sections --
class HashEmbedder:
    """Bag of hashed words (any vocabulary), L2-normalised: for drafts of realistic report text."""

    def __init__(self, dim: int = 256) -> None:
        self.dim = dim

    def vec(self, text: str) -> np.ndarray:
        v = np.zeros(self.dim)
        for word in re.findall(r"[a-z0-9]+", text.lower()):
            v[zlib.crc32(word.encode()) % self.dim] += 1.0
        return v / max(float(np.linalg.norm(v)), 1e-12)

    def __call__(self, sentences: list[str]) -> np.ndarray:
        return np.stack([self.vec(s) for s in sentences])


NODULE_CR = ("FINDINGS: There is a 12 mm rounded nodule in the right lower lung zone. The heart size is normal. "
             "No pleural effusion.\nIMPRESSION: 12 mm pulmonary nodule in the right lower lung zone; CT is "
             "recommended for further evaluation.")
NORMAL_CR = ("FINDINGS: The lungs are clear. No suspicious pulmonary nodule. No pneumothorax.\n"
             "IMPRESSION: Normal chest radiograph.",
             "FINDINGS: The heart size is normal. The lungs are clear. No pleural effusion.\n"
             "IMPRESSION: Normal chest radiograph.",
             "FINDINGS: No focal consolidation. No suspicious pulmonary nodule.\n"
             "IMPRESSION: No acute cardiopulmonary process.")
NORMAL_TEXTS = ("No suspicious pulmonary nodule.", "The lungs are clear.", "Normal chest radiograph.")


@pytest.mark.parametrize("preset", ["similarity", "consensus"])
def test_the_demo_normal_radiograph_draft_never_keeps_the_nodule_beside_normal_lungs(preset: str) -> None:
    """Issue 17: a normal chest radiograph drafted "12 mm nodule ... No suspicious pulmonary nodule ... The
    lungs are clear. IMPRESSION: Normal chest radiograph." from one nodule case and three normal ones."""
    from medcm.report.draft import DRAFT_PRESETS

    embed = HashEmbedder()
    cases = [SourceCase("N", 0.86, NODULE_CR)] + [SourceCase(c, s, r) for c, s, r in
                                                    zip("ABC", (0.84, 0.83, 0.80), NORMAL_CR)]
    query = embed.vec("The lungs are clear. No pleural effusion. The heart size is normal. Normal chest "
                      "radiograph. 12 mm rounded nodule right lower lung zone.")
    draft = draft_findings(query, cases, embed, DRAFT_PRESETS[preset])
    texts = [s.text for s in draft.sentences]
    assert contradicting_pairs(texts) == []
    assert not any("nodule" in t and t not in NORMAL_TEXTS for t in texts)  # three normal cases outweigh one
    assert {"The lungs are clear.", "Normal chest radiograph."} <= set(texts)
    dropped = {d.text: d.reason for d in draft.dropped}
    # The consensus preset drops the one nodule case's sentences as unsupported before they can contradict.
    first = "unsupported finding: 26%" if preset == "consensus" else "contradicts 'The lungs are clear.' on right lung nodule"
    assert dropped["There is a 12 mm rounded nodule in the right lower lung zone."].startswith(first)
    assert dropped[NODULE_CR.split("IMPRESSION: ")[1]].startswith(first.split(":")[0])  # across sections


def test_with_more_nodule_evidence_the_nodule_stays_and_the_normal_statements_go() -> None:
    embed = HashEmbedder()
    nodules = [NODULE_CR.replace("12 mm", f"{mm} mm") for mm in (12, 12, 13)]
    cases = [SourceCase(f"N{i}", 0.9, r) for i, r in enumerate(nodules)] + [SourceCase("A", 0.5, NORMAL_CR[0])]
    draft = draft_findings(embed.vec(NODULE_CR), cases, embed, LOOSE)
    texts = [s.text for s in draft.sentences]
    assert "There is a 12 mm rounded nodule in the right lower lung zone." in texts
    assert not set(NORMAL_TEXTS) & set(texts)
    assert contradicting_pairs(texts) == []


@pytest.mark.parametrize(("strong", "weak"), [
    ("There is a 2 cm hypodense lesion in the right lobe of the liver.", "No focal hepatic lesion."),  # synonyms
    ("Small left pleural effusion.", "No effusion."),  # unsided denial
    ("There is a 12 mm nodule in the left upper lobe.", "No pulmonary nodule."),  # size
    ("Moderate right pneumothorax.", "Normal chest radiograph."),  # global normal
])
def test_the_weaker_of_a_contradicting_pair_goes_even_across_sections(strong: str, weak: str) -> None:
    embed = HashEmbedder()
    cases = [case("X", 0.9, strong), case("Y", 0.9, strong), case("W", 0.5, "Heart size is normal.", weak)]
    draft = draft_findings(embed.vec(strong), cases, embed, LOOSE)
    assert [s.text for s in draft.sentences if s.section == "IMPRESSION"] == []
    assert strong in [s.text for s in draft.sentences]
    (reason,) = [d.reason for d in draft.dropped if d.text == weak]
    assert reason.startswith(f"contradicts '{strong}' on ")


@pytest.mark.parametrize(("a", "b"), [
    ("Small left pleural effusion.", "No right pleural effusion."),  # laterality
    ("No pericardial effusion.", "Small left pleural effusion."),  # another organ
    ("The lungs are clear.", "Mild cardiomegaly."),  # a normal organ beside a finding elsewhere
    ("No nodule larger than 5 mm.", "A 4 mm nodule in the right upper lobe."),
])
def test_statements_that_do_not_contradict_both_stay(a: str, b: str) -> None:
    embed = HashEmbedder()
    draft = draft_findings(embed.vec(a + " " + b), [case("A", 0.9, a), case("B", 0.8, b)], embed, LOOSE)
    assert sorted(s.text for s in draft.sentences) == sorted([a, b])


def test_an_impression_at_another_side_is_an_alternative_across_sections() -> None:
    embed = HashEmbedder()
    findings = "Small right pleural effusion."
    cases = [case("A", 0.9, findings), case("B", 0.9, findings),
             case("C", 0.6, "The heart size is normal.", "Large left pleural effusion.")]
    draft = draft_findings(embed.vec(findings), cases, embed, LOOSE)
    (reason,) = [d.reason for d in draft.dropped if d.text == "Large left pleural effusion."]
    assert reason.startswith(f"alternative to '{findings}' (left pleura effusion")


def test_random_demo_drafts_never_contradict_themselves() -> None:
    """Drafts from random mixtures of the demo's report wording (every finding, side and size)."""
    from medcm.data.demo_reports import demo_report
    from medcm.report.draft import DRAFT_PRESETS

    rng, embed = np.random.default_rng(7), HashEmbedder(128)
    kinds = {"pleural effusion": ("CR", "side", "severity"), "pulmonary nodule": ("CR", "side1", "zone", "size_mm"),
             "cardiomegaly": ("CR", "severity"), "pneumothorax": ("CR", "side1", "severity"),
             "consolidation": ("CR", "side1", "zone"), "normal": ("CR",), "liver lesion": ("CT", "side1", "size_mm")}
    values = {"side": ("left", "right", "bilateral"), "side1": ("left", "right"), "zone": ("upper", "lower"),
              "severity": ("small", "moderate", "large"), "size_mm": ("8", "12", "21", "30")}

    def random_case(i: int) -> SourceCase:
        finding = list(kinds)[int(rng.integers(len(kinds)))]
        modality, *keys = kinds[finding]
        details = {k.rstrip("1"): str(rng.choice(values[k])) for k in keys}
        part = "ABDOMEN" if finding == "liver lesion" else "CHEST"
        return SourceCase(f"c{i}", float(rng.uniform(0.6, 0.9)), demo_report(finding, modality, part, details, rng))

    checked = 0
    for _ in range(30):
        cases = [random_case(i) for i in range(int(rng.integers(3, 10)))]
        query = embed.vec(cases[0].report + " " + random_case(99).report)
        for preset in ("similarity", "consensus"):
            texts = [s.text for s in draft_findings(query, cases, embed, DRAFT_PRESETS[preset]).sentences]
            assert contradicting_pairs(texts) == [], texts
            lungs_normal = any(t in ("The lungs are clear.", "Normal chest radiograph.") for t in texts)
            assert not (lungs_normal and any(re.search(r"\d+ mm|pneumothorax is|consolidation in", t) for t in texts))
            checked += bool(texts)
    assert checked > 40


# --- support by this image (issue 17, item 3): one side per finding, impression from the findings -------
def test_sentences_differing_only_by_side_never_merge_and_the_side_most_cases_state_stays() -> None:
    """cos("Small right pleural effusion.", "Small left pleural effusion.") = 0.75 here, but under any
    duplicate threshold the two are alternatives, not one sentence with an arbitrary side."""
    embed = FakeEmbedder()
    cases = [case("A", 0.9, "Small left pleural effusion."), case("B", 0.8, "Small right pleural effusion."),
             case("C", 0.8, "Small right pleural effusion.")]
    draft = draft_findings(Q, cases, embed, DraftConfig(**{**LOOSE.__dict__, "duplicate_threshold": 0.5}))
    assert [s.text for s in draft.sentences] == ["Small right pleural effusion."]  # 2 of 3 cases, Q favours left
    (dropped,) = draft.dropped
    assert dropped.text == "Small left pleural effusion." and "36% of the nearest cases' weight vs 64%" in dropped.reason


def test_one_case_writing_both_sides_does_not_shield_a_merged_alternative() -> None:
    embed = FakeEmbedder()
    cases = [case("A", 0.9, "Small right pleural effusion. Small left pleural effusion."),
             case("B", 0.9, "Small right pleural effusion."), case("C", 0.9, "Small right pleural effusion.")]
    draft = draft_findings(Q, cases, embed, LOOSE)
    assert [s.text for s in draft.sentences] == ["Small right pleural effusion."]


def test_impression_is_rebuilt_from_the_kept_findings() -> None:
    embed = HashEmbedder()
    cases = [case("A", 0.9, "Small right pleural effusion. The heart size is normal.",
                  "Right pleural effusion. Pneumothorax on the left. No acute abnormality in the abdomen."),
             case("B", 0.9, "Small right pleural effusion.", "Stable appearance of the chest.")]
    draft = draft_findings(embed.vec("Small right pleural effusion."), cases, embed, LOOSE)
    assert draft.section_text("IMPRESSION") == "Right pleural effusion. Stable appearance of the chest."
    reasons = {d.text: d.reason for d in draft.dropped}
    assert reasons["Pneumothorax on the left."].startswith("impression not in the kept findings: left")
    # Not a contradiction (another organ), but a normal impression says nothing of the kept effusion.
    assert reasons["No acute abnormality in the abdomen."].startswith("normal impression beside a kept finding")


def test_normal_impression_stays_when_no_finding_is_kept() -> None:
    embed = HashEmbedder()
    cases = [case(c, 0.9, "The lungs are clear.", "No acute cardiopulmonary abnormality.") for c in "AB"]
    draft = draft_findings(embed.vec("The lungs are clear."), cases, embed, LOOSE)
    assert draft.section_text("IMPRESSION") == "No acute cardiopulmonary abnormality."


@pytest.mark.parametrize(("floor", "kept"), [(0.0, True), (0.2, True), (0.3, False)])
def test_a_finding_few_retrieved_cases_state_is_dropped_below_min_finding_share(floor: float, kept: bool) -> None:
    embed = HashEmbedder()
    nodule = "There is a 12 mm nodule in the right upper lobe."
    cases = [case("N", 1.0, nodule, "Heart size is normal.")] + [
        case(c, 1.0, "Heart size is normal.") for c in "ABC"]  # the nodule case holds 25% of the weight
    config = DraftConfig(**{**LOOSE.__dict__, "min_finding_share": floor})
    draft = draft_findings(embed.vec(nodule), cases, embed, config)
    assert (nodule in [s.text for s in draft.sentences]) is kept
    assert "Heart size is normal." in [s.text for s in draft.sentences]  # no lexicon finding: unaffected
    if not kept:
        assert {d.text: d.reason for d in draft.dropped}[nodule] == (
            "unsupported finding: 25% of the retrieved case weight states nodule < min_finding_share 30%")
    with pytest.raises(ValueError, match="min_finding_share"):
        DraftConfig(min_finding_share=1.5)


def test_the_side_the_nearest_cases_state_outranks_a_farther_majority() -> None:
    embed = FakeEmbedder()
    cases = [case("A", 0.95, "Small left pleural effusion."), case("B", 0.6, "Small right pleural effusion."),
             case("C", 0.6, "Small right pleural effusion."), case("D", 0.6, "Small right pleural effusion.")]
    near = draft_findings(Q, cases, embed, DraftConfig(**{**LOOSE.__dict__, "side_cases": 1}))
    everyone = draft_findings(Q, cases, embed, DraftConfig(**{**LOOSE.__dict__, "side_cases": 4}))
    assert [s.text for s in near.sentences] == ["Small left pleural effusion."]
    assert [s.text for s in everyone.sentences] == ["Small right pleural effusion."]


def test_with_image_scores_the_nearest_images_decide_the_side_and_the_head_does_not() -> None:
    """Image-to-image neighbours name sides better than image-to-report ranking or the head's sided labels
    (demo, 3 seeds): with every case's image score, the side of the nearest images stays."""
    embed = FakeEmbedder()
    left, right = "Small left pleural effusion.", "Small right pleural effusion."
    scored = [SourceCase("A", 0.95, f"FINDINGS: {right}", image_score=0.80),
              SourceCase("B", 0.90, f"FINDINGS: {right}", image_score=0.82),
              SourceCase("C", 0.60, f"FINDINGS: {left}", image_score=0.99),
              SourceCase("D", 0.60, f"FINDINGS: {left}", image_score=0.98)]
    head = {"effusion": 0.9, "effusion:right": 0.6, "effusion:left": 0.4}  # the head leans the other way
    config = DraftConfig(**{**LOOSE.__dict__, "side_cases": 3})
    assert [s.text for s in draft_findings(Q, scored, embed, config, head).sentences] == [left]
    # One case without an image score: retrieval order decides and the head judges sides again.
    unscored = scored[:3] + [SourceCase("D", 0.60, f"FINDINGS: {left}")]
    draft = draft_findings(Q, unscored, embed, config, head)
    assert [s.text for s in draft.sentences] == [right]
    assert {d.text: d.reason for d in draft.dropped}[left].startswith("not this image: states left pleura effusion")
    with pytest.raises(ValueError, match="image score nan"):
        draft_findings(Q, [SourceCase("A", 0.9, right, image_score=float("nan"))], embed, config)


def test_an_impression_giving_another_size_than_the_kept_finding_is_dropped() -> None:
    embed = HashEmbedder()
    nodule = "There is a 19 mm rounded nodule in the right lower zone."
    other = "Pulmonary nodule in the right lower lung zone, measuring 1.2 cm."
    same = "Pulmonary nodule in the right lower lung zone, measuring 1.9 cm."
    cases = [case("A", 0.9, nodule, same), case("B", 0.9, nodule, same), case("C", 0.8, nodule, other)]
    draft = draft_findings(embed.vec(nodule), cases, embed, LOOSE)
    assert draft.section_text("IMPRESSION") == same
    assert {d.text: d.reason for d in draft.dropped}[other].startswith("impression differs from the kept findings")


def test_sentences_the_image_disagrees_with_are_dropped() -> None:
    embed = HashEmbedder()
    nodule, effusion = "There is a 12 mm nodule in the right upper lobe.", "Small left pleural effusion."
    denial, clear, pneumothorax = "No pleural effusion.", "Heart size is normal.", "Small right pneumothorax."
    cases = [case("A", 0.9, f"{nodule} {clear} {denial}"), case("B", 0.9, f"{effusion} {clear} {pneumothorax}")]
    seen = {"nodule": 0.9, "nodule:right": 0.2, "nodule:left": 0.6, "effusion": 0.8, "effusion:left": 0.7,
            "effusion:right": 0.1, "pneumothorax": 0.1}
    draft = draft_findings(embed.vec(nodule), cases, embed, LOOSE, image_findings=seen)
    assert [s.text for s in draft.sentences] == [effusion, clear]
    reasons = {d.text: d.reason for d in draft.dropped}
    assert reasons[nodule] == ("not this image: states right lung nodule — the image shows the left side, not this "
                               "one: P(nodule:left) 0.60, P(nodule:right) 0.20")
    assert reasons[pneumothorax] == ("not this image: states right pleura pneumothorax — the image's "
                                     "P(pneumothorax) is 0.10 < 0.50")
    assert reasons[denial] == "not this image: denies pleura effusion — the image shows effusion: P(effusion) 0.80 >= 0.50"
    # Without probabilities nothing is judged; labels the head does not know are never judged.
    assert nodule in [s.text for s in draft_findings(embed.vec(nodule), cases, embed, LOOSE).sentences]
    assert nodule in [s.text for s in draft_findings(embed.vec(nodule), cases, embed, LOOSE,
                                                     image_findings={"effusion": 0.1}).sentences]
    with pytest.raises(ValueError, match="image_threshold"):
        DraftConfig(image_threshold=1.5)


def test_a_finding_the_image_shows_needs_no_share_of_the_neighbours() -> None:
    embed = HashEmbedder()
    nodule = "There is a 12 mm nodule in the right upper lobe."
    cases = [case("N", 1.0, nodule, "Heart size is normal.")] + [case(c, 1.0, "Heart size is normal.") for c in "ABC"]
    config = DraftConfig(**{**LOOSE.__dict__, "min_finding_share": 0.3})  # the nodule case holds 25%
    texts = lambda seen: [s.text for s in draft_findings(embed.vec(nodule), cases, embed, config, seen).sentences]
    assert nodule not in texts({"nodule": 0.3})
    assert nodule in texts({"nodule": 0.7, "nodule:right": 0.6, "nodule:left": 0.1})
