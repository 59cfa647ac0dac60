"""The training loop (`medcm train`): contrastive alignment of images and reports.

Nothing in the library imports this module. A run folder holds two checkpoints:
`OUT/best` (best validation mean recall) and `OUT/last` (the latest epoch, with optimizer and
trainer state for `--resume`).

Under `torchrun` (see `medcm.model.distributed`) `config.train.batch_size` stays the global batch: each of
the N processes takes a 1/N slice of every batch, the loss sees all of it, and only rank 0
validates, logs and writes checkpoints. With `config.train.accum_steps` > 1 each slice goes through
the encoders in that many micro-batches, with the same loss and gradients (`medcm.model.accumulate`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from medcm.model import distributed as ddp
from medcm.model.align import AlignmentLoss, DualEncoder
from medcm.checkpoint import (
    TRAINER_STATE_FILE,
    load_checkpoint,
    load_trainer_state,
    load_weights,
    read_checkpoint_info,
    save_checkpoint,
)
from medcm.config import AuxHeadConfig, MedcmConfig, config_from_dict, validate_config
from medcm.data.manifest import ManifestRecord, PairedImageDataset, collate_pairs, records_to_pairs
from medcm.eval.retrieval import case_retrieval_metrics, mean_recall
from medcm.model.preprocess import augment_batch, augment_volumes, normalize
from medcm.model.accumulate import accumulated_step, micro_batch_size
from medcm.model.finding_head import set_operating_points
from medcm.runtime import autocast, seed_everything, select_device

log = logging.getLogger(__name__)

BEST, LAST = "best", "last"


@dataclass
class TrainResult:
    """Where the checkpoints went and what each epoch measured."""

    best_dir: Path
    last_dir: Path
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def best_metrics(self) -> dict[str, Any]:
        scored = [h for h in self.history if "score" in h]
        return max(scored, key=lambda h: h["score"]) if scored else {}


def with_aux_classes(config: MedcmConfig, labels: list[Any]) -> MedcmConfig:
    """Fill the multi-task head's classes from the training labels when the config leaves them empty."""
    head = config.model.aux_head
    if head is None or head.classes:
        return config
    found: set[str] = set()
    for label in labels:
        if label is not None:
            found.update(map(str, label) if head.multi_label else [str(label)])
    if len(found) < 2 and not head.multi_label:
        raise ValueError(f"aux_head.field {head.field!r}: found {sorted(found)} in the training data, "
                         "expected at least 2 classes")
    new_head = dataclasses.replace(head, classes=tuple(sorted(found)))
    return dataclasses.replace(config, model=dataclasses.replace(config.model, aux_head=new_head))


def with_volume_encoder(config: MedcmConfig, has_volumes: bool) -> MedcmConfig:
    """Drop the volume encoder from a config whose training data holds no volume.

    An untrained volume encoder would only put noise in the shared space; without one, the engine
    embeds each slice of a series with the 2D tower. The saved config says which happened.
    """
    if config.model.volume is None or has_volumes:
        return config
    log.info("the training data holds no CT/MR/PT series; training without a volume encoder (model.volume)")
    return dataclasses.replace(config, model=dataclasses.replace(config.model, volume=None))


def aux_targets(head: AuxHeadConfig | None, labels: list[Any]) -> torch.Tensor | None:
    """Class indices `[B]` (-1 when unlabelled) or multi-hot `[B, K]` for the multi-task head."""
    if head is None:
        return None
    index = {name: i for i, name in enumerate(head.classes)}
    if head.multi_label:
        targets = torch.zeros(len(labels), len(index))
        for row, label in enumerate(labels):
            for name in label or []:
                if str(name) in index:
                    targets[row, index[str(name)]] = 1.0
        return targets
    return torch.tensor([index.get(str(label), -1) if label is not None else -1 for label in labels])


