"""`medcm eval`'s abstention block on hand-made embeddings: in distribution, leave one region out, regions
too small to recalibrate, queries without regions; its markdown lines, the grounding lines and the plot bars; and `evaluate()` reporting it with a tiny model."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import medcm.eval.evaluate as evaluate_module
import medcm.eval.metrics as metrics_module
from medcm.checkpoint import load_checkpoint, save_checkpoint
from medcm.cli.model_commands import abstention_summary
from medcm.config import AbstentionConfig
from medcm.data.manifest import ManifestRecord, read_manifest
from medcm.eval.abstention import abstention_block, query_regions
from medcm.eval.evaluate import EmbeddedSet
from medcm.eval.grounding import GroundedCase, summarize
from medcm.eval.report import _abstention_bars, abstention_lines, grounding_lines, trust_lines
from medcm.index.calibration import calibrate

D = 4


def _plane(first: int, second: int, degrees: float) -> np.ndarray:
    """A unit vector at `degrees` in the plane of axes `first` and `second`."""
    vector = np.zeros(D, np.float32)
    vector[first], vector[second] = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return vector


def _embedded(cases: list[tuple[str, str, list[np.ndarray]]]) -> EmbeddedSet:
    """An `EmbeddedSet` of (case id, region, image vectors); each report vector is its case's mean image."""
    records = [ManifestRecord(images=tuple(f"/nowhere/{c}-{i}.png" for i in range(len(v))), report="FINDINGS: x.",
                              case_id=c, meta={"region": region} if region else {}) for c, region, v in cases]
    rows = [(c, {"region": region} if region else {}, vector) for c, region, vectors in cases for vector in vectors]
    reports = np.stack([np.mean(v, axis=0) / np.linalg.norm(np.mean(v, axis=0)) for _, _, v in cases])
    return EmbeddedSet(records, np.stack([v for _, _, v in rows]).astype(np.float32), [c for c, _, _ in rows],
                       [m for _, m, _ in rows], reports.astype(np.float32))


def _pool() -> EmbeddedSet:
    # Head and Neck interleave in the plane of axes 0 and 1 (Head at 0, 4, ..., 44 degrees, Neck at 2, ..., 46):
    # they look alike. Pelvis lies in the plane of axes 2 and 3, orthogonal to both.
    head = [(f"h{i}", "Head", [_plane(0, 1, 4 * i)]) for i in range(12)]
    neck = [(f"n{i}", "Neck", [_plane(0, 1, 4 * i + 2)]) for i in range(12)]
    pelvis = [(f"p{i}", "Pelvis", [_plane(2, 3, 4 * i)]) for i in range(12)]
    return _embedded(head + neck + pelvis)


def _queries() -> EmbeddedSet:
    return _embedded([("qh1", "Head", [_plane(0, 1, 1)]), ("qh2", "Head", [_plane(0, 1, 23)]),
                      ("qn1", "Neck", [_plane(0, 1, 12), _plane(0, 1, 14)]),  # two images: queried at 13 degrees
                      ("qp1", "Pelvis", [_plane(2, 3, 2)]), ("qp2", "Pelvis", [_plane(2, 3, 10)]),
                      ("qp3", "Pelvis", [_plane(2, 3, 22)]),
                      ("qp4", "Pelvis", [_plane(2, 3, 90)])])  # 46 degrees from the nearest Pelvis case


def _config(**settings) -> AbstentionConfig:
    """The product's settings but 5 neighbours (the hand-made pool holds 12 cases per region) and the similarity
    rule at the 5th percentile (the numbers below are worked out for it)."""
    return AbstentionConfig(**{"neighbours": 5, "below_percentile": 5.0, **settings})


# A region head on the hand-made space: Head reads axis 0, Neck axis 1 (the two interleave: it tells them
# apart only roughly), Pelvis the plane of axes 2 and 3.
REGION_HEAD = (("Head", "Neck", "Pelvis"), 10 * np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1]], np.float32),
               np.zeros(3, np.float32))


def test_the_region_head_abstains_where_the_archive_lacks_the_region_and_nowhere_else():
    block = abstention_block(_pool(), _queries(), _config(below_percentile=0.0), REGION_HEAD)
    assert block["rule"] == "similarity + region head" and block["region_percentile"] == 5.0
    assert block["in_distribution"]["by_region"] == 0 and block["in_distribution"]["abstained"] == 0
    regions = block["out_of_distribution"]["regions"]
    assert (regions["Pelvis"]["by_region"], regions["Pelvis"]["n"]) == (4, 4)  # no Pelvis left in the pool
    assert regions["Head"]["by_region"] == 0  # Neck cases look like Head to the head: the archive has such studies
    without = abstention_block(_pool(), _queries(), _config(below_percentile=0.0, region_percentile=0.0), REGION_HEAD)
    assert without is None  # both rules off


def _neighbourhood(*degrees: float) -> float:
    return float(np.mean(np.cos(np.radians(degrees))))


