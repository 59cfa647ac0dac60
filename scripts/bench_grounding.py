"""Pointing game of sentence heatmaps on the demo's held-out studies, per finding, against the random baseline.

    # a built demo (`medcm demo --build-only`, or any run trained on a demo archive):
    .venv/bin/python scripts/bench_grounding.py --manifest .medcm-demo/archive/manifest.jsonl \
        --checkpoint .medcm-demo/model --variants occlusion integrated_gradients cosine:1 cam:4

Each variant is METHOD or METHOD:SHIFTS (`medcm.model.grounding.GroundingConfig`). The sentence grounded is the
reference report's FINDINGS sentence that states the drawn finding; a hit is a heatmap maximum within
`--tolerance` pixels of the drawn finding's mask (`medcm.eval.grounding`). "random" is the share of the
image within that tolerance of the finding: a uniformly random point's hit rate.

`--fresh N` also scores N new studies drawn with another seed (`--fresh-seed`), never seen in training
or in choosing the method: a check that what was chosen on the dev studies holds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", required=True, help="a demo archive's manifest.jsonl (with finding masks)")
    parser.add_argument("--checkpoint", required=True, help="a checkpoint or run folder trained on that archive")
    parser.add_argument("--split", default="dev", help="the manifest split to evaluate (default: dev)")
    parser.add_argument("--variants", nargs="+", default=["occlusion", "integrated_gradients"],
                        help="METHOD or METHOD:SHIFTS, e.g. cam:4")
    parser.add_argument("--tolerance", type=int, nargs="+", default=[6], help="pixels around the finding that count")
    parser.add_argument("--fresh", type=int, default=0, help="also score this many newly drawn studies")
    parser.add_argument("--fresh-seed", type=int, default=7, help="their seed (the demo trains on 0, holds out 1)")
    parser.add_argument("--size", type=int, default=192, help="their side in pixels (the demo's: 192)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    import torch

    from medcm.checkpoint import load_checkpoint
    from medcm.data.manifest import read_manifest
    from medcm.eval.grounding import locate_peaks, score_peaks, summarize
    from medcm.model.grounding import GroundingConfig

    torch.set_num_threads(min(2, torch.get_num_threads()))
    checkpoint = load_checkpoint(args.checkpoint, "cpu")
    sets = {args.split: [r for r in read_manifest(args.manifest) if r.split == args.split]}
    if args.fresh:
        import tempfile

        from medcm.data.demo_archive import write_demo_archive

        folder = tempfile.TemporaryDirectory(prefix="fresh-demo-")  # removed when the script ends
        sets[f"fresh(seed {args.fresh_seed})"] = read_manifest(
            write_demo_archive(folder.name, n_train=args.fresh, n_dev=0, seed=args.fresh_seed, size=args.size))
    results = {}
    for (name, records), variant in ((item, v) for item in sets.items() for v in args.variants):
        method, _, shifts = variant.partition(":")
        config = GroundingConfig(method=method, shifts=int(shifts or 1))  # shifts only shape "cosine" and "cam"
        start = time.perf_counter()
        located = locate_peaks(checkpoint, records, config)
        seconds = (time.perf_counter() - start) / max(1, len(located))
        for tolerance in args.tolerance:
            summary = summarize(score_peaks(located, tolerance))
            results[f"{name} {variant}@{tolerance}px"] = {**summary, "seconds_per_study": seconds}
            _print(f"{name}: {variant}, tolerance {tolerance} px ({seconds:.2f} s/study)", summary)
    if args.json:
        Path(args.json).write_text(json.dumps({"checkpoint": str(checkpoint.path), "model_id": checkpoint.model_id,
                                               "results": results}, indent=2), encoding="utf-8")
    return 0


def _print(title: str, summary: dict) -> None:
    print(f"\n{title}\n{'finding':<18} {'n':>3} {'pointing':>9} {'random':>7} {'median px off':>14}")
    for name, row in [*summary["per_finding"].items(), *summary["per_modality"].items(), ("all", summary["overall"])]:
        hits, chance, off = (row.get(k, float("nan")) for k in ("pointing_game", "random", "median_distance_px"))
        print(f"{name:<18} {row['n']:>3} {hits:>9.3f} {chance:>7.3f} {off:>14.1f}")


if __name__ == "__main__":
    raise SystemExit(main())
