"""Multi-process training under `torchrun` (DDP): the process group, each rank's share of the data,
and a contrastive loss over every rank's batch.

A contrastive loss needs the whole batch: each image's negatives are the other reports in the batch.
With one batch per rank, each rank gathers every rank's embeddings (as open_clip's `gather_features`
does) and computes the loss over the global batch; the local rows of the gathered tensors are the
local tensors themselves, so gradients flow into the local encoders.

Gradients then equal one process on the global batch: every rank computes the same global loss L,
but back-propagates only through its own rows; DDP averages the ranks' gradients, so the local rows'
gradients are scaled by the world size (`_ScaleGrad`) to turn that average into the sum over ranks.
`logit_scale` is used directly by every rank, so it is not scaled: the average of equal gradients
is that gradient. The multi-task head's logits and targets are gathered the same way, so its loss is
the mean over the global batch too, even when ranks hold different numbers of labelled images.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler

from medcm.model.align import AlignmentLoss, DualOutput, LossOutput, positive_mask

# Ranks > 0 wait in a collective while rank 0 validates and writes checkpoints; allow for a long validation.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=60)
_RANK_SEED_STRIDE = 1_000_003  # a prime far above any epoch count, so ranks' seeds never meet another epoch's


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in a multi-process run; the default is a single process.

    Attributes:
        rank: this process's index among all processes (0 for a single process).
        world_size: the number of processes.
        local_rank: this process's index on its machine (its GPU index).
        owns_group: `init_distributed` created the process group, so `close_distributed` destroys it.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that validates, logs and writes checkpoints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """More than one process."""
        return self.world_size > 1


def context_from_env(environ: Mapping[str, str] | None = None) -> DistributedContext:
    """Read torchrun's `RANK`, `WORLD_SIZE` and `LOCAL_RANK` (default: `os.environ`) without starting anything.

    Raises:
        ValueError: a variable is not an integer, or the rank lies outside the world.
    """
    env = os.environ if environ is None else environ
    values = {}
    for name, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)):
        raw = env.get(name, "")
        try:
            values[name] = int(raw) if raw.strip() else default
        except ValueError:
            raise ValueError(f"environment variable {name}: got {raw!r}, expected an integer (set by torchrun)") from None
    world, rank, local = values["WORLD_SIZE"], values["RANK"], values["LOCAL_RANK"]
    if world < 1 or not 0 <= rank < world or not 0 <= local <= rank:
        raise ValueError(f"got RANK={rank}, LOCAL_RANK={local}, WORLD_SIZE={world}; "
                         "expected 0 <= LOCAL_RANK <= RANK < WORLD_SIZE (launch with torchrun)")
    return DistributedContext(rank=rank, world_size=world, local_rank=local)


def init_distributed(device_type: str) -> DistributedContext:
    """Join the process group torchrun describes: gloo for "cpu", nccl for "cuda".

    Without `WORLD_SIZE`, or with `WORLD_SIZE=1`, this is a no-op that returns the single-process context.
    A process group that already exists (started by the caller) is used as it is.

    Raises:
        ValueError: an unknown device type, or a process group whose size differs from `WORLD_SIZE`.
    """
    if device_type not in ("cpu", "cuda"):
        raise ValueError(f"device_type: got {device_type!r}, expected 'cpu' (gloo) or 'cuda' (nccl)")
    ctx = context_from_env()
    if not ctx.enabled:
        return ctx
    if device_type == "cuda":
        torch.cuda.set_device(ctx.local_rank)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo", timeout=COLLECTIVE_TIMEOUT)
    if dist.get_world_size() != ctx.world_size or dist.get_rank() != ctx.rank:
        raise ValueError(f"the process group has rank {dist.get_rank()} of {dist.get_world_size()}, "
                         f"but the environment says rank {ctx.rank} of {ctx.world_size}")
    return DistributedContext(ctx.rank, ctx.world_size, ctx.local_rank, owns_group=owns)


def close_distributed(ctx: DistributedContext) -> None:
    """Wait for every rank, then destroy the process group if `init_distributed` created it."""
    if ctx.enabled:
        dist.barrier()
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def rank_device(device: torch.device, ctx: DistributedContext) -> torch.device:
    """This rank's device: `cuda:LOCAL_RANK` for CUDA under DDP, else `device` unchanged."""
    if ctx.enabled and device.type == "cuda":
        return torch.device("cuda", ctx.local_rank)
    return device


