"""Benchmark: wall time from an upload to its draft, as the review app runs it (upload → similar cases → draft).

A fresh SQLite store (de-identification on, as `medcm serve` runs it) is filled with a pool of
synthetic radiographs and CT series with reports, using a tiny checkpoint trained here on the
synthetic radiographs. Each repeat then uploads a study the store has not seen (a few CT slices, or
one radiograph) and calls the app's handlers in the order the page chains them:
`Handlers.on_upload` → `on_similar` → `on_draft`. The first upload of each kind warms caches and is
not counted; the median of the rest is reported.

The script runs against both code layouts, the flat `medcm/` before the subpackages and the current
one, so one sitting measures before and after on the same machine, data and checkpoint:

    git worktree add /tmp/before ae23d5b
    .venv/bin/python scripts/bench_upload.py --label after --json /tmp/upload-after.json
    PYTHONPATH=/tmp/before .venv/bin/python scripts/bench_upload.py --label before --json /tmp/upload-before.json
    .venv/bin/python scripts/bench_upload.py --compare /tmp/upload-before.json /tmp/upload-after.json

The work folder (default /tmp/medcm-bench-upload) keeps the data and the checkpoint, so the second
run trains nothing and both runs use the same weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _library() -> SimpleNamespace:
    """The names the benchmark needs, from the subpackage layout or the flat one before it."""
    try:
        from medcm.data.manifest import read_manifest, split_records
        from medcm.data.synthetic_ct import write_volume_dataset
        from medcm.data.synthetic_radiographs import write_dataset
        from medcm.dicom.deid import DeidConfig
        from medcm.engine.facade import Engine
        from medcm.model.train import train
        layout = "subpackages"
    except ImportError:  # the flat layout (commit ae23d5b and before)
        from medcm.data import read_manifest, split_records
        from medcm.deid import DeidConfig
        from medcm.engine import Engine
        from medcm.synthetic import write_dataset
        from medcm.synthetic_volume import write_volume_dataset
        from medcm.train import train
        layout = "flat"
    return SimpleNamespace(read_manifest=read_manifest, split_records=split_records, DeidConfig=DeidConfig,
                           Engine=Engine, write_dataset=write_dataset, write_volume_dataset=write_volume_dataset,
                           train=train, layout=layout)


def _data(lib: SimpleNamespace, work: Path, uploads: int, slices: int, size: int) -> tuple[Path, Path]:
    """Synthetic radiographs (4 per class, 64 px) and CT series (`slices` × `size` px), written once."""
    radiographs, ct = work / f"radiographs-{uploads}", work / f"ct-{slices}x{size}-{uploads}"
    if not (radiographs / "manifest.jsonl").is_file():
        lib.write_dataset(radiographs, n_train=4 * 33, n_dev=uploads, image_size=64)
    if not (ct / "manifest.jsonl").is_file():
        lib.write_volume_dataset(ct, n_train=6, n_dev=uploads, depth=slices, size=size)
    return radiographs, ct


def _checkpoint(lib: SimpleNamespace, work: Path, radiographs: Path) -> Path:
    """A cpu-small checkpoint (ResNet-10 trunk, 64 px, 64-d space) trained for 3 epochs, trained once."""
    run = work / "run"
    if (run / "best").is_dir():
        return run
    from medcm.config import get_config

    base = get_config("cpu-small")
    config = dataclasses.replace(
        base, name="bench-upload",
        model=dataclasses.replace(base.model, image=dataclasses.replace(base.model.image, arch="resnet10"),
                                  embed_dim=64),
        preprocess=dataclasses.replace(base.preprocess, image_size=64),
        train=dataclasses.replace(base.train, epochs=3, batch_size=32, warmup_steps=5))
    train_records, dev_records = lib.split_records(lib.read_manifest(radiographs / "manifest.jsonl"), "train", "dev",
                                                   0.0, 0)
    lib.train(config, train_records, dev_records, run, device="cpu", progress=False)
    return run


def _upload_files(case: Path, into: Path) -> list[str]:
    """A case's DICOM files copied alone (no report.txt beside them: an upload carries no report)."""
    into.mkdir(parents=True)
    for file in sorted(case.glob("*.dcm")):
        shutil.copy(file, into / file.name)
    return [str(path) for path in sorted(into.glob("*.dcm"))]


