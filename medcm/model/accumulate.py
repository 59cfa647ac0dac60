"""Gradient accumulation for a contrastive loss: the whole batch's loss and gradients in micro-batches
(open_clip's `accum_freq`), exact under DDP and with dropout and BatchNorm."""

from __future__ import annotations

import contextlib

import torch

from medcm.model import distributed as ddp
from medcm.model.align import AlignmentLoss, DualOutput, LossOutput
from medcm.runtime import autocast

__all__ = ["accumulated_step", "micro_batch_size"]


def micro_batch_size(batch_size: int, accum_steps: int, ctx: ddp.DistributedContext) -> int:
    """Pairs per micro-batch: this process's share of a global batch of `batch_size`, split `accum_steps` ways.

    Raises:
        ValueError: the batch does not split evenly over the processes and then into `accum_steps` parts.
    """
    local = ddp.check_batch_size(batch_size, ctx)
    if accum_steps < 1 or local % accum_steps:
        raise ValueError(f"train.accum_steps: got {accum_steps}, expected a positive divisor of each process's "
                         f"{local} pairs (batch size {batch_size} over {ctx.world_size} process(es))")
    return local // accum_steps


def accumulated_step(model: torch.nn.Module, loss_fn: AlignmentLoss, images: torch.Tensor | None,
                      volumes: torch.Tensor | None, texts: list[str], group_ids: list[str],
                      targets: torch.Tensor | None, accum_steps: int, device: torch.device,
                      ctx: ddp.DistributedContext) -> tuple[LossOutput, DualOutput]:
    """Back-propagate the whole batch's loss in `accum_steps` micro-batches (open_clip's `accum_freq`).

    Summing micro-batch losses would be wrong for a contrastive loss: each micro-batch would only see
    its own negatives. Instead every micro-batch is embedded once without gradients; then each is
    embedded again with gradients, put in place of its cached rows, and the loss over the whole batch
    is back-propagated. Only the fresh rows carry gradients, so the sum over micro-batches is the
    whole batch's gradient (exactly so with BatchNorm in eval mode; in train mode it normalises with
    micro-batch statistics). Under DDP gradients are all-reduced once, in the last micro-step.

    Args:
        model: the dual encoder, DDP-wrapped under torchrun; in the mode the caller set.
        loss_fn: the alignment loss.
        images: this process's prepared 2D images `[B2, ...]` or None.
        volumes: its prepared volumes `[B3, ...]` or None; the batch's rows are the images', then the volumes'.
        texts: B2 + B3 texts, one per row.
        group_ids: B2 + B3 case ids, one per row.
        targets: the multi-task head's targets of the B2 images, or None.
        accum_steps: micro-batches; must divide B2 + B3.
        device: where the model runs (for autocast and the CUDA random state).
        ctx: the run's distributed context.

    Returns:
        The whole batch's loss and its (detached) output; the parameters' `.grad` hold its gradients.

    Raises:
        ValueError: `accum_steps` does not divide the batch.
    """
    n_images = 0 if images is None else len(images)
    rows = n_images + (0 if volumes is None else len(volumes))
    if accum_steps < 1 or rows % accum_steps:
        raise ValueError(f"accum_steps: got {accum_steps} for a batch of {rows} pairs, expected a divisor of {rows}")
    size = rows // accum_steps
    micro = []  # contiguous row ranges keep the batch's order: images first, then volumes
    for lo in range(0, rows, size):
        hi = lo + size
        micro.append((None if images is None or lo >= n_images else images[lo : min(hi, n_images)],
                      None if volumes is None or hi <= n_images else volumes[max(lo, n_images) - n_images : hi - n_images],
                      texts[lo:hi]))

    # Pass 1: cache every micro-batch's rows. Its BatchNorm updates are undone (pass 2 makes them), and
    # the random state before each forward is kept so pass 2 draws the same dropout masks.
    saved_stats = [(buffer, buffer.clone()) for buffer in _running_stats(model)]
    cached, rng_states = [], []
    with torch.no_grad():
        for micro_images, micro_volumes, micro_texts in micro:
            rng_states.append(_rng_state(device))
            with autocast(device):
                cached.append(model(micro_images, micro_texts, micro_volumes))
        for buffer, value in saved_stats:
            buffer.copy_(value)

    # Pass 2: one micro-batch with gradients against the cached rest, the whole batch's loss, backward.
    for j, (micro_images, micro_volumes, micro_texts) in enumerate(micro):
        last = j == accum_steps - 1
        with model.no_sync() if ctx.enabled and not last else contextlib.nullcontext():
            _set_rng_state(rng_states[j], device)
            with autocast(device):
                fresh = model(micro_images, micro_texts, micro_volumes)
            outputs = cached[:j] + [fresh] + cached[j + 1 :]
            aux = [o.aux_logits for o in outputs if o.aux_logits is not None]
            # logit_scale is used in every micro-step at the same value: 1/A of its gradient each time.
            scale = fresh.logit_scale.detach() + (fresh.logit_scale - fresh.logit_scale.detach()) / accum_steps
            out = DualOutput(image=torch.cat([o.image for o in outputs]), text=torch.cat([o.text for o in outputs]),
                             logit_scale=scale, aux_logits=torch.cat(aux) if aux else None)
            loss = ddp.global_loss(loss_fn, out, group_ids, targets, ctx)
            loss.total.backward()
    detached = DualOutput(out.image.detach(), out.text.detach(), out.logit_scale.detach(),
                          None if out.aux_logits is None else out.aux_logits.detach())
    return LossOutput(total=loss.total.detach(), parts=loss.parts), detached


def _running_stats(model: torch.nn.Module) -> list[torch.Tensor]:
    """The running-statistics buffers of the normalisation layers that update them in this mode."""
    return [buffer for module in model.modules()
            if module.training and getattr(module, "track_running_stats", False)
            for buffer in module.buffers(recurse=False)]


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)