def wrap_model(model: torch.nn.Module, ctx: DistributedContext, device: torch.device) -> torch.nn.Module:
    """`DistributedDataParallel(model)` under DDP, else `model` itself.

    `find_unused_parameters=True`: a batch without volumes leaves the volume encoder unused, a batch
    without 2D images the multi-task head, and a fine-tuned transformer's pooler is never used.
    """
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)


def check_batch_size(batch_size: int, ctx: DistributedContext) -> int:
    """The per-rank share of a global batch of `batch_size`.

    Raises:
        ValueError: `batch_size` is not a multiple of the number of processes.
    """
    if batch_size % ctx.world_size:
        raise ValueError(f"batch size {batch_size} is the global batch and must split evenly over "
                         f"{ctx.world_size} processes; use a multiple of {ctx.world_size}")
    return batch_size // ctx.world_size


def rank_seed(seed: int, ctx: DistributedContext) -> int:
    """A per-rank seed (rank 0 keeps `seed`), so ranks draw different augmentations."""
    return seed + ctx.rank * _RANK_SEED_STRIDE


class _RankBatches(BatchSampler):
    """This rank's contiguous slice of each global batch: rank r takes rows `[r·b, (r+1)·b)`."""

    def __init__(self, batches: BatchSampler, ctx: DistributedContext) -> None:
        self.batches, self.ctx = batches, ctx
        self.local = check_batch_size(batches.batch_size, ctx)

    def __iter__(self):
        start = self.ctx.rank * self.local
        for batch in self.batches:
            yield batch[start : start + self.local]

    def __len__(self) -> int:
        return len(self.batches)


def epoch_loader(dataset: Dataset, batch_size: int, generator: torch.Generator, ctx: DistributedContext,
                 **loader_args: Any) -> DataLoader:
    """A shuffled loader of this rank's share of each global batch of `batch_size` (the last partial one dropped).

    Every rank draws the same permutation from `generator` (seeded alike on all ranks), cuts it into
    the same global batches and keeps its own slice. With one process this is exactly
    `DataLoader(shuffle=True, drop_last=True, generator=generator)`.
    """
    batches = BatchSampler(RandomSampler(dataset, generator=generator), batch_size, drop_last=True)
    return DataLoader(dataset, batch_sampler=_RankBatches(batches, ctx), generator=generator, **loader_args)


