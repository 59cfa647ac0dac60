"""Benchmark: medcm recipes on MedPix 2.0, several seeds each, dev-split metrics beside baselines and the oracle.

For every config and seed, trains one run with the README's command and evaluates it with `medcm eval`
(pool: train, queries: dev): once with the checkpoint's anatomy prior and, when that prior is on, once
more without it (`--anatomy-prior off`). Prints the ablation table (mean ± sd over seeds), then the full
tables of the first config. Runs that already hold their eval JSON are reused, so a second call only
prints. Usage:

    .venv/bin/python scripts/bench_medpix.py --data ../shared/data/medpix-2.0 --out runs/medpix-bench \\
        --configs medpix-cpu medpix-cpu-frozen-text medpix-cpu-scratch --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

MEDCM = [sys.executable, "-m", "medcm.cli.commands"]
METRICS = ("BLEU-1", "BLEU-4", "ROUGE-L", "METEOR")
ABLATION = (("region P@1", ("region_P@1",)), ("modality P@1", ("modality_P@1",)),
            ("i→r R@1", ("image_to_report", "R@1")), ("i→r R@10", ("image_to_report", "R@10")),
            ("r→i R@10", ("report_to_image", "R@10")))


def run_seed(data: str, out: Path, seed: int, config: str, weights: list[str]) -> dict[str, dict]:
    """Train and evaluate one seed (skipping what is there); {"prior": eval, "no prior": eval (if the prior is on)}."""
    run = out / config / f"seed{seed}"
    timings = {}
    if not (run / "best").is_dir():
        start = time.perf_counter()
        subprocess.run([*MEDCM, "train", "--data", data, "--format", "medpix", "--split", "train", "--config", config,
                        "--seed", str(seed), "--out", str(run), "--quiet"], check=True)
        timings["train_s"] = time.perf_counter() - start
    saved = json.loads((run / "best" / "config.json").read_text())["config"].get("anatomy_prior") or {}
    prior_on = saved.get("modality_weight", 0) > 0 or saved.get("region_weight", 0) > 0
    results = {}
    for label, name, extra in (("prior", "eval-dev.json", weights),
                               ("no prior", "eval-dev-noprior.json", ["--anatomy-prior", "off"])):
        if label == "no prior" and not prior_on:
            continue
        path = run / name
        if not path.is_file():
            start = time.perf_counter()
            subprocess.run([*MEDCM, "eval", "--checkpoint", str(run), "--pool-data", data, "--pool-split", "train",
                            "--query-data", data, "--query-split", "dev", "--out", str(path), "--quiet", *extra], check=True)
            timings[f"eval_s ({label})"] = time.perf_counter() - start
        results[label] = {**json.loads(path.read_text()), "timings": timings}
    return results


def mean_sd(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def _value(result: dict, path: tuple[str, ...]) -> float | None:
    value = result["retrieval"]
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def ablation_table(rows: dict[str, list[dict]]) -> str:
    """One row per (config, prior): retrieval and draft metrics, mean ± sd over seeds; then baselines and oracle."""
    heads = [name for name, _ in ABLATION] + ["BLEU-4", "ROUGE-L"]
    lines = ["| variant | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
    for label, runs in rows.items():
        cells = [mean_sd([_value(r, path) for r in runs]) for _, path in ABLATION]
        cells += [mean_sd([r["draft"].get(m) for r in runs]) for m in ("BLEU-4", "ROUGE-L")]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    first = next(iter(rows.values()))
    for name in first[0]["baselines"]:
        cells = ["–"] * len(ABLATION) + [mean_sd([r["baselines"][name].get(m) for r in first]) for m in ("BLEU-4", "ROUGE-L")]
        lines.append(f"| baseline: {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def full_table(runs: list[dict]) -> str:
    """Markdown: retrieval, then draft vs every baseline, then the share of the random→oracle gap closed."""
    lines = ["| retrieval (dev, 67 cases) | mean ± sd |", "|---|---|"]
    for direction in ("image_to_report", "report_to_image"):
        for key in ("R@1", "R@5", "R@10", "median_rank"):
            lines.append(f"| {direction} {key} | {mean_sd([r['retrieval'][direction][key] for r in runs])} |")
    for key in ("region_P@1", "region_P@5", "modality_P@1"):
        lines.append(f"| image→image {key} | {mean_sd([r['retrieval'][key] for r in runs])} |")
    metrics = [m for m in METRICS if m in runs[0]["draft"]]
    lines += ["", "| system | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    rows = [("draft (medcm, consensus preset)", [r["draft"] for r in runs])]
    rows += [(name, [r["baselines"][name] for r in runs]) for name in runs[0]["baselines"]]
    for name, values in rows:
        lines.append(f"| {name} | " + " | ".join(mean_sd([v.get(m) for v in values]) for m in metrics) + " |")
    lines += ["", "| share of the random → oracle gap closed | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|",
              "| draft | " + " | ".join(mean_sd([r["gap_closed"].get(m) for r in runs]) for m in metrics) + " |"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the MedPix 2.0 folder")
    parser.add_argument("--out", required=True, help="folder for one run per config and seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--configs", nargs="+", default=["medpix-cpu"], help="named configs to compare")
    parser.add_argument("--modality-weight", type=float, help="evaluate with this prior weight, not the checkpoint's")
    parser.add_argument("--region-weight", type=float, help="evaluate with this prior weight, not the checkpoint's")
    args = parser.parse_args()
    weights = [arg for flag, value in (("--modality-weight", args.modality_weight), ("--region-weight", args.region_weight))
               if value is not None for arg in (flag, str(value))]
    out = Path(args.out)
    rows: dict[str, list[dict]] = {}
    for config in args.configs:
        for seed in args.seeds:
            results = run_seed(args.data, out, seed, config, weights)
            for label, result in results.items():
                rows.setdefault(f"{config} ({label})" if len(results) > 1 else config, []).append(result)
                print(f"{config} seed {seed} {label}: {result['timings'] or 'reused'}", flush=True)
    print(ablation_table(rows))
    print()
    print(full_table(next(iter(rows.values()))))


if __name__ == "__main__":
    main()
