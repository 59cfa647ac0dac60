"""The pointing game: which sentence is grounded, where the finding is, hits within a tolerance, the chance rate."""

from __future__ import annotations

import numpy as np
import pytest

from medcm.data.demo_archive import mask_to_rle, write_demo_archive
from medcm.data.manifest import read_manifest
from medcm.eval.grounding import (
    LocatedPeak,
    finding_mask,
    finding_sentence,
    grounding_block,
    pointing_game,
    score_peaks,
    summarize,
)


def test_the_affirmed_finding_sentence_is_grounded():
    report = ("FINDINGS: No pleural effusion. There is a 12 mm rounded nodule in the right upper zone. "
              "No pneumothorax.\nIMPRESSION: 12 mm pulmonary nodule in the right upper zone.")
    assert finding_sentence(report, "pulmonary nodule") == "There is a 12 mm rounded nodule in the right upper zone."
    assert finding_sentence(report, "pleural effusion") is None  # only denied
    assert finding_sentence("FINDINGS: The heart is mildly enlarged.", "cardiomegaly") == "The heart is mildly enlarged."


def test_finding_mask_reads_the_mask_else_the_boxes():
    mask = np.zeros((6, 8), bool)
    mask[1:3, 2:5] = True
    assert np.array_equal(finding_mask({"finding_mask": mask_to_rle(mask)}, (6, 8)), mask)
    boxes = finding_mask({"finding_boxes": [[2, 1, 5, 3], [7, 5, 8, 6]]}, (6, 8))
    assert boxes.sum() == 7 and boxes[1:3, 2:5].all() and boxes[5, 7]
    assert finding_mask({"finding": "normal"}, (6, 8)) is None
    with pytest.raises(ValueError, match="finding_mask"):
        finding_mask({"finding_mask": mask_to_rle(mask)}, (8, 6))


def test_hits_count_within_the_tolerance_and_chance_is_the_reachable_share():
    mask = np.zeros((20, 20), bool)
    mask[10, 10] = True
    located = [LocatedPeak("a", "CR", "pulmonary nodule", "s", (10, 10), mask),
               LocatedPeak("b", "CT", "pulmonary nodule", "s", (10, 13), mask),
               LocatedPeak("c", "CT", "pleural effusion", "s", (0, 0), mask)]
    strict, loose = score_peaks(located, 0), score_peaks(located, 3)
    assert [c.hit for c in strict] == [True, False, False] and [c.hit for c in loose] == [True, True, False]
    assert [c.distance_px for c in strict] == [0.0, 3.0, pytest.approx(np.hypot(10, 10))]
    assert strict[0].chance == 1 / 400 and loose[0].chance == 29 / 400  # a disc of radius 3 holds 29 pixels
    summary = summarize(loose)
    assert summary["overall"]["pointing_game"] == pytest.approx(2 / 3)
    assert summary["per_finding"]["pulmonary nodule"] == {"n": 2, "pointing_game": 1.0, "random": 29 / 400,
                                                          "median_distance_px": 1.5}
    assert summary["per_modality"]["CT"]["pointing_game"] == 0.5 and summary["per_modality"]["CR"]["n"] == 1


def test_the_demo_archive_is_scored_and_other_data_is_not(tmp_path, untrained_checkpoint):
    from medcm.checkpoint import load_checkpoint

    records = read_manifest(write_demo_archive(tmp_path, n_train=8, n_dev=0, seed=0, size=48))
    checkpoint = load_checkpoint(untrained_checkpoint(volume=False), "cpu")
    outcomes = pointing_game(checkpoint, records, tolerance_px=2)
    localised = [r for r in records if r.meta["finding"] != "normal"]
    assert [c.case_id for c in outcomes] == [r.case_id for r in localised]
    assert all(0 <= c.peak[0] < 48 and 0 <= c.peak[1] < 48 and 0 < c.chance < 1 for c in outcomes)
    block = grounding_block(checkpoint, records, tolerance_px=2)
    assert block["overall"]["n"] == len(localised) and block["tolerance_px"] == 2 and len(block["cases"]) == len(localised)
    assert grounding_block(checkpoint, [r for r in records if r.meta["finding"] == "normal"]) is None