def lr_lambda(warmup_steps: int, total_steps: int):
    """Linear warm-up then cosine decay to zero, as a `LambdaLR` multiplier."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def build_optimizer(model: DualEncoder, config: MedcmConfig) -> torch.optim.Optimizer:
    """AdamW with no weight decay on biases, norms and the temperature; own rates for the transformer
    (`text_lr`) and the image trunk (`image_lr`, when set)."""
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    image_lr = config.train.image_lr if config.train.image_lr is not None else config.train.lr
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lr = config.train.text_lr if name.startswith("text.backbone.") else config.train.lr
        lr = image_lr if name.startswith("image.trunk.") else lr
        decay = 0.0 if param.ndim < 2 else config.train.weight_decay
        groups.setdefault((lr, decay), []).append(param)
    param_groups = [{"params": p, "lr": lr, "weight_decay": wd} for (lr, wd), p in groups.items()]
    return torch.optim.AdamW(param_groups)


@torch.no_grad()
def embed_dataset(model: DualEncoder, dataset: PairedImageDataset, config: MedcmConfig, device: torch.device,
                  batch_size: int = 64) -> torch.Tensor:
    """L2-normalised embeddings `[N, D]` of every item (2D image or volume), in dataset order, on the CPU."""
    model.eval()
    rows = torch.zeros(len(dataset), config.model.embed_dim)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_pairs)
    for images, volumes, indices in loader:
        parts = []
        with autocast(device):
            if images is not None:
                parts.append(model.encode_image(normalize(images.to(device), config.preprocess)).float())
            if volumes is not None:
                parts.append(model.encode_volume(normalize(volumes.to(device), config.preprocess)).float())
        rows[indices] = torch.cat(parts).cpu()
    return rows


@torch.no_grad()
def evaluate_retrieval(
    model: DualEncoder, dataset: PairedImageDataset, config: MedcmConfig, device: torch.device
) -> dict[str, dict[str, float]]:
    """Case-level image→report and report→image Recall@1/5/10 on a validation set (volumes count as images)."""
    image_emb = embed_dataset(model, dataset, config, device)
    cases = list(dict.fromkeys(p.case_id for p in dataset.pairs))
    text_of_case = {p.case_id: p.text for p in dataset.pairs}
    texts = [text_of_case[c] for c in cases]
    text_emb = torch.cat([model.encode_text(texts[s : s + 64]).float() for s in range(0, len(texts), 64)])
    image_cases = [p.case_id for p in dataset.pairs]
    return case_retrieval_metrics(image_emb, image_cases, text_emb.cpu(), cases)


def train(
    config: MedcmConfig,
    train_records: list[ManifestRecord],
    val_records: list[ManifestRecord],
    out_dir: str | Path,
    *,
    resume: str | Path | None = None,
    device: str | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train a dual encoder and write `out_dir/best` and `out_dir/last`.

    Args:
        config: model, preprocessing and loop settings (a named config or a custom one).
        train_records: cases to train on.
        val_records: cases for per-epoch retrieval metrics; empty means no validation (best = last).
        out_dir: the run folder.
        resume: a run folder or its `last` checkpoint to continue from.
        device: overrides the automatic choice.
        progress: show progress bars.

    Returns:
        The checkpoint folders and the per-epoch history.
    """
    validate_config(config, world_size=ddp.context_from_env().world_size)
    seed_everything(config.train.seed)
    device = select_device(device)
    ctx = ddp.init_distributed(device.type)  # a no-op outside torchrun
    device, progress = ddp.rank_device(device, ctx), progress and ctx.is_main
    out_dir = Path(out_dir)
    config, train_set, val_set = _datasets(config, train_records, val_records, progress)

    model = DualEncoder(config.model, config.preprocess.image_size).to(device)
    _speed_options(model, config)
    model.text.warm_cache([p.text for p in train_set.pairs] + ([p.text for p in val_set.pairs] if val_set else []), progress)
    batch_size = min(config.train.batch_size, len(train_set))
    micro_batch_size(batch_size, config.train.accum_steps, ctx)
    steps_per_epoch = len(train_set) // batch_size
    optimizer = build_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(config.train.warmup_steps, config.train.epochs * steps_per_epoch)
    )
    loss_fn = AlignmentLoss(
        config.model.losses,
        config.model.aux_head.weight if config.model.aux_head else 0.0,
        config.model.aux_head.multi_label if config.model.aux_head else False,
    )
    state = {"epoch": 0, "step": 0, "best_score": -1.0, "history": []}
    if resume is not None:
        state = _resume(Path(resume), model, optimizer, scheduler, config)

    result = TrainResult(best_dir=out_dir / BEST, last_dir=out_dir / LAST, history=state["history"])
    net = ddp.wrap_model(model, ctx, device)  # after resuming: DDP starts from rank 0's weights
    for epoch in range(state["epoch"], config.train.epochs):
        summary = _train_epoch(net, train_set, loss_fn, optimizer, scheduler, config, device, epoch, batch_size,
                               progress, ctx)
        state["step"] += steps_per_epoch
        summary.update(epoch=epoch + 1, step=state["step"])
        if val_set is None:
            summary["score"] = float(epoch)  # without validation the latest epoch counts as best
        elif ctx.is_main:
            metrics = evaluate_retrieval(model, val_set, config, device)
            summary.update(metrics, score=mean_recall(metrics))
        summary = ddp.share_from_main(summary, ctx)  # ranks > 0 wait here while rank 0 validates
        state["history"].append(summary)
        state["epoch"] = epoch + 1
        if ctx.is_main:
            _end_epoch(result, model, config, summary, state, optimizer, scheduler, progress)
    if ctx.is_main and model.finding_head() is not None:
        _calibrate_finding_head(result, train_set, device)
    ddp.close_distributed(ctx)
    return result