def test_in_distribution_only_the_outlier_abstains():
    pool, block = _pool(), abstention_block(_pool(), _queries(), _config())
    json.dumps(block)  # JSON-ready
    assert block["rule"] == "similarity" and "DICOM header" in block["note"]
    inside = block["in_distribution"]
    assert (inside["n"], inside["abstained"], inside["abstained_cases"]) == (7, 1, ["qp4"])
    assert inside["rate"] == pytest.approx(1 / 7) and inside["pool_cases"] == 36
    assert inside["calibrated"] and inside["calibrated_studies"] == 36
    # The engine's calibration of the whole pool; its 5th percentile of 36 is the 2nd lowest neighbourhood,
    # a Pelvis end case's (its 5 nearest at 4, 8, 12, 16, 20 degrees).
    reference = calibrate(pool.image_emb, pool.image_case, pool.report_emb, pool.case_ids, 5)
    assert inside["threshold"] == pytest.approx(reference.threshold(5.0))
    assert inside["threshold"] == pytest.approx(_neighbourhood(4, 8, 12, 16, 20), abs=1e-5)
    assert inside["typical"] == pytest.approx(reference.typical)


def test_leave_one_region_out_abstains_only_for_the_region_unlike_the_rest():
    outside = abstention_block(_pool(), _queries(), _config())["out_of_distribution"]
    assert list(outside["regions"]) == ["Head", "Neck", "Pelvis"]
    counts = {region: (row["n"], row["abstained"], row["pool_cases"]) for region, row in outside["regions"].items()}
    # Without Head, Head queries still find Neck cases 1-3 degrees away; without Pelvis nothing is near Pelvis.
    assert counts == {"Head": (2, 0, 24), "Neck": (1, 0, 24), "Pelvis": (4, 4, 24)}
    assert outside["regions"]["Pelvis"]["abstained_cases"] == ["qp1", "qp2", "qp3", "qp4"]
    assert outside["regions"]["Pelvis"]["median_similarity"] == pytest.approx(0.0, abs=1e-6)
    assert (outside["n"], outside["abstained"], outside["not_judged"], outside["no_region"]) == (7, 4, {}, 0)
    assert outside["rate"] == pytest.approx(4 / 7)


def test_targets_and_the_percentile_setting():
    block = abstention_block(_pool(), _queries(), _config())
    assert block["targets"] == {
        "out-of-distribution abstention": {"target": ">= 0.90", "value": pytest.approx(4 / 7), "met": False},
        "in-distribution abstention": {"target": "<= 0.10", "value": pytest.approx(1 / 7), "met": False}}
    # At the 50th percentile half the pool's own studies are "unlike the archive": more queries abstain.
    strict = abstention_block(_pool(), _queries(), _config(below_percentile=50))
    assert strict["in_distribution"]["abstained"] > 1 and strict["below_percentile"] == 50
    assert abstention_block(_pool(), _queries(), _config(below_percentile=0, header=True)) is None


def test_a_region_too_small_to_recalibrate_is_not_judged_and_regionless_queries_are_counted():
    pool = _pool()
    queries = _embedded([("qh1", "Head", [_plane(0, 1, 1)]), ("qp1", "Pelvis", [_plane(2, 3, 2)]),
                         ("qx", "", [_plane(0, 1, 5)])])
    # Without Head, 24 studies remain: below min_studies 25 the region is not judged (the engine would not judge).
    outside = abstention_block(pool, queries, _config(min_studies=25))["out_of_distribution"]
    assert outside["regions"] == {} and outside["n"] == 0 and outside["rate"] is None
    assert set(outside["not_judged"]) == {"Head", "Pelvis"} and "24 pool studies" in outside["not_judged"]["Head"]
    assert outside["no_region"] == 1
    # A case's region may come from its images alone.
    images_only = EmbeddedSet([ManifestRecord(("/a.png",), "x", "a")], np.eye(1, D, dtype=np.float32), ["a"],
                              [{"region": "Head"}], np.eye(1, D, dtype=np.float32))
    assert query_regions(images_only) == {"a": "Head"}


def test_without_regions_there_is_no_out_of_distribution_test():
    queries = _embedded([("q1", "", [_plane(0, 1, 1)]), ("q2", "", [_plane(2, 3, 90)])])
    block = abstention_block(_pool(), queries, _config())
    assert block["out_of_distribution"] is None
    assert block["in_distribution"]["abstained_cases"] == ["q2"]
    assert block["targets"]["out-of-distribution abstention"] == {"target": ">= 0.90", "value": None, "met": None}


# --- markdown and plot -------------------------------------------------------------------------


def test_abstention_markdown_lines():
    block = abstention_block(_pool(), _queries(), _config())
    text = "\n".join(abstention_lines(block))
    threshold = block["in_distribution"]["threshold"]
    assert f"| in distribution | 36 | 1/7 | {1 / 7:.4f} | {threshold:.4f} |" in text
    assert "| without Head | 24 | 0/2 | 0.0000 |" in text and "| without Neck | 24 | 0/1 | 0.0000 |" in text
    assert "| without Pelvis | 24 | 4/4 | 1.0000 |" in text
    assert f"| leave one region out, all | | 4/7 | {4 / 7:.4f} |" in text
    assert f"| out-of-distribution abstention | >= 0.90 | {4 / 7:.4f} | NO |" in text
    assert f"| in-distribution abstention | <= 0.10 | {1 / 7:.4f} | NO |" in text
    assert "5th percentile" in text and "DICOM header" in text
    regionless = abstention_block(_pool(), _embedded([("q1", "", [_plane(0, 1, 1)])]), _config())
    assert "Leave one region out: not measured" in "\n".join(abstention_lines(regionless))


