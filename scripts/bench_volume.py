"""Benchmark: CPU speed of the volume encoders, "3d" (MONAI 3D ResNet) vs "2.5d" (2D trunk over slices).

At `VolumeEncoderConfig`'s default sizes (3D: [1, 32, 128, 128]; 2.5D: 16 slices of 128 px through
the cpu-small 2D tower), reports: preprocessing time of one synthetic CT series, forward volumes/s
(eval, no grad) and training steps/s (forward + InfoNCE against fixed text embeddings + backward +
AdamW). A single 2D image through the same 2D tower is the reference row. Prints a Markdown table.
Usage:

    .venv/bin/python scripts/bench_volume.py [--batch 4] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medcm.model.align import infonce_loss
from medcm.config import get_config
from medcm.model.encoders.image import ImageEncoder
from medcm.model.encoders.volume import VolumeEncoderConfig, build_volume_encoder, prepare_volume
from medcm.runtime import cpu_name


def _timed(step: Callable[[], None], repeats: int) -> float:
    """Median seconds per call after one warm-up call (the median shrugs off other jobs on shared cores)."""
    step()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def _forward_rate(model: nn.Module, batch: torch.Tensor, repeats: int) -> float:
    model.eval()
    with torch.no_grad():
        return len(batch) / _timed(lambda: model(batch), repeats)


def _train_rate(model: nn.Module, batch: torch.Tensor, embed_dim: int, repeats: int) -> float:
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    texts = F.normalize(torch.randn(len(batch), embed_dim), dim=-1)
    scale = torch.tensor(1 / 0.07)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        infonce_loss(F.normalize(model(batch), dim=-1), texts, scale).backward()
        optimizer.step()

    return 1.0 / _timed(step, repeats)


def _prepare_seconds(config: VolumeEncoderConfig, repeats: int) -> float:
    """Time to prepare one 200-slice 512x512 CT series (int16 HU), as a loader would."""
    rng = np.random.default_rng(0)
    voxels = rng.integers(-1000, 1500, size=(200, 512, 512), dtype=np.int16)
    return _timed(lambda: prepare_volume(voxels, (1.25, 0.7, 0.7), "CT", config), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4, help="volumes per forward pass and per training step")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls after one warm-up")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model_config = get_config("cpu-small").model
    defaults = VolumeEncoderConfig()
    embed = model_config.embed_dim
    image = ImageEncoder(model_config.image, embed, model_config.projection, defaults.size)
    size, b = defaults.size, args.batch
    rows: list[tuple[str, str, nn.Module, torch.Tensor, float | None]] = [
        (f"2D image ({model_config.image.arch}), reference", f"[1, {size}, {size}]", image,
         torch.rand(b, 1, size, size), None),
    ]
    for arch in ("resnet10", "resnet18"):
        config = dataclasses.replace(defaults, kind="3d", arch_3d=arch)
        rows.append((f"3d ({arch})", f"[1, {config.depth}, {size}, {size}]",
                     build_volume_encoder(config, image, embed, model_config.projection),
                     torch.rand(b, 1, config.depth, size, size), _prepare_seconds(config, args.repeats)))
    config = dataclasses.replace(defaults, kind="2.5d")
    slices = build_volume_encoder(config, image, embed, model_config.projection)
    rows.append((f"2.5d ({model_config.image.arch} x {config.n_slices} slices + attention)",
                 f"[{config.n_slices}, 1, {size}, {size}]", slices,
                 torch.rand(b, config.n_slices, 1, size, size), _prepare_seconds(config, args.repeats)))

    print(f"{cpu_name()}, {args.threads} threads, torch {torch.__version__}, batch {b}, "
          f"median of {args.repeats} calls after a warm-up\n")
    print("| encoder | input per item | params (M) | prepare 200x512² CT (s) | forward items/s | train steps/s "
          "| train items/s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, shape, model, batch, prepare in rows:
        params = sum(p.numel() for p in model.parameters()) / 1e6
        forward = _forward_rate(model, batch, args.repeats)
        steps = _train_rate(model, batch, embed, args.repeats)
        prep = "–" if prepare is None else f"{prepare:.2f}"
        print(f"| {name} | {shape} | {params:.1f} | {prep} | {forward:.1f} | {steps:.2f} | {steps * b:.1f} |", flush=True)


if __name__ == "__main__":
    main()
