"""Benchmark: retrieval quality and CPU speed of the volume encoders, "3d" vs "2.5d" (issue 7, point 2).

On the synthetic chest-CT set (`medcm.data.synthetic_ct`: nodule / effusion / rib fracture / normal,
side and level in the report), each encoder's image side is trained with InfoNCE against the FROZEN
text tower of a `cpu-small` `DualEncoder` (each report embedded once, under no_grad, through the
transformer and the text projection as initialised); only the image side and the logit scale learn.

- "3d": `VolumeEncoder3D` (MONAI 3D ResNet10) on `[1, depth3d, size, size]`;
- "2.5d": `SliceAttentionEncoder` around the DualEncoder's own 2D tower (cpu-small: ResNet18),
  `n_slices` evenly spaced slices of `size` px, gated attention pooling;
- "middle slice 2D": the same 2D tower on the middle slice only (the baseline a volume encoder must beat).

The series are written as DICOM, read back with `medcm.dicom.series.read_volumes` and prepared once with
`prepare_volume` (CT window 40/400, `medcm.model.preprocess.normalize`); tensors stay in memory. No
augmentation. Reported on the dev split: image→report R@1/5/10 (rank of the case's own report among
the distinct dev reports; identical texts count as one), finding P@1 (the nearest dev report has the
case's finding class), P@1 per finding, train seconds, and inference volumes/s (eval forward on
prepared tensors, batch 16) plus preparation ms per volume. With the defaults one seed took 10.2 min
wall on 2 shared AMD EPYC cores (about 285 s of training each for 3d and 2.5d, 9 s for the middle
slice); `--seeds 0 1 2` triples that. Usage:

    .venv/bin/python scripts/bench_volume_retrieval.py [--seeds 0 1 2] [--epochs 8] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medcm.model.align import DualEncoder, infonce_loss, positive_mask
from medcm.config import get_config
from medcm.model.encoders.volume import VolumeEncoderConfig, build_volume_encoder, prepare_volume
from medcm.model.preprocess import normalize
from medcm.runtime import cpu_name
from medcm.data.synthetic_ct import FINDINGS, write_volume_dataset
from medcm.dicom.series import read_volumes

ENCODERS = ("3d", "2.5d", "middle slice 2D")
METRICS = ("R@1", "R@5", "R@10", "finding P@1", "train s", "infer vol/s", "prepare ms/vol")


@dataclasses.dataclass(frozen=True)
class Case:
    voxels: np.ndarray  # [D, H, W] HU
    spacing: tuple[float, float, float]
    report: str
    finding: str
    split: str


def load_cases(args: argparse.Namespace, seed: int, folder: Path) -> list[Case]:
    """Write the synthetic set for `seed` and read every series back through `medcm.dicom.volume`."""
    manifest = write_volume_dataset(folder, args.train, args.dev, seed=seed, depth=args.depth, size=args.size)
    cases = []
    for line in map(json.loads, manifest.read_text(encoding="utf-8").splitlines()):
        volumes, errors = read_volumes(manifest.parent / line["case_id"])
        if errors or len(volumes) != 1:
            raise RuntimeError(f"{line['case_id']}: expected one volume, got {len(volumes)} and errors {errors}")
        volume = volumes[0]
        cases.append(Case(volume.voxels, volume.spacing, line["report"], line["meta"]["finding"], line["split"]))
    return cases


def volume_config(name: str, args: argparse.Namespace) -> VolumeEncoderConfig:
    if name == "3d":
        return VolumeEncoderConfig(kind="3d", arch_3d="resnet10", size=args.size, depth=args.depth3d)
    return VolumeEncoderConfig(kind="2.5d", size=args.size, n_slices=args.n_slices if name == "2.5d" else 1)


def prepare(name: str, cases: list[Case], config: VolumeEncoderConfig) -> tuple[torch.Tensor, float]:
    """Encoder inputs for every case (`[N, ...]`, normalised) and the mean preparation ms per volume."""
    preprocess = get_config("cpu-small").preprocess
    start, tensors = time.perf_counter(), []
    for case in cases:
        if name == "middle slice 2D":  # the slice `medcm.model.preprocess.select_frame` would pick
            middle = case.voxels.shape[0] // 2
            tensors.append(prepare_volume(case.voxels[middle : middle + 1], case.spacing, "CT", config)[0])
        else:
            tensors.append(prepare_volume(case.voxels, case.spacing, "CT", config))
    milliseconds = 1000 * (time.perf_counter() - start) / len(cases)
    return normalize(torch.stack(tensors), preprocess), milliseconds


def _schedule(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 0: the LR multiplier at `step`."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train(model: nn.Module, dual: DualEncoder, inputs: torch.Tensor, texts: torch.Tensor, reports: list[str],
          args: argparse.Namespace, seed: int) -> float:
    """InfoNCE against fixed text embeddings `[N, E]`; returns the training seconds."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": params, "weight_decay": 0.05},
                                   {"params": [dual.logit_scale], "weight_decay": 0.0}], lr=args.lr)
    steps_per_epoch = math.ceil(len(inputs) / args.batch)
    total = args.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _schedule(s, total, max(1, total // 10)))
    generator = torch.Generator().manual_seed(seed)
    model.train()
    start = time.perf_counter()
    for _ in range(args.epochs):
        order = torch.randperm(len(inputs), generator=generator)
        for i in range(0, len(order), args.batch):
            index = order[i : i + args.batch]
            if len(index) < 2:
                continue
            image = F.normalize(model(inputs[index]), dim=-1)
            # identical reports (e.g. two normals in one batch) are both matches, not negatives
            loss = infonce_loss(image, texts[index], dual.scale(), positive_mask([reports[k] for k in index]))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    return time.perf_counter() - start


@torch.no_grad()
def embed(model: nn.Module, inputs: torch.Tensor, batch: int = 16) -> tuple[torch.Tensor, float]:
    """Normalised embeddings `[N, E]` and volumes per second (eval mode, no grad)."""
    model.eval()
    model(inputs[:2])  # warm-up
    start = time.perf_counter()
    out = torch.cat([model(inputs[i : i + batch]) for i in range(0, len(inputs), batch)])
    return F.normalize(out, dim=-1), len(inputs) / (time.perf_counter() - start)


def retrieval(image: torch.Tensor, cases: list[Case], text_of: Callable[[list[str]], torch.Tensor]) -> dict[str, float]:
    """Image→report recall among the distinct dev reports, and finding P@1 (overall and per finding)."""
    reports = list(dict.fromkeys(case.report for case in cases))
    finding_of = {case.report: case.finding for case in cases}
    sims = image @ text_of(reports).t()  # [N, R]
    own = torch.tensor([reports.index(case.report) for case in cases])
    ranks = (sims > sims[torch.arange(len(cases)), own][:, None]).sum(dim=1) + 1
    nearest = sims.argmax(dim=1)
    hits = [finding_of[reports[int(k)]] == case.finding for k, case in zip(nearest, cases)]
    out = {f"R@{k}": float((ranks <= k).float().mean()) for k in (1, 5, 10)}
    out["finding P@1"] = float(np.mean(hits))
    for finding in FINDINGS:
        mine = [hit for hit, case in zip(hits, cases) if case.finding == finding]
        out[f"P@1 {finding}"] = float(np.mean(mine)) if mine else float("nan")
    out["chance R@1"] = 1.0 / len(reports)
    return out


def run_encoder(name: str, cases: list[Case], args: argparse.Namespace, seed: int) -> dict[str, float]:
    config = get_config("cpu-small")
    torch.manual_seed(seed)
    dual = DualEncoder(config.model, image_size=args.size)
    dual.requires_grad_(False)
    dual.logit_scale.requires_grad_(True)
    vconfig = volume_config(name, args)
    if name == "middle slice 2D":
        model: nn.Module = dual.image
    else:
        model = build_volume_encoder(vconfig, dual.image, config.model.embed_dim, config.model.projection)
    model.requires_grad_(True)
    train_cases = [c for c in cases if c.split == "train"]
    dev_cases = [c for c in cases if c.split == "dev"]

    def text_of(reports: list[str]) -> torch.Tensor:
        dual.eval()
        with torch.no_grad():
            return dual.encode_text(reports)

    train_inputs, _ = prepare(name, train_cases, vconfig)
    dev_inputs, prepare_ms = prepare(name, dev_cases, vconfig)
    reports = [c.report for c in train_cases]
    seconds = train(model, dual, train_inputs, text_of(reports), reports, args, seed)
    image, rate = embed(model, dev_inputs)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return {**retrieval(image, dev_cases, text_of), "train s": seconds, "infer vol/s": rate,
            "prepare ms/vol": prepare_ms, "params (M)": params, "input": list(dev_inputs.shape[1:])}


def _cell(values: list[float], digits: int) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(results: dict[str, list[dict]]) -> str:
    metrics = ("R@1", "R@5", "R@10", "finding P@1") + tuple(f"P@1 {f}" for f in FINDINGS)
    head = "| encoder | input per volume | params (M) | " + " | ".join(metrics + METRICS[4:]) + " |"
    lines = [head, "|---|---|---:|" + "---:|" * (len(metrics) + 3)]
    for name, runs in results.items():
        cells = [_cell([r[m] for r in runs], 2) for m in metrics]
        cells += [_cell([r[m] for r in runs], {"train s": 0, "prepare ms/vol": 2}.get(m, 1)) for m in METRICS[4:]]
        shape = "[" + ", ".join(map(str, runs[0]["input"])) + "]"
        lines.append(f"| {name} | {shape} | {runs[0]['params (M)']:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=240, help="training cases")
    parser.add_argument("--dev", type=int, default=60, help="dev cases (retrieval gallery)")
    parser.add_argument("--depth", type=int, default=24, help="slices per synthetic series")
    parser.add_argument("--size", type=int, default=64, help="in-plane pixels, written and encoded")
    parser.add_argument("--depth3d", type=int, default=16, help="resampled depth for the 3d encoder")
    parser.add_argument("--n-slices", type=int, default=8, help="sampled slices for the 2.5d encoder")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="each seed: new data and new initialisation")
    parser.add_argument("--encoders", nargs="+", default=list(ENCODERS), choices=ENCODERS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="save settings, per-seed results and the table as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results: dict[str, list[dict]] = {name: [] for name in args.encoders}
    chance = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix="medcm-volume-bench-") as folder:
            cases = load_cases(args, seed, Path(folder))
        for name in args.encoders:
            results[name].append(run_encoder(name, cases, args, seed))
            chance.append(results[name][-1]["chance R@1"])
            print(f"seed {seed} {name}: " + ", ".join(f"{k} {v:.3g}" for k, v in results[name][-1].items()
                                                      if isinstance(v, float)), flush=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    header = (f"{cpu_name()}, {args.threads} threads, torch {torch.__version__}; {args.train} train / {args.dev} dev "
              f"cases of [{args.depth}, {args.size}, {args.size}], {args.epochs} epochs, batch {args.batch}, lr {args.lr}, "
              f"seeds {args.seeds}; chance R@1 {statistics.mean(chance):.3f}")
    text = table(results)
    print(f"\n{header}\n\n{text}")
    if args.out:
        args.out.write_text(json.dumps({"settings": settings, "header": header, "results": results, "table": text},
                                       indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
