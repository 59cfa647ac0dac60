"""Write `medcm eval` results: FILE.json, a markdown table beside it (FILE.md) and PNG plots.

Plots: `FILE.recall.png` (image→report recall@K) and `FILE.draft.png` (draft metrics of the
system and every baseline).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

SYSTEM = "draft (medcm)"
_BASELINE_NAMES = {
    "random": "random pool report",
    "random_same_modality_region": "random report, same modality and region",
    "consensus": "consensus report",
    "nearest_report": "nearest report (whole-report retrieval)",
    "oracle": "oracle report (ceiling of whole-report retrieval)",
}


def output_paths(json_path: str | Path) -> dict[str, Path]:
    """Where each output goes: the JSON itself, `.md` beside it, and the two plots."""
    json_path = Path(json_path)
    stem = json_path.with_suffix("")
    return {"json": json_path, "markdown": stem.with_suffix(".md"),
            "recall_plot": Path(f"{stem}.recall.png"), "draft_plot": Path(f"{stem}.draft.png")}


def write_results(results: dict[str, Any], json_path: str | Path) -> dict[str, Path]:
    """Write the JSON, the markdown table and the plots; each file is replaced atomically.

    Returns:
        The paths written, by kind.
    """
    paths = output_paths(json_path)
    paths["json"].parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(paths["json"], (json.dumps(results, indent=2) + "\n").encode("utf-8"))
    _write_atomic(paths["markdown"], markdown_table(results).encode("utf-8"))
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
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


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
    fig, ax = plt.subplots(figsize=(8, 4), dpi=120)
    width = 0.8 / len(rows)
    for i, (name, values) in enumerate(rows):
        ax.bar([m + i * width for m in range(len(metrics))], [values.get(k, 0.0) for k in metrics], width, label=name)
    ax.set_xticks([m + 0.4 - width / 2 for m in range(len(metrics))], metrics)
    ax.set(ylabel="score", title="draft findings vs baselines")
    ax.legend(fontsize=7)
    _save(fig, path)


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
