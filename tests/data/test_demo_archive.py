"""The embedded demo's synthetic studies: balance, reports that match their images, round trip, learnability."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from medcm.data.manifest import load_image, read_manifest
from medcm.data.demo_archive import (
    FINDINGS_CR,
    FINDINGS_CT,
    make_demo_case,
    make_demo_cases,
    write_demo_archive,
)
from medcm.report.text import is_negated, split_sections, split_sentences

SIZE = 128
# Words by which a report sentence speaks of each finding (negating any of them would contradict the image).
FINDING_WORDS = {
    "pleural effusion": ("effusion",),
    "pulmonary nodule": ("nodule", "nodular"),
    "cardiomegaly": ("cardiomegaly", "heart", "cardiac", "cardio"),
    "pneumothorax": ("pneumothorax",),
    "consolidation": ("consolidation", "airspace", "pneumonia"),
    "liver lesion": ("liver", "hepatic"),
}


def _grid(size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    return (np.mgrid[0:size, 0:size] + 0.5) / size


def _pair(finding: str, modality: str, accept=lambda case: True, normal_part: str | None = None):
    """A case of `finding` and the normal case drawn from the same generator state (same anatomy and noise)."""
    for seed in range(500):
        case = make_demo_case(finding, modality, np.random.default_rng(seed), SIZE)
        normal = make_demo_case("normal", modality, np.random.default_rng(seed), SIZE)
        if accept(case) and normal.body_part == (normal_part or case.body_part):
            return case, normal
    raise AssertionError(f"no seed gave the wanted {finding} case")


@pytest.fixture(scope="module")
def cases():
    return make_demo_cases(96, seed=0, size=64)


def test_findings_are_balanced_and_three_in_four_are_radiographs(cases):
    modalities = Counter(c.modality for c in cases)
    assert modalities == {"CR": 72, "CT": 24}
    assert Counter(c.finding for c in cases if c.modality == "CR") == {f: 12 for f in FINDINGS_CR}
    assert Counter(c.finding for c in cases if c.modality == "CT") == {f: 6 for f in FINDINGS_CT}
    assert {c.body_part for c in cases if c.finding == "liver lesion"} == {"ABDOMEN"}
    assert {c.body_part for c in cases if c.modality == "CR"} == {"CHEST"}


def test_cases_are_deterministic_for_a_seed(cases):
    again = make_demo_cases(96, seed=0, size=64)
    assert [c.report for c in again] == [c.report for c in cases]
    assert all(np.array_equal(a.pixels, b.pixels) for a, b in zip(again, cases))
    other = make_demo_cases(8, seed=1, size=64)
    assert [c.report for c in other] != [c.report for c in cases[:8]]


def test_pixels_are_float32_display_values(cases):
    for case in cases:
        assert case.pixels.shape == (64, 64) and case.pixels.dtype == np.float32
        assert 0.0 <= case.pixels.min() and case.pixels.max() <= 1.0


def test_reports_have_both_sections_and_never_contradict_their_finding(cases):
    for case in make_demo_cases(240, seed=3, size=32) + cases:
        sections = split_sections(case.report)
        assert sections.findings and sections.impression, case.report
        if case.finding == "normal":
            assert any(is_negated(s) for s in split_sentences(sections.findings)), case.report
            continue
        sentences = split_sentences(sections.findings) + split_sentences(sections.impression)
        about = [s for s in sentences if any(w in s.lower() for w in FINDING_WORDS[case.finding])]
        assert about, case.report
        assert not any(is_negated(s) for s in about), case.report
        assert case.details.get("side", "") in case.report.lower()
        if "size_mm" in case.details:
            mm = int(case.details["size_mm"])
            assert f"{mm} mm" in case.report or f"{mm / 10:.1f} cm" in case.report, case.report


def test_normal_reports_deny_what_abnormal_reports_state(cases):
    # Drafting resolves such contradictions across retrieved cases, so both kinds must occur.
    normal_text = " ".join(c.report for c in cases if c.finding == "normal")
    assert "No pleural effusion" in normal_text or "No pleural effusions" in normal_text
    assert any("pleural effusion" in c.report and c.finding == "pleural effusion" for c in cases)


def test_unknown_inputs_are_refused():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="finding"):
        make_demo_case("liver lesion", "CR", rng)
    with pytest.raises(ValueError, match="modality"):
        make_demo_case("normal", "MR", rng)
    with pytest.raises(ValueError, match="size"):
        make_demo_case("normal", "CR", rng, size=8)
    with pytest.raises(ValueError, match="n"):
        make_demo_cases(-1)


def test_left_effusion_is_drawn_at_the_lower_right_of_the_image():
    yy, xx = _grid()
    low = (yy > 0.55) & (yy < 0.85)
    right, left = low & (xx > 0.6) & (xx < 0.85), low & (xx > 0.15) & (xx < 0.4)
    case, normal = _pair("pleural effusion", "CR", lambda c: c.details == {"side": "left", "severity": "large"})
    assert case.pixels[right].mean() > case.pixels[left].mean() + 0.1
    diff = case.pixels - normal.pixels  # same anatomy and noise: only the fluid differs
    assert diff[right].mean() > 0.1 and diff[left].mean() == 0.0
    small, normal = _pair("pleural effusion", "CR", lambda c: c.details == {"side": "right", "severity": "small"})
    diff = small.pixels - normal.pixels
    assert diff[left].mean() > 0.02 and diff[right].mean() == 0.0


def test_pneumothorax_darkens_its_own_side_only():
    yy, xx = _grid()
    upper = (yy > 0.1) & (yy < 0.5)
    for side, own, other in (("left", xx > 0.5, xx < 0.5), ("right", xx < 0.5, xx > 0.5)):
        wanted = {"side": side, "severity": "small"}
        case, normal = _pair("pneumothorax", "CR", lambda c, wanted=wanted: c.details == wanted)
        diff = case.pixels - normal.pixels
        darker = diff < -0.05
        assert darker[upper & own].sum() > 100 and diff[upper & own].mean() < -0.005, side
        assert not darker[other].any() and diff[other].max() == 0.0, side
        # The gap is air without lung markings, darker than any aerated lung.
        assert case.pixels[darker].mean() < 0.15 < normal.pixels[darker].mean(), side


def test_cardiomegaly_widens_the_heart_shadow():
    def heart_width(pixels: np.ndarray) -> float:
        rows, cols = slice(int(0.58 * SIZE), int(0.66 * SIZE)), slice(int(0.14 * SIZE), int(0.86 * SIZE))
        return float((pixels[rows, cols] > 0.45).sum(axis=1).mean()) / (0.72 * SIZE)

    for seed in range(5):
        big = make_demo_case("cardiomegaly", "CR", np.random.default_rng(seed), SIZE)
        normal = make_demo_case("normal", "CR", np.random.default_rng(seed), SIZE)
        assert heart_width(big.pixels) > 1.2 * heart_width(normal.pixels), big.details
        assert float(big.details["ctr"]) > 0.55


def test_nodule_and_consolidation_add_opacity_in_their_zone():
    yy, xx = _grid()
    nodule, normal = _pair("pulmonary nodule", "CR", lambda c: c.details["side"] == "right" and c.details["zone"] == "upper")
    diff = nodule.pixels - normal.pixels
    assert diff.max() > 0.2 and diff[xx > 0.5].max() == 0.0
    bright = np.argwhere(diff > 0.1).mean(axis=0) / SIZE
    assert bright[0] < 0.5 and bright[1] < 0.5  # upper, image left
    patch, normal = _pair("consolidation", "CR", lambda c: c.details["side"] == "left" and c.details["zone"] == "lower")
    diff = patch.pixels - normal.pixels
    assert diff[(yy > 0.45) & (xx > 0.5)].mean() > 0.02 and diff[xx < 0.5].max() == 0.0


def test_ct_findings_are_drawn_where_they_belong():
    yy, xx = _grid()
    effusion, normal = _pair("pleural effusion", "CT", lambda c: c.details["side"] == "left")
    diff = effusion.pixels - normal.pixels
    assert diff[(yy > 0.6) & (xx > 0.5)].mean() > 0.02  # dependent: the posterior crescent at the bottom
    assert diff[yy < 0.32].max() == 0.0 and diff[xx < 0.5].max() == 0.0  # anterior lung spared
    lesion, normal = _pair("liver lesion", "CT", lambda c: c.details["side"] == "right", normal_part="ABDOMEN")
    diff = lesion.pixels - normal.pixels
    assert diff.min() < -0.2 and diff.max() == 0.0  # hypodense
    assert np.argwhere(diff < -0.1).mean(axis=0)[1] / SIZE < 0.45  # the patient's right: image left
    nodule, normal = _pair("pulmonary nodule", "CT")
    assert (nodule.pixels - normal.pixels).max() > 0.2


def test_archive_round_trips(tmp_path):
    manifest = write_demo_archive(tmp_path, n_train=6, n_dev=4, seed=2, size=48)
    records = read_manifest(manifest)
    assert [r.split for r in records] == ["train"] * 6 + ["dev"] * 4
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    expected = make_demo_cases(6, seed=2, size=48) + make_demo_cases(4, seed=3, size=48)
    for line, record, case in zip(lines, records, expected):
        assert line["image"] == f"studies/{record.case_id}/image.dcm"
        np.testing.assert_allclose(load_image(record.images[0])[0], case.pixels, atol=1e-4)
        assert (tmp_path / "studies" / record.case_id / "report.txt").read_text().strip() == case.report == record.report
        assert {k: record.meta[k] for k in ("finding", "modality", "body_part")} == {
            "finding": case.finding, "modality": case.modality, "body_part": case.body_part}
    assert len({r.case_id for r in records}) == 10


@pytest.mark.slow
def test_a_small_model_learns_findings_from_the_demo_data(tmp_path, small_config):
    import torch

    from medcm.checkpoint import load_checkpoint
    from medcm.data.manifest import PairedImageDataset, records_to_pairs, split_records
    from medcm.model.preprocess import normalize
    from medcm.model.train import train

    manifest = write_demo_archive(tmp_path / "demo", n_train=288, n_dev=48, size=64)
    train_records, dev_records = split_records(read_manifest(manifest), "train", "dev", 0.0, 0)
    result = train(small_config(epochs=10, batch_size=32), train_records, dev_records, tmp_path / "run", progress=False)

    best = load_checkpoint(result.best_dir)
    finding_of = {r.case_id: r.meta["finding"] for r in train_records + dev_records}
    train_pairs = records_to_pairs(train_records)
    dev = PairedImageDataset(records_to_pairs(dev_records), best.config.preprocess)
    with torch.no_grad():
        images = best.model.encode_image(normalize(dev.images.float() / 255.0, best.config.preprocess))
        texts = best.model.encode_text([p.text for p in train_pairs])
    top1 = (images @ texts.T).argmax(dim=1).tolist()
    hits = [finding_of[train_pairs[j].case_id] == finding_of[p.case_id] for j, p in zip(top1, dev.pairs)]
    accuracy = sum(hits) / len(hits)
    majority = max(Counter(finding_of[p.case_id] for p in dev.pairs).values()) / len(dev.pairs)
    print(f"finding-level top-1 image->report accuracy {accuracy:.3f} (majority class {majority:.3f})")
    assert accuracy >= 2 * majority, (accuracy, majority)


# --- where each finding was drawn (grounding truth) ---------------------------------------------

LOCALISED = [("CR", "pleural effusion"), ("CR", "pulmonary nodule"), ("CR", "cardiomegaly"), ("CR", "pneumothorax"),
             ("CR", "consolidation"), ("CT", "pulmonary nodule"), ("CT", "pleural effusion"), ("CT", "liver lesion")]


def _grown(mask: np.ndarray, pixels: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(pixels):  # one pixel in each axis direction per step: absorbs the image's blur
        out = out | np.roll(out, 1, 0) | np.roll(out, -1, 0) | np.roll(out, 1, 1) | np.roll(out, -1, 1)
    return out


@pytest.mark.parametrize("modality,finding", LOCALISED)
def test_the_mask_and_boxes_are_where_the_finding_was_drawn(modality, finding):
    normal_part = "ABDOMEN" if finding == "liver lesion" else None
    case, normal = _pair(finding, modality, normal_part=normal_part)
    assert case.mask is not None and case.mask.shape == case.pixels.shape and case.mask.dtype == bool
    diff = case.pixels - normal.pixels  # same anatomy and noise: only the finding differs
    changed = np.abs(diff) > 0.05  # a pneumothorax: its air gap and pleural line (the collapsed lung gains 0.04)
    if finding == "cardiomegaly":
        changed = diff > 0.05  # the heart's shadow grows; the lung it covers is what changes
    assert changed.sum() > 5
    inside = (changed & _grown(case.mask, 2)).sum() / changed.sum()
    assert inside > 0.95, (finding, inside)
    covered = (case.mask & _grown(changed, 2)).sum() / case.mask.sum()
    if finding == "cardiomegaly":  # the mask is the whole heart, of which only the enlargement is new
        assert covered > 0.3 and case.pixels[case.mask].mean() > 0.55, covered
    else:
        assert covered > 0.8, (finding, covered)
    assert normal.mask is None and normal.boxes == ()
    union = np.zeros_like(case.mask)
    for x0, y0, x1, y1 in case.boxes:
        assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE
        union[y0:y1, x0:x1] = True
        part = case.mask[y0:y1, x0:x1]  # tight: the mask touches all four sides of its box
        assert part[0].any() and part[-1].any() and part[:, 0].any() and part[:, -1].any()
    assert not (case.mask & ~union).any()


def test_a_bilateral_effusion_has_a_box_on_each_side():
    for modality in ("CR", "CT"):
        case, _ = _pair("pleural effusion", modality, lambda c: c.details["side"] == "bilateral")
        right, left = sorted(case.boxes)  # the patient's right is the image's left
        assert right[2] <= SIZE // 2 <= left[0], case.boxes


def test_masks_survive_the_manifest(tmp_path):
    from medcm.data.demo_archive import rle_to_mask

    manifest = write_demo_archive(tmp_path, n_train=12, n_dev=0, seed=4, size=48)
    cases = make_demo_cases(12, seed=4, size=48)
    for line, case in zip([json.loads(x) for x in manifest.read_text().splitlines()], cases):
        if case.mask is None:
            assert "finding_mask" not in line["meta"] and "finding_boxes" not in line["meta"]
            continue
        assert np.array_equal(rle_to_mask(line["meta"]["finding_mask"]), case.mask)
        assert [tuple(b) for b in line["meta"]["finding_boxes"]] == list(case.boxes)


def test_rle_round_trips_and_checks_its_size():
    from medcm.data.demo_archive import mask_to_rle, rle_to_mask

    rng = np.random.default_rng(0)
    for mask in (rng.random((7, 9)) < 0.3, np.ones((3, 4), bool), np.zeros((2, 5), bool)):
        rle = mask_to_rle(mask)
        assert np.array_equal(rle_to_mask(rle), mask) and sum(rle["counts"]) == mask.size
    assert mask_to_rle(np.array([[False, True], [True, True]]))["counts"] == [1, 3]
    with pytest.raises(ValueError, match="runs add up to"):
        rle_to_mask({"size": [2, 2], "counts": [1, 2]})
