"""Benchmark: steady-state training throughput (pairs/s) of each named config, on synthetic data.

For each config (default: cpu-small, medpix-cpu, gpu-default), at the config's own image size and
batch size (`--batch-size` overrides it for all), three measurements, each a warm-up of `--warmup`
steps and then the median (min–max) over `--repeats` timed chunks of `--steps` steps:

- "full step": `medcm.model.train._train_epoch` (the real loop: augmentation, normalisation, forward of
  both towers, InfoNCE (+ the multi-task head), backward, clipping, AdamW) on synthetic 2D pairs
  (`medcm.data.synthetic_radiographs.write_dataset`), each chunk one "epoch" of exactly `steps` batches;
- "image tower": forward+backward of the 2D image encoder alone, InfoNCE against cached text
  vectors, AdamW on the tower; its FLOPs counted once (FlopCounterMode), so FLOP/s are reported;
- "volume encoder" (configs with `model.volume`): the same for the volume encoder on synthetic CT
  series (`medcm.data.synthetic_ct`), `--volume-batch` volumes per step; pairs = volumes.

medpix-cpu's multi-task head is trained on the synthetic class labels (same cost as its region head).
Data are decoded to memory first (as `medcm train` does) and DataLoader workers are `--workers`
(default 0: each timed chunk builds a new loader, and worker start-up would be timed with it).
On CUDA everything runs under bf16 autocast with the config's channels_last, as training does,
and the tower FLOP/s are also given as a share of `--peak-tflops`. On a CPU gpu-default is slow
(DenseNet121 at 256 px, the text transformer trained too): there it runs at batch 16 (not its 128),
1 warm-up step and chunks of 1 step, each unless `--batch-size`, `--warmup` or `--steps` is given. Usage:

    .venv/bin/python scripts/bench_train_configs.py [--configs cpu-small medpix-cpu gpu-default]
        [--steps 5] [--repeats 3] [--warmup 2] [--batch-size N] [--volume-batch 4] [--peak-tflops 989]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from medcm.model.align import AlignmentLoss, DualEncoder, infonce_loss
from medcm.config import MedcmConfig, get_config, validate_config, with_overrides
from medcm.data.manifest import PairedImageDataset, read_manifest, records_to_pairs
from medcm.model.distributed import DistributedContext
from medcm.model.preprocess import normalize
from medcm.runtime import cpu_name, seed_everything
from medcm.data.synthetic_radiographs import write_dataset
from medcm.data.synthetic_ct import write_volume_dataset
from medcm.runtime import autocast as _autocast
from medcm.model.train import _memory_format, _speed_options, _train_epoch, build_optimizer, with_aux_classes

CONFIGS = ("cpu-small", "medpix-cpu", "gpu-default")
# On a CPU, unless given: (warm-up steps, steps per chunk, batch). DenseNet121 at 256 px costs ~21 GFLOP per
# image forward+backward: batch 128 would take minutes per step on 2 cores and ~20 GB of activations.
SLOW_ON_CPU = {"gpu-default": (1, 1, 16)}




@dataclasses.dataclass(frozen=True)
class Result:
    """One measured row: pairs/s of each timed chunk, and the FLOPs of one step where counted."""

    config: str
    part: str
    encoder: str
    batch: int
    steps: int
    rates: list[float]
    text: str
    flops_per_step: float | None = None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_rates(chunk: Callable[[int], None], pairs: int, repeats: int, device: torch.device) -> list[float]:
    """Pairs/s of each of `repeats` calls of `chunk(repeat)`, each processing `pairs` pairs."""
    rates = []
    for repeat in range(repeats):
        _sync(device)
        start = time.perf_counter()
        chunk(repeat)
        _sync(device)
        rates.append(pairs / (time.perf_counter() - start))
    return rates


def bench_full_step(config: MedcmConfig, pairs: list, batch: int, warmup: int, steps: int, repeats: int,
                    device: torch.device) -> list[float]:
    """Pairs/s of `medcm.model.train._train_epoch` over chunks of exactly `steps` batches of 2D pairs."""
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, volume=None))  # 2D data only
    model = DualEncoder(config.model, config.preprocess.image_size).to(device)
    _speed_options(model, config)
    warm_set = PairedImageDataset(pairs[:batch * warmup], config.preprocess) if warmup else None
    timed_set = PairedImageDataset(pairs[:batch * steps], config.preprocess)
    model.text.warm_cache([p.text for p in pairs])  # no-op when the text tower trains
    optimizer = build_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    head = config.model.aux_head
    loss_fn = AlignmentLoss(config.model.losses, head.weight if head else 0.0, head.multi_label if head else False)
    ctx = DistributedContext()  # one process, no DDP

    def epoch(dataset: PairedImageDataset, index: int) -> None:
        _train_epoch(model, dataset, loss_fn, optimizer, scheduler, config, device, index, batch, False, ctx)

    if warm_set is not None:
        epoch(warm_set, 0)
    return _timed_rates(lambda repeat: epoch(timed_set, repeat + 1), batch * steps, repeats, device)


def bench_tower(encoder: torch.nn.Module, inputs: torch.Tensor, text: torch.Tensor, warmup: int, steps: int,
                repeats: int, device: torch.device) -> tuple[list[float], float]:
    """Pairs/s of forward+backward of `encoder` alone (InfoNCE against fixed text vectors, AdamW step),
    and the FLOPs of one step (counted by FlopCounterMode on one extra, untimed step)."""
    optimizer = torch.optim.AdamW([p for p in encoder.parameters() if p.requires_grad], lr=1e-4)
    scale = torch.tensor(1 / 0.07, device=device)
    encoder.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device):
            emb = encoder(inputs)
        infonce_loss(F.normalize(emb.float(), dim=-1), text, scale).backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    with FlopCounterMode(display=False) as counter:
        step()
    rates = _timed_rates(lambda repeat: [step() for _ in range(steps)], len(inputs) * steps, repeats, device)
    return rates, float(counter.get_total_flops())


@torch.no_grad()
def _text_vectors(model: DualEncoder, texts: list[str]) -> torch.Tensor:
    return F.normalize(model.encode_text(texts).float(), dim=-1).detach()


def bench_config(name: str, args: argparse.Namespace, device: torch.device, tmp: Path) -> list[Result]:
    config = get_config(name)
    slow = SLOW_ON_CPU.get(name) if device.type == "cpu" else None
    batch = args.batch_size or (slow[2] if slow else config.train.batch_size)
    config = with_overrides(config, batch_size=batch, num_workers=args.workers)
    warmup = slow[0] if slow and not args.warmup_given else args.warmup
    steps = slow[1] if slow and not args.steps_given else args.steps
    size = config.preprocess.image_size
    manifest = write_dataset(tmp / f"{name}-2d", n_train=batch * max(steps, warmup, 1), n_dev=0, image_size=size)
    head = config.model.aux_head
    pairs = records_to_pairs(read_manifest(manifest), "label" if head else None)  # synthetic classes stand in
    config = with_aux_classes(config, [p.label for p in pairs])
    validate_config(config)
    text = "yes (cached)" if config.model.text.freeze else "no (trained)"
    arch = config.model.image.arch
    own = "" if batch == get_config(name).train.batch_size else f" (the config's own: {get_config(name).train.batch_size})"
    print(f"{name}: batch {batch}{own}, {warmup} warm-up step(s), {repeats_text(args.repeats, steps)}", flush=True)

    rows = []
    for accum in args.accum_steps:  # gradient accumulation: the same batch in `accum` micro-batches
        seed_everything(0)
        part = "full step" if accum == 1 else f"full step, accum_steps {accum}"
        accumulated = with_overrides(config, accum_steps=accum)
        validate_config(accumulated)
        rows.append(Result(name, part, f"{arch}, {size} px", batch, steps,
                           bench_full_step(accumulated, pairs, batch, warmup, steps, args.repeats, device), text))

    seed_everything(0)
    model = DualEncoder(config.model, size).to(device)
    _speed_options(model, config)
    dataset = PairedImageDataset(pairs[:batch], config.preprocess)
    images = _memory_format(normalize(dataset.images.float().to(device) / 255, config.preprocess), config)
    cached = _text_vectors(model, [p.text for p in dataset.pairs])
    rates, flops = bench_tower(model.image, images, cached, warmup, steps, args.repeats, device)
    rows.append(Result(name, "image tower", f"{arch}, {size} px", batch, steps, rates, "n/a (fixed vectors)", flops))

    volume = config.model.volume
    if volume is not None:
        vbatch = args.volume_batch
        manifest = write_volume_dataset(tmp / f"{name}-ct", n_train=vbatch, n_dev=0, depth=volume.depth, size=volume.size)
        vset = PairedImageDataset(records_to_pairs(read_manifest(manifest), volumes=True), config.preprocess,
                                  volume=volume)
        if vset.volumes is None or len(vset.volumes) != vbatch:
            raise RuntimeError(f"{name}: expected {vbatch} synthetic CT volumes, got {vset.volume_count}")
        volumes = _memory_format(normalize(vset.volumes.float().to(device) / 255, config.preprocess), config)
        cached = _text_vectors(model, [p.text for p in vset.pairs])
        encoder = f"{volume.kind} {volume.arch_3d}, {volume.depth}x{volume.size}x{volume.size}"
        rates, flops = bench_tower(model.volume, volumes, cached, warmup, steps, args.repeats, device)
        rows.append(Result(name, "volume encoder", encoder, vbatch, steps, rates, "n/a (fixed vectors)", flops))
    return rows


def repeats_text(repeats: int, steps: int) -> str:
    return f"median of {repeats} chunk(s) of {steps} step(s)"


def _flops_text(result: Result, peak_tflops: float | None) -> str:
    if result.flops_per_step is None:
        return "-"
    per_second = result.flops_per_step / result.batch * statistics.median(result.rates)
    text = f"{result.flops_per_step / 1e9:,.0f} GFLOP/step, {per_second / 1e12:.3f} TFLOP/s"
    if peak_tflops:
        text += f" ({100 * per_second / 1e12 / peak_tflops:.1f}% of {peak_tflops:g})"
    return text


def print_table(results: list[Result], peak_tflops: float | None) -> None:
    print("| config | part | encoder (arch, size) | batch | steps x repeats | pairs/s median (min–max) "
          "| text tower frozen? | FLOPs (fwd+bwd) and achieved rate |")
    print("|---|---|---|---:|---:|---|---|---|")
    for r in results:
        rate = f"{statistics.median(r.rates):.1f} ({min(r.rates):.1f}–{max(r.rates):.1f})"
        print(f"| {r.config} | {r.part} | {r.encoder} | {r.batch} | {r.steps} x {len(r.rates)} | {rate} "
              f"| {r.text} | {_flops_text(r, peak_tflops)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    parser.add_argument("--steps", type=int, help="steps per timed chunk (default 5; 1 for gpu-default on a CPU)")
    parser.add_argument("--repeats", type=int, default=3, help="timed chunks; the median is reported (default 3)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 2; 1 for gpu-default on a CPU)")
    parser.add_argument("--batch-size", type=int, help="pairs per step for every config (default: each config's own)")
    parser.add_argument("--volume-batch", type=int, default=4, help="volumes per volume-encoder step (default 4)")
    parser.add_argument("--accum-steps", type=int, nargs="+", default=[1],
                        help="time the full step at each of these TrainConfig.accum_steps (default 1)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers of the full step (default 0)")
    parser.add_argument("--peak-tflops", type=float, help="the device's peak dense bf16 TFLOP/s, for the share")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    args = parser.parse_args()
    args.steps_given, args.warmup_given = args.steps is not None, args.warmup is not None
    args.steps = 5 if args.steps is None else args.steps
    args.warmup = 2 if args.warmup is None else args.warmup
    if min(args.steps, args.repeats, args.volume_batch) < 1 or args.warmup < 0:
        parser.error("--steps, --repeats and --volume-batch must be >= 1, --warmup >= 0")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    autocast = "bf16 autocast" if device.type == "cuda" else "float32"
    print(f"device: {device.type} ({where}), {autocast}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch threads; load average {_load()}", flush=True)
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs:
            start = time.perf_counter()
            results += bench_config(name, args, device, Path(tmp))
            print(f"{name}: done in {time.perf_counter() - start:.0f} s", flush=True)
    print(f"load average after: {_load()}\n")
    print_table(results, args.peak_tflops)


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


if __name__ == "__main__":
    main()
