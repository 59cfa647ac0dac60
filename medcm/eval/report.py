"""Write `medcm eval` results: FILE.json, a markdown table beside it (FILE.md), drafts to read
(FILE.samples.md) and PNG plots.

Plots: `FILE.recall.png` (image→report recall@K) and `FILE.draft.png` (draft metrics of the
system and every baseline; beside them, with trust measures, self-contradiction and diversity, where
the queries' truth is known, finding F1 and the share of hallucinating texts, and for the draft the
share of in-distribution and left-out-region queries its abstention refuses).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from medcm.eval.history import history_lines
from medcm.eval.trust import samples_markdown

SYSTEM = "draft (medcm)"
_BASELINE_NAMES = {
    "random": "random pool report",
    "random_same_modality_region": "random report, same modality and region",
    "consensus": "consensus report",
    "nearest_report": "nearest report (whole-report retrieval)",
    "oracle": "oracle report (ceiling of whole-report retrieval)",
}
_TRUST_NAMES = {"draft": f"{SYSTEM}, FINDINGS as scored", "draft_report": f"{SYSTEM}, FINDINGS + IMPRESSION",
                "reference": "reference (the query's written findings)", **_BASELINE_NAMES}


def output_paths(json_path: str | Path) -> dict[str, Path]:
    """Where each output goes: the JSON itself, `.md` and `.samples.md` beside it, and the two plots."""
    json_path = Path(json_path)
    stem = json_path.with_suffix("")  # only the last suffix goes: "eval-w0.1.json" → "eval-w0.1"
    return {"json": json_path, "markdown": Path(f"{stem}.md"), "samples": Path(f"{stem}.samples.md"),
            "recall_plot": Path(f"{stem}.recall.png"), "draft_plot": Path(f"{stem}.draft.png")}


def write_results(results: dict[str, Any], json_path: str | Path) -> dict[str, Path]:
    """Write the JSON, the markdown table, the samples and the plots; each file is replaced atomically.

    Returns:
        The paths written, by kind.
    """
    paths = output_paths(json_path)
    paths["json"].parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(paths["json"], (json.dumps(results, indent=2) + "\n").encode("utf-8"))
    _write_atomic(paths["markdown"], markdown_table(results).encode("utf-8"))
    _write_atomic(paths["samples"], samples_markdown(results).encode("utf-8"))
    _plot_recall(results, paths["recall_plot"])
    _plot_draft(results, paths["draft_plot"])
    return paths


def draft_rows(results: dict[str, Any]) -> list[tuple[str, dict[str, float]]]:
    """(name, metrics) for the system and every baseline, in table order."""
    rows = [(SYSTEM, results["draft"])]
    rows += [(_BASELINE_NAMES.get(key, key), value) for key, value in results["baselines"].items()]
    return rows


def markdown_table(results: dict[str, Any]) -> str:
    """The retrieval numbers and the draft-vs-baselines table as markdown."""
    retrieval, counts = results["retrieval"], results["counts"]
    lines = [f"# medcm eval: {results['model_id']}", "",
             f"Pool {counts['pool_cases']} cases / {counts['pool_images']} images; queries "
             f"{counts['query_cases']} cases / {counts['query_images']} images; "
             f"{counts['scored_drafts']} query cases with written findings scored.", "",
             "## Retrieval", "", "| direction | R@1 | R@5 | R@10 | median rank |", "|---|---|---|---|---|"]
    for key in ("image_to_report", "report_to_image"):
        m = retrieval[key]
        lines.append(f"| {key.replace('_', ' ')} | {m['R@1']:.3f} | {m['R@5']:.3f} | {m['R@10']:.3f} | {m['median_rank']:.0f} |")
    lines += ["", "| image → image against the pool | value |", "|---|---|"]
    lines += [f"| {key} | {_fmt(retrieval.get(key))} |" for key in ("region_P@1", "region_P@5", "modality_P@1")]
    metric_names = list(results["draft"])
    lines += ["", "## Draft findings vs baselines", "",
              "| system | " + " | ".join(metric_names) + " |", "|---" * (len(metric_names) + 1) + "|"]
    for name, metrics in draft_rows(results):
        lines.append(f"| {name} | " + " | ".join(_fmt(metrics.get(k)) for k in metric_names) + " |")
    gap = results.get("gap_closed", {})
    lines += ["", "Share of the random→oracle gap the draft closes: "
              + ", ".join(f"{k} {_fmt(v)}" for k, v in gap.items()), ""]
    if results.get("history"):
        lines += history_lines(results["history"])
    if "trust" in results:
        lines += trust_lines(results["trust"])
    return "\n".join(lines)


def trust_lines(trust: dict[str, Any]) -> list[str]:
    """The trust section: self-contradiction and diversity per system, then the randomization test."""
    lines = ["## Trust", "", f"Self-contradiction: texts with at least one pair that asserts and denies one finding "
             f"at one site, by {trust['checker']}. Diversity: distinct texts and the share of the most common one.",
             "", "| system | self-contradicting | distinct | most common |", "|---|---|---|---|"]
    for name, rate in trust["self_contradiction"].items():
        spread = trust["diversity"].get(name, {})
        lines.append(f"| {_TRUST_NAMES.get(name, name)} | {_fmt(rate['rate'])} ({rate['contradicting']}/{rate['texts']})"
                     f" | {_fmt(spread.get('distinct_share'))} | {_fmt(spread.get('top_share'))} |")
    test = trust["randomization"]
    lines += ["", f"Draft vs the best non-oracle baseline per metric: {test['method']}, {test['shuffles']} shuffles "
              f"(seed {test['seed']}).", "", "| metric | baseline | draft | baseline value | difference | p |",
              "|---|---|---|---|---|---|"]
    for metric, row in test["metrics"].items():
        lines.append(f"| {metric} ({test['levels'].get(metric, '')}) | {_TRUST_NAMES.get(row['baseline'], row['baseline'])} "
                     f"| {_fmt(row['draft'])} | {_fmt(row['baseline_value'])} | {_fmt(row['difference'])} "
                     f"| {_fmt(row['p_value'])} |")
    if trust.get("findings"):
        lines += finding_lines(trust["findings"])
    if trust.get("grounding"):
        lines += grounding_lines(trust["grounding"])
    if trust.get("abstention"):
        lines += abstention_lines(trust["abstention"])
    if trust.get("contradiction_examples"):
        lines += ["", "Self-contradicting drafts (first few):", ""]
        lines += [f"- {_TRUST_NAMES.get(x['system'], x['system'])}, query {x['query']}: {pair}"
                  for x in trust["contradiction_examples"] for pair in x["pairs"]]
    return [*lines, "", "Drafts beside their references and sources, to read: the `.samples.md` file beside this one.", ""]


def finding_lines(findings: dict[str, Any]) -> list[str]:
    """The finding-level table (studies with a known truth): P/R/F1 over (finding, side), laterality, hallucination."""
    truth = ", ".join(f"{name} {count}" for name, count in findings["truth"].items())
    lines = ["", f"Finding level, on the {findings['studies']} studies with a known truth ({truth}): each text read "
             "by the checker above; precision, recall and F1 over (finding, side) pairs, micro-averaged; laterality "
             "errors over texts naming the true finding with a side; hallucinating: texts asserting a finding the "
             "study does not have.", "",
             "| system | precision | recall | F1 | laterality errors | hallucinating | hallucinated findings |",
             "|---|---|---|---|---|---|---|"]
    for name, m in findings["systems"].items():
        side, wrong = m["laterality"], m["hallucination"]
        each = ", ".join(f"{f} {v['hallucinated']}" for f, v in wrong["by_finding"].items() if v["hallucinated"])
        lines.append(f"| {_TRUST_NAMES.get(name, name)} | {_fmt(m['precision'])} | {_fmt(m['recall'])} | {_fmt(m['f1'])} "
                     f"| {_fmt(side['rate'])} ({side['errors']}/{side['named']}) | {_fmt(wrong['rate'])} "
                     f"({wrong['studies']}/{m['studies']}) | {each or '-'} |")
    primary = _TRUST_NAMES.get(findings["primary"], findings["primary"])
    lines += ["", f"Targets ({primary}):", "", "| measure | target | value | met |", "|---|---|---|---|"]
    lines += [f"| {measure} | {t['target']} | {_fmt(t['value'])} | {'n/a' if t['met'] is None else 'yes' if t['met'] else 'NO'} |"
              for measure, t in findings["targets"].items()]
    if findings.get("unscorable"):
        lines += ["", "Not judged (finding outside the checker's table): "
                  + ", ".join(f"{k} {v}" for k, v in findings["unscorable"].items())]
    return lines


def grounding_lines(grounding: dict[str, Any]) -> list[str]:
    """The pointing game (`medcm.eval.grounding.summarize`): hits against the random point's rate, overall,
    per finding and per modality."""
    lines = ["", f"Grounding, the pointing game: the heatmap of the reference sentence stating the finding peaks within "
             f"{grounding['tolerance_px']} px of where the finding is drawn ({grounding['method']}); random: the share "
             "of the image within that reach (a uniformly random point's hit rate).", "",
             "| studies | n | pointing game | random | median miss (px) |", "|---|---|---|---|---|"]
    groups = [("all", grounding["overall"])]
    groups += [(f"finding: {name}", block) for name, block in grounding.get("per_finding", {}).items()]
    groups += [(f"modality: {name or 'unknown'}", block) for name, block in grounding.get("per_modality", {}).items()]
    for name, block in groups:
        lines.append(f"| {name} | {block['n']} | {_fmt(block.get('pointing_game'))} | {_fmt(block.get('random'))} "
                     f"| {_px(block.get('median_distance_px'))} |")
    return lines


def abstention_lines(abstention: dict[str, Any]) -> list[str]:
    """Abstention (`medcm.eval.abstention`): in distribution, leave one region out per region, the targets."""
    inside, outside = abstention["in_distribution"], abstention.get("out_of_distribution")
    lines = ["", f"Abstention ({abstention['note']}): a query abstains when its mean cosine to its "
             f"{abstention['neighbours']} most similar pool reports is below the {abstention['below_percentile']:g}th "
             "percentile of the pool's own studies (leave-one-study-out). In distribution: against the whole pool. "
             "Leave one region out: each region's queries against the pool without that region, recalibrated.", "",
             "| queries | pool cases | abstained | rate | threshold | typical | median similarity |",
             "|---|---|---|---|---|---|---|", _abstention_row("in distribution", inside)]
    if outside is None:
        lines += ["", "Leave one region out: not measured (the queries state no region)."]
    else:
        lines += [_abstention_row(f"without {region}", row) for region, row in outside["regions"].items()]
        lines.append(f"| leave one region out, all | | {outside['abstained']}/{outside['n']} | {_fmt(outside['rate'])} "
                     "| | | |")
        if outside["not_judged"]:
            lines += ["", *(f"Not judged, {region}: {why}." for region, why in outside["not_judged"].items())]
        if outside["no_region"]:
            lines += ["", f"{outside['no_region']} query case(s) state no region and are left out of that test."]
    lines += ["", "| target | bound | value | met |", "|---|---|---|---|"]
    lines += [f"| {name} | {t['target']} | {_fmt(t['value'])} | {'n/a' if t['met'] is None else 'yes' if t['met'] else 'NO'} |"
              for name, t in abstention["targets"].items()]
    return lines


def _px(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _abstention_row(name: str, row: dict[str, Any]) -> str:
    return (f"| {name} | {row['pool_cases']} | {row['abstained']}/{row['n']} | {_fmt(row['rate'])} "
            f"| {_fmt(row['threshold'])} | {_fmt(row['typical'])} | {_fmt(row['median_similarity'])} |")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else str(value) if isinstance(value, int) else f"{value:.4f}"


def _plot_recall(results: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    curve = results["retrieval"].get("image_to_report_curve", {})
    ks = [int(k) for k in curve]
    queries = results["counts"]["query_cases"]
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    ax.plot(ks, [curve[str(k)] for k in ks], marker="o", label="medcm")
    ax.plot(ks, [min(1.0, k / queries) for k in ks], linestyle="--", color="grey", label="chance")
    ax.set(xlabel="K", ylabel="recall@K", ylim=(0, 1), title="image → report, case level")
    ax.legend(loc="lower right")
    _save(fig, path)


def _plot_draft(results: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    rows = draft_rows(results)
    metrics = [k for k in ("BLEU-1", "BLEU-4", "ROUGE-L", "METEOR") if k in results["draft"]]
    colour = {name: f"C{i}" for i, (name, _) in enumerate(rows)}  # one colour per system in both panels
    trust = results.get("trust")
    fig, axes = plt.subplots(1, 2 if trust else 1, figsize=(14 if trust else 8, 5), dpi=120, squeeze=False)
    _grouped_bars(axes[0][0], rows, metrics, "score", "draft findings vs baselines", colour)
    if trust:
        names = [n for n in trust["self_contradiction"] if n != "draft_report"]
        measures = {"self-contradicting": ("self_contradiction", "rate"), "distinct": ("diversity", "distinct_share"),
                    "most common": ("diversity", "top_share")}
        trust_rows = [(SYSTEM if n == "draft" else _TRUST_NAMES.get(n, n),
                       {**{label: trust[block][n].get(key) or 0.0 for label, (block, key) in measures.items()},
                        **_finding_bars(trust, n), **(_abstention_bars(trust) if n == "draft" else {})}) for n in names]
        labels = [*measures, *(["finding F1", "hallucinating"] if trust.get("findings") else []),
                  *_abstention_bars(trust)]
        _grouped_bars(axes[0][1], trust_rows, labels, "share of texts", "trust: contradiction, diversity, findings",
                      colour)
    _save(fig, path)


def _finding_bars(trust: dict[str, Any], name: str) -> dict[str, float]:
    """A system's finding F1 and hallucinating share for the trust plot (none without a findings block)."""
    system = (trust.get("findings") or {}).get("systems", {}).get(name)
    return {"finding F1": system["f1"] or 0.0, "hallucinating": system["hallucination"]["rate"] or 0.0} if system else {}


def _abstention_bars(trust: dict[str, Any]) -> dict[str, float]:
    """The draft's abstention rates for the trust plot (none without an abstention block; OOD only when measured)."""
    block = trust.get("abstention")
    if not block:
        return {}
    bars = {"abstained\n(in-dist.)": block["in_distribution"]["rate"] or 0.0}
    if (block.get("out_of_distribution") or {}).get("rate") is not None:
        bars["abstained\n(OOD)"] = block["out_of_distribution"]["rate"]
    return bars


def _grouped_bars(ax, rows: list[tuple[str, dict[str, float]]], metrics: list[str], ylabel: str, title: str,
                  colour: dict[str, str]) -> None:
    width = 0.8 / len(rows)
    for i, (name, values) in enumerate(rows):
        ax.bar([m + i * width for m in range(len(metrics))], [values.get(k, 0.0) for k in metrics], width, label=name,
               color=colour.get(name, "grey"))
    ax.set_xticks([m + 0.4 - width / 2 for m in range(len(metrics))], metrics)
    ax.set(ylabel=ylabel, title=title)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2, frameon=False)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    try:
        fig.tight_layout()
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    _write_atomic(path, buffer.getvalue())


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