def _measure(lib: SimpleNamespace, args: argparse.Namespace) -> dict:
    from db.store import CaseStore
    from ui.handlers import Handlers

    work = Path(args.work)
    radiographs, ct = _data(lib, work, args.uploads, args.slices, args.size)
    checkpoint = _checkpoint(lib, work, radiographs)
    root = Path(tempfile.mkdtemp(prefix=f"{args.label}-", dir=work))
    store = CaseStore(f"sqlite:///{root / 'cases.db'}")
    engine = lib.Engine(store, checkpoint=checkpoint, device="cpu", deid=lib.DeidConfig(b"bench-site-secret-0123"))
    pool = [radiographs / "cases" / f"train-{i:05d}" for i in range(4 * 33)]
    pool += [ct / f"case-train-{i:05d}" for i in range(6)]
    stored = engine.ingest(pool, user="bench")
    store.add_user("bench", "clinician", "bench-password")
    handlers, request = Handlers(engine, store, root / "uploads"), SimpleNamespace(username="bench")
    kinds = {"ct": lambda i: ct / f"case-dev-{i:05d}", "dx": lambda i: radiographs / "cases" / f"dev-{i:05d}"}
    import medcm

    result = {"label": args.label, "layout": lib.layout, "medcm": str(Path(medcm.__file__).parent),
              "pool_studies": len(stored.studies), "slices": args.slices,
              "size": args.size, "threads": torch_threads(), "seconds": {}}
    for kind, case in kinds.items():
        times = []
        for i in range(args.uploads):
            files = _upload_files(case(i), root / "incoming" / f"{kind}-{i}")
            start = time.perf_counter()
            study = handlers.on_upload(files, "default", request)[0]
            handlers.on_similar(study, request)
            sentences = handlers.on_draft(study, request)[0]
            times.append(time.perf_counter() - start)
            if not sentences:
                raise RuntimeError(f"{kind} upload {i}: the draft is empty; expected sentences from the pool")
        result["seconds"][kind] = times
    store.close()
    shutil.rmtree(root, ignore_errors=True)
    return result


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _summary(result: dict) -> str:
    lines = [f"{result['label']} ({result['layout']} layout at {result['medcm']}, {result['threads']} torch thread(s), "
             f"{result['pool_studies']} studies in the pool)"]
    for kind, times in result["seconds"].items():
        what = f"{result['slices']} CT slices of {result['size']} px" if kind == "ct" else "one radiograph"
        lines.append(f"  {kind}: upload → similar cases → draft, {what}: median {statistics.median(times[1:]):.3f} s "
                     f"over {len(times) - 1} uploads (first, {times[0]:.3f} s, not counted)")
    return "\n".join(lines)


def _compare(before_path: str, after_path: str) -> None:
    before, after = (json.loads(Path(p).read_text(encoding="utf-8")) for p in (before_path, after_path))
    for kind in before["seconds"]:
        b, a = (statistics.median(r["seconds"][kind][1:]) for r in (before, after))
        print(f"{kind}: before {b:.3f} s, after {a:.3f} s: after takes {a / b:.2f}x the time ({b / a:.2f}x faster)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", default="run", help="name of this measurement (e.g. before, after)")
    parser.add_argument("--work", default="/tmp/medcm-bench-upload", help="folder for data, checkpoint and stores")
    parser.add_argument("--uploads", type=int, default=6, help="uploads of each kind; the first is not counted")
    parser.add_argument("--slices", type=int, default=16, help="CT slices per uploaded study")
    parser.add_argument("--size", type=int, default=128, help="CT slice size in pixels")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    parser.add_argument("--json", help="also write the result as JSON to this file")
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="print the ratio of two JSON results")
    args = parser.parse_args()
    if args.compare:
        _compare(*args.compare)
        return
    if args.uploads < 2:
        parser.error(f"--uploads: got {args.uploads}, expected at least 2 (the first is not counted)")
    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # gr.Warning outside a page is a UserWarning
    lib = _library()
    result = _measure(lib, args)
    print(_summary(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