def share_from_main(value: Any, ctx: DistributedContext) -> Any:
    """Rank 0's `value` on every rank (a picklable object); ranks > 0 wait here for rank 0."""
    if not ctx.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class _ScaleGrad(torch.autograd.Function):
    """Identity in the forward pass; multiplies the gradient by `factor` in the backward pass."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.factor, None


def _describe(tensor: torch.Tensor | None) -> tuple[tuple[int, ...], str] | None:
    return None if tensor is None else (tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."))


def _gather_rows(tensor: torch.Tensor | None, described: list[tuple[tuple[int, ...], str] | None],
                 ctx: DistributedContext, device: torch.device) -> torch.Tensor | None:
    """Every rank's `[B_r, ...]` rows concatenated in rank order (B_r may differ; a rank's None counts as 0 rows).

    The local rows are `tensor` itself with its gradient scaled by the world size; the other ranks'
    rows carry no gradient. None when every rank passed None.
    """
    present = [d for d in described if d is not None]
    if not present:
        return None
    first = next(rank for rank, d in enumerate(described) if d is not None)
    trailing, dtype_name = present[0][0][1:], present[0][1]
    for rank, d in enumerate(described):
        if d is not None and (d[0][1:] != trailing or d[1] != dtype_name):
            raise ValueError(f"rank {rank} holds rows of shape {d[0][1:]} and dtype {d[1]}, rank {first} rows of "
                             f"{trailing} and {dtype_name}; expected the same row shape and dtype on every rank")
    dtype = getattr(torch, dtype_name)
    rows = [0 if d is None else d[0][0] for d in described]
    local = tensor if tensor is not None else torch.zeros((0, *trailing), dtype=dtype, device=device)
    padded = torch.zeros((max(rows), *trailing), dtype=dtype, device=device)  # all_gather needs equal shapes
    padded[: len(local)] = local.detach()
    parts = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(parts, padded)
    parts = [part[:n] for part, n in zip(parts, rows)]
    parts[ctx.rank] = _ScaleGrad.apply(local, float(ctx.world_size)) if local.requires_grad else local
    return torch.cat(parts)


def gather_output(out: DualOutput, group_ids: list[str], aux_targets: torch.Tensor | None,
                  ctx: DistributedContext) -> tuple[DualOutput, list[str], torch.Tensor | None]:
    """Every rank's embeddings, group ids and multi-task logits and targets, in rank order.

    Args:
        out: this rank's forward pass: `image` and `text` `[B_r, D]`, `aux_logits` `[B2_r, K]` or None.
        group_ids: `B_r` case ids, one per row of `out.image`.
        aux_targets: `[B2_r]` class indices or `[B2_r, K]` multi-hot targets of the 2D images, or None.
        ctx: the run's context; a single process gets its inputs back unchanged.

    Returns:
        The global output (`[B, D]` with B = Σ B_r, the same `logit_scale`), the B group ids and the
        global targets. Only the local rows carry gradients (see the module docstring).

    Raises:
        ValueError: `group_ids`, `out.image` and `out.text` differ in length, or ranks disagree on shapes.
    """
    if not len(out.image) == len(out.text) == len(group_ids):
        raise ValueError(f"got {len(out.image)} visual rows, {len(out.text)} text rows and {len(group_ids)} "
                         "group ids; expected one group id per pair")
    if not ctx.enabled:
        return out, list(group_ids), aux_targets
    targets = aux_targets if out.aux_logits is not None else None  # targets without logits add nothing
    tensors = (out.image, out.text, out.aux_logits, targets)
    everyone: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(everyone, {"ids": list(group_ids), "shapes": [_describe(t) for t in tensors]})
    image, text, aux, all_targets = (
        _gather_rows(t, [e["shapes"][i] for e in everyone], ctx, out.image.device) for i, t in enumerate(tensors)
    )
    ids = [g for e in everyone for g in e["ids"]]
    return DualOutput(image=image, text=text, logit_scale=out.logit_scale, aux_logits=aux), ids, all_targets


def global_loss(loss_fn: AlignmentLoss, out: DualOutput, group_ids: list[str], aux_targets: torch.Tensor | None,
                ctx: DistributedContext) -> LossOutput:
    """`loss_fn` over the global batch, with case-aware positives; with one process, exactly `loss_fn` on the batch.

    Under DDP every rank returns the same loss, the global batch's, unscaled; back-propagating it on
    every rank and letting DDP average gives one process's gradient on the global batch.

    Raises:
        ValueError: under DDP, multi-task logits that the loss would not use (weight 0 or no targets).
    """
    if ctx.enabled and out.aux_logits is not None and (loss_fn.aux_weight <= 0 or aux_targets is None):
        # DDP expects a gradient for every parameter its forward output reaches; an unused head would stall it.
        raise ValueError(f"got multi-task logits but aux weight {loss_fn.aux_weight} and targets "
                         f"{'None' if aux_targets is None else 'given'}; under DDP the head's loss must be used: "
                         "give it a positive weight and targets, or remove model.aux_head")
    out, ids, targets = gather_output(out, group_ids, aux_targets, ctx)
    return loss_fn(out, positive_mask(ids), targets)
