"""Report baselines: seeded random picks, region/modality matching with its fallbacks, the consensus
medoid and the sentence-BLEU oracle, checked on tiny hand-made pools."""

from __future__ import annotations

import numpy as np
import pytest

from medcm.eval.baselines import consensus_report, oracle_reports, random_matching_reports, random_reports
from medcm.eval.metrics import sentence_bleu

POOL = ["no acute disease", "the lungs are clear", "small left pleural effusion", "fracture of the distal radius"]


def test_random_reports_are_seeded_and_drawn_from_the_pool():
    first = random_reports(50, POOL, np.random.default_rng(7))
    again = random_reports(50, POOL, np.random.default_rng(7))
    other = random_reports(50, POOL, np.random.default_rng(8))
    assert first == again
    assert first != other
    assert len(first) == 50 and set(first) <= set(POOL)
    # Uniform with replacement: 400 draws from 4 reports hit every one, none with a gross bias.
    counts = np.array([random_reports(400, POOL, np.random.default_rng(0)).count(p) for p in POOL])
    assert counts.sum() == 400 and counts.min() > 60
    assert random_reports(0, POOL, np.random.default_rng(0)) == []


def test_random_reports_need_a_pool():
    with pytest.raises(ValueError, match="pool"):
        random_reports(3, [], np.random.default_rng(0))


MATCH_POOL = ["head ct", "head mr", "head ct and mr", "thorax ct", "no region ct"]
MATCH_META = [
    {"region": "Head", "modality": "CT"},
    {"region": "Head", "modality": "MR"},
    {"region": "Head", "modality": "CT,MR"},
    {"region": "Thorax", "modality": "CT"},
    {"modality": "CT"},
]


def _picks(query: dict, draws: int = 200, seed: int = 0) -> set[str]:
    return set(random_matching_reports([query] * draws, MATCH_META, MATCH_POOL, np.random.default_rng(seed)))


def test_matching_reports_share_region_and_a_modality():
    assert _picks({"region": "Head", "modality": "CT"}) == {"head ct", "head ct and mr"}
    assert _picks({"region": "Head", "modality": "MR"}) == {"head mr", "head ct and mr"}
    # Modalities compare case-insensitively and a multi-modality query matches any of its modalities.
    assert _picks({"region": "Head", "modality": "ct, mr"}) == {"head ct", "head mr", "head ct and mr"}
    assert _picks({"region": "Thorax", "modality": "CT"}) == {"thorax ct"}


def test_matching_reports_fall_back_to_the_region_then_to_any_report():
    assert _picks({"region": "Head", "modality": "US"}) == {"head ct", "head mr", "head ct and mr"}
    assert _picks({"region": "Thorax", "modality": "MR"}) == {"thorax ct"}
    assert _picks({"region": "Abdomen", "modality": "CT"}) == set(MATCH_POOL)
    assert _picks({"modality": "CT"}) == set(MATCH_POOL), "no region: nothing to match on"


def test_matching_reports_are_one_per_query_and_seeded():
    queries = [{"region": "Head", "modality": "CT"}, {"region": "Thorax", "modality": "CT"}, {}]
    picks = random_matching_reports(queries, MATCH_META, MATCH_POOL, np.random.default_rng(3))
    assert len(picks) == 3 and picks[0] in {"head ct", "head ct and mr"} and picks[1] == "thorax ct"
    assert picks == random_matching_reports(queries, MATCH_META, MATCH_POOL, np.random.default_rng(3))


def test_matching_reports_reject_an_empty_or_mismatched_pool():
    with pytest.raises(ValueError, match="metadata"):
        random_matching_reports([{}], MATCH_META[:2], MATCH_POOL, np.random.default_rng(0))
    with pytest.raises(ValueError):
        random_matching_reports([{}], [], [], np.random.default_rng(0))


CONSENSUS_POOL = [
    "fracture of the distal radius",
    "the heart is normal in size the lungs are clear",
    "the heart is normal in size the lungs are clear there is no effusion",  # holds every other chest phrase
    "the lungs are clear there is no effusion",
    "the heart is normal in size there is no effusion",
    "liver mass with a central scar",
]


def test_consensus_is_the_medoid_by_mean_sentence_bleu():
    assert consensus_report(CONSENSUS_POOL) == CONSENSUS_POOL[2]
    # The same pool in another order: the pick follows the text, not its position.
    shuffled = [CONSENSUS_POOL[i] for i in (2, 5, 0, 4, 1, 3)]
    assert consensus_report(shuffled) == CONSENSUS_POOL[2]
    means = [np.mean([sentence_bleu(c, r) for r in CONSENSUS_POOL if r is not c]) for c in CONSENSUS_POOL]
    assert int(np.argmax(means)) == 2
    assert consensus_report(["only report"]) == "only report"
    with pytest.raises(ValueError, match="pool"):
        consensus_report([])


def test_oracle_picks_the_best_sentence_bleu_report_per_reference():
    refs = ["the lungs are clear", "there is a fracture of the distal radius"]
    pool = ["no acute disease", "the lungs are clear bilaterally", "distal radius fracture",
            "there is a fracture of the distal radius with displacement"]
    assert oracle_reports(refs, pool) == [pool[1], pool[3]]
    # By hand: 5 vs 4 tokens -> precisions 4/5, 3/4, 2/3, 1/2, no brevity penalty.
    assert sentence_bleu(pool[1], refs[0]) == pytest.approx((4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25, abs=1e-9)
    # 10 vs 8 tokens -> 8/10, 7/9, 6/8, 5/7.
    assert sentence_bleu(pool[3], refs[1]) == pytest.approx((8 / 10 * 7 / 9 * 6 / 8 * 5 / 7) ** 0.25, abs=1e-9)
    # A shorter but fully matching text loses to the longer one through its brevity penalty and 4-grams.
    assert sentence_bleu(pool[2], refs[1]) < 1e-3


def test_oracle_is_at_least_as_good_as_every_pool_report():
    rng = np.random.default_rng(1)
    words = "the lungs are clear there is no effusion small mass in left upper lobe".split()
    pool = [" ".join(rng.choice(words, size=int(rng.integers(3, 12)))) for _ in range(30)]
    refs = [" ".join(rng.choice(words, size=int(rng.integers(3, 12)))) for _ in range(10)]
    for ref, pick in zip(refs, oracle_reports(refs, pool)):
        assert pick in pool
        assert sentence_bleu(pick, ref) >= max(sentence_bleu(p, ref) for p in pool)
    assert oracle_reports([], pool) == []
    with pytest.raises(ValueError, match="pool"):
        oracle_reports(refs, [])
