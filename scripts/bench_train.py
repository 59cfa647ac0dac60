"""Benchmark: where a cpu-small training epoch spends its time, on synthetic DICOM pairs.

Reports, from one run: DICOM decode rate through medcm's display pipeline vs a bare pydicom
read+decode of the same files; frozen-text caching rate; one training epoch (pairs/s, wall time);
image-encoder inference rate. Usage:

    .venv/bin/python scripts/bench_train.py --pairs 3000 [--config cpu-small]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pydicom
import torch

from medcm.model.align import AlignmentLoss, DualEncoder
from medcm.config import get_config
from medcm.data.manifest import PairedImageDataset, read_manifest, records_to_pairs
from medcm.model.distributed import DistributedContext
from medcm.model.preprocess import normalize
from medcm.runtime import seed_everything
from medcm.data.synthetic_radiographs import write_dataset
from medcm.model.train import _train_epoch


def _rate(count: int, seconds: float) -> str:
    return f"{count / seconds:.0f}/s ({seconds:.1f} s)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3000)
    parser.add_argument("--config", default="cpu-small")
    args = parser.parse_args()
    config = get_config(args.config)
    seed_everything(0)
    rows = [("torch threads", str(torch.get_num_threads()))]
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_dataset(tmp, n_train=args.pairs, n_dev=0, image_size=256)
        files = sorted(Path(tmp).rglob("*.dcm"))
        start = time.perf_counter()
        for file in files:
            pydicom.dcmread(file).pixel_array
        bare = time.perf_counter() - start
        pairs = records_to_pairs(read_manifest(manifest))
        start = time.perf_counter()
        dataset = PairedImageDataset(pairs, config.preprocess)
        decode = time.perf_counter() - start
    rows += [("bare pydicom read+decode (256 px)", _rate(len(files), bare)),
             ("medcm decode+display+resize to dataset", _rate(len(files), decode)),
             ("medcm / bare time ratio", f"{decode / bare:.2f}")]

    model = DualEncoder(config.model, config.preprocess.image_size)
    texts = list(dict.fromkeys(p.text for p in dataset.pairs))
    start = time.perf_counter()
    model.text.warm_cache(texts)
    rows.append((f"frozen text cache ({len(texts)} distinct reports)", _rate(len(texts), time.perf_counter() - start)))

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.train.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    loss_fn = AlignmentLoss(config.model.losses)
    batch = config.train.batch_size
    start = time.perf_counter()
    _train_epoch(model, dataset, loss_fn, optimizer, scheduler, config, torch.device("cpu"), 0, batch, False,
                 DistributedContext())
    epoch = time.perf_counter() - start
    rows.append((f"training epoch, batch {batch}", f"{(len(dataset) // batch) * batch / epoch:.0f} pairs/s ({epoch:.1f} s)"))

    model.eval()
    times = []
    with torch.no_grad():
        for start_index in range(0, min(len(dataset), 20 * batch), batch):
            images = normalize(dataset.images[start_index:start_index + batch].float() / 255, config.preprocess)
            start = time.perf_counter()
            model.encode_image(images)
            times.append(time.perf_counter() - start)
    rows.append((f"image inference, batch {batch} (median of {len(times)})", f"{batch / statistics.median(times):.0f} images/s"))

    print(f"| {args.config}, {args.pairs} synthetic pairs at {config.preprocess.image_size} px | result |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