def _calibrate_finding_head(result: TrainResult, dataset: PairedImageDataset, device: torch.device) -> None:
    """Set the finding head's operating points of the saved checkpoints on the training images."""
    for folder in dict.fromkeys((result.best_dir, result.last_dir)):
        checkpoint = load_checkpoint(folder, device)
        embeddings = embed_dataset(checkpoint.model, dataset, checkpoint.config, device)
        targets = aux_targets(checkpoint.config.model.aux_head, [p.label for p in dataset.pairs])
        points = set_operating_points(checkpoint.model, embeddings, targets)
        state, optimizer = load_trainer_state(folder) if (folder / TRAINER_STATE_FILE).is_file() else (None, None)
        save_checkpoint(folder, checkpoint.model, checkpoint.config, {**checkpoint.metrics, "finding_operating_points": points},
                        trainer_state=state, optimizer_state=optimizer)


def _end_epoch(result: TrainResult, model: DualEncoder, config: MedcmConfig, summary: dict[str, Any],
               state: dict[str, Any], optimizer, scheduler, progress: bool) -> None:
    """Log the epoch and write `last` (and `best` when the score improved)."""
    _log_epoch(summary, progress)
    if summary["score"] > state["best_score"]:
        state["best_score"] = summary["score"]
        save_checkpoint(result.best_dir, model, config, metrics=summary)
    save_checkpoint(result.last_dir, model, config, metrics=summary, trainer_state=state,
                    optimizer_state={"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()})


def _datasets(
    config: MedcmConfig, train_records: list[ManifestRecord], val_records: list[ManifestRecord], progress: bool
) -> tuple[MedcmConfig, PairedImageDataset, PairedImageDataset | None]:
    """Decode the images once; fill the multi-task head's classes from the training labels."""
    head_field = config.model.aux_head.field if config.model.aux_head else None
    volumes = config.model.volume is not None
    train_pairs = records_to_pairs(train_records, head_field, volumes=volumes)
    if not train_pairs:
        raise ValueError(f"none of the {len(train_records)} training cases has a report with findings or impression text")
    config = with_aux_classes(config, [p.label for p in train_pairs])
    config = with_volume_encoder(config, any(p.series for p in train_pairs))
    volume = config.model.volume
    train_set = PairedImageDataset(train_pairs, config.preprocess, progress=progress, volume=volume)
    val_pairs = records_to_pairs(val_records, volumes=volume is not None)
    val_set = PairedImageDataset(val_pairs, config.preprocess, progress=progress, volume=volume) if val_pairs else None
    if len(train_set) < 2:
        raise ValueError(f"need at least 2 readable training images, got {len(train_set)}")
    return config, train_set, val_set


def _train_epoch(model, dataset, loss_fn, optimizer, scheduler, config, device, epoch, batch_size, progress, ctx):
    model.train()
    # Per-epoch seeds make shuffling and augmentation identical whether or not the run was resumed;
    # every rank draws the same order (and takes its slice of each batch), but its own augmentations.
    order = torch.Generator().manual_seed(config.train.seed * 1000 + epoch)
    augment_rng = torch.Generator().manual_seed(ddp.rank_seed(config.train.seed * 1000 + epoch + 1, ctx))
    workers = config.train.num_workers
    loader = ddp.epoch_loader(dataset, batch_size, order, ctx, collate_fn=collate_pairs, num_workers=workers,
                              pin_memory=device.type == "cuda",
                              prefetch_factor=config.train.prefetch_batches if workers > 0 else None)
    totals: dict[str, float] = {}
    if progress:
        from tqdm.auto import tqdm

        loader = tqdm(loader, desc=f"epoch {epoch + 1}/{config.train.epochs}", unit="batch", leave=False)
    accum = config.train.accum_steps
    for images, volumes, indices in loader:
        pairs = [dataset.pairs[i] for i in indices.tolist()]  # the images' first, then the volumes'
        images, volumes = _batch_inputs(images, volumes, config, device, augment_rng)  # once, for both passes
        texts, ids = [p.text for p in pairs], [p.case_id for p in pairs]
        n_images = 0 if images is None else len(images)  # the multi-task head reads the 2D images only
        targets = aux_targets(config.model.aux_head, [p.label for p in pairs[:n_images]])
        targets = targets.to(device) if targets is not None else None
        optimizer.zero_grad(set_to_none=True)
        if accum == 1:
            with autocast(device):
                out = model(images, texts, volumes)
            loss = ddp.global_loss(loss_fn, out, ids, targets, ctx)  # over every rank's batch
            loss.total.backward()
        else:
            loss, out = accumulated_step(model, loss_fn, images, volumes, texts, ids, targets, accum, device, ctx)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        for name, value in {"loss": float(loss.total.detach()), **loss.parts}.items():
            totals[name] = totals.get(name, 0.0) + value
        if progress:
            loader.set_postfix(loss=f"{float(loss.total.detach()):.3f}", temp=f"{1 / float(out.logit_scale.detach()):.4f}")
    steps = max(1, len(dataset) // batch_size)
    return {f"train_{k}": v / steps for k, v in totals.items()}


def _speed_options(model: DualEncoder, config: MedcmConfig) -> None:
    """Apply `TrainConfig.channels_last` and `TrainConfig.compile` to the visual encoders, in place.

    Both keep parameter names and values, so checkpoints are the same as without them.
    """
    if config.train.channels_last:
        model.image.to(memory_format=torch.channels_last)
        if config.model.volume is not None and config.model.volume.kind == "3d":
            model.volume.to(memory_format=torch.channels_last_3d)
    if config.train.compile:
        model.image.compile()  # nn.Module.compile: in place, unlike torch.compile(module), so state_dict keys stay
        if config.model.volume is not None and config.model.volume.kind == "3d":
            model.volume.compile()


def _memory_format(tensor: torch.Tensor, config: MedcmConfig) -> torch.Tensor:
    """A batch in the memory format of its encoder: channels-last for 2D images and "3d" volumes."""
    if not config.train.channels_last:
        return tensor
    if tensor.ndim == 4:
        return tensor.contiguous(memory_format=torch.channels_last)
    if config.model.volume is not None and config.model.volume.kind == "3d":
        return tensor.contiguous(memory_format=torch.channels_last_3d)
    return tensor  # "2.5d" slices are flattened to 2D images inside the encoder


def _batch_inputs(images: torch.Tensor | None, volumes: torch.Tensor | None, config: MedcmConfig,
                  device: torch.device, rng: torch.Generator) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Move a batch's images and volumes to the device, augment them (if configured) and normalise them."""
    prepared = []
    for tensor, augment in ((images, augment_batch), (volumes, augment_volumes)):
        if tensor is not None:
            tensor = tensor.to(device, non_blocking=True)
            if config.train.augment:
                tensor = augment(tensor, rng)
            tensor = _memory_format(normalize(tensor, config.preprocess), config)
        prepared.append(tensor)
    return prepared[0], prepared[1]


def _resume(folder: Path, model, optimizer, scheduler, config: MedcmConfig) -> dict[str, Any]:
    if (folder / LAST).is_dir():
        folder = folder / LAST
    state, opt_state = load_trainer_state(folder)
    info = read_checkpoint_info(folder)
    saved = config_from_dict(MedcmConfig, info["config"])
    if saved.model != config.model or saved.preprocess != config.preprocess:
        raise ValueError(f"{folder}: cannot resume, its model/preprocessing config differs from this run's")
    load_weights(model, folder, info)  # into the model already built: no second copy of the towers
    if opt_state is not None:
        optimizer.load_state_dict(opt_state["optimizer"])
        scheduler.load_state_dict(opt_state["scheduler"])
    log.info("resumed from %s at epoch %d", folder, state["epoch"])
    return state


def _log_epoch(summary: dict[str, Any], progress: bool) -> None:
    parts = [f"epoch {summary['epoch']}", f"loss {summary.get('train_loss', float('nan')):.4f}"]
    for direction in ("image_to_text", "text_to_image"):
        if direction in summary:
            recalls = " ".join(f"{k} {v:.3f}" for k, v in summary[direction].items() if k.startswith("R@"))
            parts.append(f"{direction}: {recalls}")
    line = " | ".join(parts)
    if progress:
        from tqdm.auto import tqdm

        tqdm.write(line)
    else:
        log.info(line)
