"""Benchmark: the `medpix-cpu` recipe on MedPix 2.0, several seeds, dev-split metrics beside baselines.

Trains one run per seed with the README's command, evaluates each with `medcm eval` (pool: train,
queries: dev) and prints a markdown table of mean ± sd over the seeds. Runs that already hold an
`eval-dev.json` are reused, so `--table-only` re-prints the table. Usage:

    .venv/bin/python scripts/bench_medpix.py --data ../shared/data/medpix-2.0 --out runs/medpix-bench --seeds 0 1 2
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


def run_seed(data: str, out: Path, seed: int, config: str) -> dict:
    """Train and evaluate one seed (skipping what is already there); returns the eval JSON plus timings."""
    run = out / f"seed{seed}"
    result_path = run / "eval-dev.json"
    timings = {}
    if not (run / "best").is_dir():
        start = time.perf_counter()
        subprocess.run([*MEDCM, "train", "--data", data, "--format", "medpix", "--split", "train", "--config", config,
                        "--seed", str(seed), "--out", str(run), "--quiet"], check=True)
        timings["train_s"] = time.perf_counter() - start
    if not result_path.is_file():
        start = time.perf_counter()
        subprocess.run([*MEDCM, "eval", "--checkpoint", str(run), "--pool-data", data, "--pool-split", "train",
                        "--query-data", data, "--query-split", "dev", "--out", str(result_path), "--quiet"], check=True)
        timings["eval_s"] = time.perf_counter() - start
    results = json.loads(result_path.read_text())
    return {**results, "timings": timings}


def mean_sd(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def table(runs: list[dict]) -> str:
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
    parser.add_argument("--out", required=True, help="folder for one run per seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--config", default="medpix-cpu")
    args = parser.parse_args()
    out = Path(args.out)
    runs = [run_seed(args.data, out, seed, args.config) for seed in args.seeds]
    for seed, run in zip(args.seeds, runs):
        print(f"seed {seed}: {run['timings'] or 'reused (trained and evaluated earlier)'}")
    print(table(runs))


if __name__ == "__main__":
    main()
