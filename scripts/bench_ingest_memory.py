"""Peak memory of ingesting one upload of many legitimate images, each run in a fresh process (issue 18, item 1).

    .venv/bin/python scripts/bench_ingest_memory.py [--studies 6] [--images 40] [--size 1024] [--repo DIR ...]

Writes an upload folder of `studies` studies of `images` 16-bit `size` x `size` images each, then ingests
it with de-identification on and no model (`Engine(store, deid=...).ingest`) in a new Python process per
repository given (default: this one; pass an older checkout with `--repo` to compare) and prints a
markdown table: images, decoded size as float32, wall seconds and the process's peak RSS. A baseline
row is a process that only imports medcm.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parents[1]

INGEST = """
import re, sys, warnings
warnings.simplefilter("ignore")
sys.path.insert(0, sys.argv[1])
from db.store import CaseStore
from medcm.dicom.deid import DeidConfig
from medcm.engine.facade import Engine
if sys.argv[2] != "-":
    store = CaseStore("sqlite:///" + sys.argv[3] + "/cases.db")
    result = Engine(store, deid=DeidConfig(b"0123456789abcdef"), files_dir=sys.argv[3] + "/files").ingest([sys.argv[2]])
    print("stored", result.added_instances, "errors", len(result.errors))
# VmHWM: this process's peak resident set (kB)
print(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
"""


def _write_upload(root: Path, studies: int, images: int, size: int) -> None:
    sys.path.insert(0, str(HERE))
    from medcm.dicom.write import write_image

    rng = np.random.default_rng(0)
    for s in range(studies):
        study, series = f"1.2.826.0.1.3680043.8.498.{s + 1}", f"1.2.826.0.1.3680043.8.498.{s + 1}.1"
        for i in range(images):
            write_image(root / f"study{s}" / f"{i:04d}.dcm", rng.random((size, size)), modality="CT",
                        study_uid=study, series_uid=series)


def _run(repo: Path, upload: Path | None, work: Path) -> tuple[str, float, float]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", INGEST, str(repo), str(upload) if upload else "-", str(work)],
                          capture_output=True, text=True, check=True)
    lines = done.stdout.split()
    return " ".join(lines[:-1]), time.perf_counter() - start, int(lines[-1]) / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=6)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repo", type=Path, action="append", help="checkout to import medcm from (repeatable)")
    args = parser.parse_args()
    repos = args.repo or [HERE]
    with tempfile.TemporaryDirectory() as tmp:
        upload = Path(tmp) / "upload"
        _write_upload(upload, args.studies, args.images, args.size)
        n = args.studies * args.images
        decoded = n * args.size**2 * 4 / 2**20
        print(f"upload: {n} images of {args.size} x {args.size} ({decoded:,.0f} MiB as float32)\n")
        print("| medcm | outcome | wall s | peak RSS MiB |\n|---|---|---:|---:|")
        for repo in repos:
            outcome, wall, peak = _run(repo, None, Path(tmp))
            print(f"| {repo.name} (imports only) | - | {wall:.1f} | {peak:,.0f} |", flush=True)
            work = Path(tmp) / f"store-{repo.name}"
            work.mkdir()
            outcome, wall, peak = _run(repo, upload, work)
            print(f"| {repo.name} | {outcome} | {wall:.1f} | {peak:,.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