def _trust(**blocks) -> dict:
    return {"checker": "rules", "self_contradiction": {}, "diversity": {}, **blocks,
            "randomization": {"method": "paired", "shuffles": 10, "seed": 0, "levels": {}, "metrics": {}}}


def test_trust_lines_show_grounding_and_abstention():
    outcomes = [GroundedCase("a", "CT", "pulmonary nodule", "s", (1, 1), 0.0, True, 0.1),
                GroundedCase("b", "CT", "pulmonary nodule", "s", (1, 1), 9.0, False, 0.2),
                GroundedCase("c", "DX", "pleural effusion", "s", (1, 1), 0.0, True, 0.3)]
    grounding = {**summarize(outcomes), "tolerance_px": 6, "method": "gradcam", "shifts": 0, "cases": []}
    abstention = abstention_block(_pool(), _queries(), _config())
    text = "\n".join(trust_lines(_trust(grounding=grounding, abstention=abstention)))
    assert "within 6 px" in text and "(gradcam)" in text
    assert f"| all | 3 | {2 / 3:.4f} | {0.2:.4f} | 0.0 |" in text
    assert "| finding: pulmonary nodule | 2 | 0.5000 | 0.1500 | 4.5 |" in text
    assert "| finding: pleural effusion | 1 | 1.0000 | 0.3000 | 0.0 |" in text
    assert "| modality: CT | 2 | 0.5000 | 0.1500 | 4.5 |" in text and "| modality: DX | 1 |" in text
    assert "| without Pelvis | 24 | 4/4 |" in text
    assert "\n".join(grounding_lines(grounding)) in text
    plain = "\n".join(trust_lines(_trust()))
    assert "pointing game" not in plain and "Abstention" not in plain


def test_plot_bars_are_the_drafts_abstention_rates():
    block = abstention_block(_pool(), _queries(), _config())
    assert _abstention_bars({"abstention": block}) == {"abstained\n(in-dist.)": pytest.approx(1 / 7),
                                                       "abstained\n(OOD)": pytest.approx(4 / 7)}
    regionless = abstention_block(_pool(), _embedded([("q1", "", [_plane(0, 1, 1)])]), _config())
    assert _abstention_bars({"abstention": regionless}) == {"abstained\n(in-dist.)": 0.0}
    assert _abstention_bars({}) == {}


# --- evaluate() end to end ---------------------------------------------------------------------


def test_evaluate_reports_the_block_of_its_own_embeddings(tiny_model, tiny_config, synthetic_manifest, tmp_path,
                                                          monkeypatch):
    for module in (evaluate_module, metrics_module):  # METEOR starts a JVM (~9 s); not measured here
        monkeypatch.setattr(module, "corpus_meteor", lambda hypotheses, references, timeout_s=300.0: None)
    checkpoint = load_checkpoint(save_checkpoint(tmp_path / "ckpt", tiny_model, tiny_config))
    records = read_manifest(synthetic_manifest)
    regions = ["Thorax", "Abdomen"]
    pool = [dataclasses.replace(r, meta={**r.meta, "region": regions[i % 2]})
            for i, r in enumerate([r for r in records if r.split == "train"][:16])]
    queries = [dataclasses.replace(r, meta={**r.meta, "region": regions[i % 2]})
               for i, r in enumerate([r for r in records if r.split == "dev"][:4])]
    config = _config(min_studies=5)
    block = evaluate_module.evaluate(checkpoint, pool, queries, abstention=config)["trust"]["abstention"]
    embedded = [evaluate_module.embed_records(checkpoint, cases, "cpu") for cases in (pool, queries)]
    assert block == abstention_block(*embedded, config)
    assert block["in_distribution"]["n"] == 4 and block["in_distribution"]["pool_cases"] == 16
    assert {r: row["n"] for r, row in block["out_of_distribution"]["regions"].items()} == {"Abdomen": 2, "Thorax": 2}
    assert all(row["pool_cases"] == 8 for row in block["out_of_distribution"]["regions"].values())
    off = evaluate_module.evaluate(checkpoint, pool, queries, abstention=_config(below_percentile=0))
    assert "abstention" not in off["trust"]


def test_cli_summary_line():
    block = abstention_block(_pool(), _queries(), _config())
    assert abstention_summary(block) == "abstained: in distribution 1/7; leave one region out 4/7"
    small = abstention_block(_pool(), _embedded([("q1", "", [_plane(0, 1, 1)])]), _config(min_studies=40))
    assert abstention_summary(small) == ("abstained: in distribution 0/1 (pool too small to calibrate: 36 studies); "
                                         "leave one region out not measured (no region metadata)")
