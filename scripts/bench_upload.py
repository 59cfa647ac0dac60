"""Benchmark: wall time from an upload to its draft, as the review app runs it (upload → similar cases → draft).

A fresh SQLite store (de-identification on, as `medcm serve` runs it) is filled with a pool of
synthetic radiographs and CT series with reports, using a tiny checkpoint trained here on the
synthetic radiographs. Each repeat then uploads a study the store has not seen (a few CT slices, or
one radiograph) and calls the app's handlers in the order the page chains them:
`Handlers.on_upload` → `on_similar` → `on_draft`. The first upload of each kind warms caches and is
not counted; the median of the rest is reported.

The script runs against both code layouts, the flat `medcm/` before the subpackages and the current
one. `--before DIR` measures both in one sitting on the same machine, data and checkpoint: it runs
the current code and the code in DIR (put first on PYTHONPATH) alternately, `--rounds` times each,
and compares the medians of all their uploads (wall time, and the process's CPU time, which a busy
shared machine disturbs less):

    git worktree add --detach /tmp/before ae23d5b
    .venv/bin/python scripts/bench_upload.py --before /tmp/before

One run of one layout: `[PYTHONPATH=DIR] .venv/bin/python scripts/bench_upload.py --label NAME`.
The work folder (default /tmp/medcm-bench-upload) keeps the data and the checkpoint, so only the
first run trains, and every run uses the same weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402  (after the environment: gradio and transformers read it at import)


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
    import medcm
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
    result = {"label": args.label, "layout": lib.layout, "medcm": str(Path(medcm.__file__).parent),
              "pool_studies": len(stored.studies), "slices": args.slices, "size": args.size,
              "threads": torch.get_num_threads(), "uploads": {}}
    for kind, case in kinds.items():
        result["uploads"][kind] = [_upload(handlers, request, _upload_files(case(i), root / "incoming" / f"{kind}-{i}"))
                                   for i in range(args.uploads)]
    store.close()
    shutil.rmtree(root, ignore_errors=True)
    return result


def _upload(handlers, request, files: list[str]) -> dict[str, float]:
    """One upload as the page chains it: wall seconds of each step, and the process's CPU seconds in all."""
    times, cpu, start = {}, time.process_time(), time.perf_counter()
    study = handlers.on_upload(files, "default", request)[0]
    times["upload"] = time.perf_counter() - start
    handlers.on_similar(study, request)
    times["similar"] = time.perf_counter() - start - times["upload"]
    sentences = handlers.on_draft(study, request)[0]
    times["total"] = time.perf_counter() - start
    times["draft"] = times["total"] - times["upload"] - times["similar"]
    times["cpu"] = time.process_time() - cpu
    if not sentences:
        raise RuntimeError(f"upload of {files[0]}: the draft is empty; expected sentences from the pool")
    return times


def _median(runs: list[dict], kind: str, key: str) -> float:
    """Median of `key` over the uploads of `kind` in `runs`, each run's first upload (warm-up) left out."""
    return statistics.median(upload[key] for run in runs for upload in run["uploads"][kind][1:])


def _summary(runs: list[dict]) -> str:
    first = runs[0]
    lines = [f"{first['label']} ({first['layout']} layout at {first['medcm']}, {first['threads']} torch thread(s), "
             f"{first['pool_studies']} studies in the pool, {len(runs)} run(s))"]
    for kind in first["uploads"]:
        what = f"{first['slices']} CT slices of {first['size']} px" if kind == "ct" else "one radiograph"
        steps = ", ".join(f"{key} {_median(runs, kind, key):.3f}" for key in ("upload", "similar", "draft"))
        lines.append(f"  {kind} ({what}): upload → draft median {_median(runs, kind, 'total'):.3f} s wall "
                     f"({steps}), {_median(runs, kind, 'cpu'):.3f} s CPU")
    return "\n".join(lines)


def _compare(before: list[dict], after: list[dict]) -> str:
    lines = []
    for kind in before[0]["uploads"]:
        for key, what in (("total", "wall"), ("cpu", "CPU")):
            b, a = _median(before, kind, key), _median(after, kind, key)
            lines.append(f"{kind} {what}: before {b:.3f} s, after {a:.3f} s: before/after = {b / a:.2f}")
    return "\n".join(lines)


def _sitting(args: argparse.Namespace) -> None:
    """Alternate runs of the current code and of the code at `args.before`, then compare the pooled uploads."""
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as folder:
        for round_ in range(args.rounds):
            for label in ("after", "before"):
                out = Path(folder) / f"{label}-{round_}.json"
                env = dict(os.environ)
                if label == "before":
                    env["PYTHONPATH"] = os.pathsep.join(filter(None, [args.before, env.get("PYTHONPATH")]))
                command = [sys.executable, __file__, "--label", label, "--json", str(out), "--work", args.work,
                           "--uploads", str(args.uploads), "--slices", str(args.slices), "--size", str(args.size),
                           "--threads", str(args.threads)]
                subprocess.run(command, env=env, check=True, cwd=Path(__file__).resolve().parent)
                runs[label] += json.loads(out.read_text(encoding="utf-8"))
    for label in ("before", "after"):
        print(_summary(runs[label]))
    print(_compare(runs["before"], runs["after"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", default="run", help="name of this measurement (e.g. before, after)")
    parser.add_argument("--work", default="/tmp/medcm-bench-upload", help="folder for data, checkpoint and stores")
    parser.add_argument("--uploads", type=int, default=6, help="uploads of each kind per run; the first is not counted")
    parser.add_argument("--slices", type=int, default=16, help="CT slices per uploaded study")
    parser.add_argument("--size", type=int, default=128, help="CT slice size in pixels")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    parser.add_argument("--json", help="also write the result (a list of one run) as JSON to this file")
    parser.add_argument("--before", help="a checkout of the code before (e.g. a worktree of ae23d5b): run it and "
                                         "the current code alternately, --rounds times each, and compare")
    parser.add_argument("--rounds", type=int, default=2, help="with --before: runs of each (default: 2)")
    args = parser.parse_args()
    if args.uploads < 2:
        parser.error(f"--uploads: got {args.uploads}, expected at least 2 (the first is not counted)")
    if args.before:
        _sitting(args)
        return
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # gr.Warning outside a page is a UserWarning
    runs = [_measure(_library(), args)]
    print(_summary(runs))
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
