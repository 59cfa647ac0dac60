"""Gradient accumulation (`TrainConfig.accum_steps`): micro-batches must give the whole contrastive batch's gradients.

The model and the global batch are test_distributed's: 8 pairs (2D images, then CT volumes), one case
with two different texts, a multi-task head with unlabelled rows, InfoNCE + KL + MSE and a fine-tuned
transformer, so every kind of parameter gets a gradient.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
from pathlib import Path

import pytest
import torch

from medcm.model.align import positive_mask
from medcm.checkpoint import load_trainer_state
from medcm.config import validate_config
from medcm.data.manifest import read_manifest, split_records
from medcm.model.distributed import DistributedContext, close_distributed, wrap_model
from medcm.data.synthetic_radiographs import write_dataset
from medcm.model.accumulate import accumulated_step as _accumulated_step, micro_batch_size
from medcm.model.train import train

sys.path.insert(0, str(Path(__file__).parent))  # spawned workers import this module and test_distributed by name
from test_distributed import CASES, TEXTS, _free_port, _gradients, _join_gloo, _model_and_loss, _rows  # noqa: E402

CPU = torch.device("cpu")


@functools.lru_cache(maxsize=None)  # shared, read-only: several tests compare against the same batch
def _full_batch_gradients(first_volume: int) -> tuple[torch.Tensor, dict[str, float], dict[str, torch.Tensor | None]]:
    """One process, one pass over the whole batch (what `accum_steps=1` does): loss, parts, gradients."""
    model, loss_fn = _model_and_loss()
    images, volumes, labels = _rows(0, len(CASES), first_volume)
    out = model(images, TEXTS, volumes)
    loss = loss_fn(out, positive_mask(CASES), labels)
    loss.total.backward()
    return loss.total.detach(), loss.parts, _gradients(model)


def _assert_same_gradients(got: dict, expected: dict, where: str) -> float:
    """Every parameter's gradient within 1e-5 of its largest entry (+ 1e-8); returns the worst ratio.

    The 1e-8 is for the attention key biases: their true gradient is 0 (softmax ignores a shift), and
    what autograd gives is rounding noise of about 1e-9.
    """
    assert {n for n, g in got.items() if g is not None} == {n for n, g in expected.items() if g is not None}, where
    worst = 0.0
    for name, want in expected.items():
        if want is None:
            continue
        difference, largest = float((got[name] - want).abs().max()), float(want.abs().max())
        assert difference <= 1e-5 * largest + 1e-8, f"{where}, {name}: max |difference| {difference:.2e}, " \
                                                    f"max |gradient| {largest:.2e}"
        worst = max(worst, difference / largest if largest > 1e-6 else 0.0)
    return worst


# First volume row: none (images only); 6 (a micro-batch holds both kinds with accum 2, volumes only
# with accum 4); 2 (the head's rows all in the first micro-batch).
@pytest.mark.parametrize(("accum_steps", "first_volume"), [(1, 6), (2, 8), (2, 6), (4, 6), (4, 2)])
def test_accumulated_gradients_equal_the_whole_batch(accum_steps, first_volume):
    want_total, want_parts, expected = _full_batch_gradients(first_volume)
    assert {"infonce", "kl", "mse", "aux"} == set(want_parts)
    for part in ("logit_scale", "aux_head.", "image.trunk.", "text.backbone.encoder.", "text.proj."):
        assert any(n.startswith(part) and g is not None for n, g in expected.items()), part

    model, loss_fn = _model_and_loss()  # eval mode: BatchNorm uses its running statistics in both cases
    images, volumes, labels = _rows(0, len(CASES), first_volume)
    loss, out = _accumulated_step(model, loss_fn, images, volumes, TEXTS, CASES, labels, accum_steps, CPU,
                                  DistributedContext())
    where = f"accum_steps {accum_steps}, first volume row {first_volume}"
    torch.testing.assert_close(loss.total, want_total, rtol=1e-6, atol=1e-6, msg=where)
    assert loss.parts == pytest.approx(want_parts, rel=1e-6, abs=1e-6), where
    assert out.image.shape == (len(CASES), model.config.embed_dim) and not out.image.requires_grad
    # Seen: worst |difference| 4e-6 × max |gradient| (summation order). Without the 1/A on logit_scale
    # its gradient is A× off; summing micro-batch losses (each seeing only its own negatives) is far off.
    _assert_same_gradients(_gradients(model), expected, where)


def test_the_temperature_would_get_accum_steps_times_its_gradient_without_the_correction():
    """Guards the test above: the 1/A scaling of logit_scale is what it measures, not a no-op."""
    _, _, expected = _full_batch_gradients(6)
    model, loss_fn = _model_and_loss()
    images, volumes, labels = _rows(0, len(CASES), 6)
    _accumulated_step(model, loss_fn, images, volumes, TEXTS, CASES, labels, 4, CPU, DistributedContext())
    assert float(expected["logit_scale"].abs()) > 1e-4
    torch.testing.assert_close(model.logit_scale.grad, expected["logit_scale"], rtol=1e-5, atol=1e-8)
    assert not torch.allclose(4 * model.logit_scale.grad, expected["logit_scale"], rtol=0.5)


def test_batchnorm_statistics_update_once_per_micro_batch_in_training_mode():
    """Pass 1 (without gradients) must not move the running statistics: pass 2 moves them once per micro-batch."""
    model, loss_fn = _model_and_loss()
    reference, _ = _model_and_loss()
    model.train()
    reference.train()
    images, volumes, labels = _rows(0, len(CASES), 8)
    _accumulated_step(model, loss_fn, images, volumes, TEXTS, CASES, labels, 2, CPU, DistributedContext())
    with torch.no_grad():
        for lo in (0, 4):
            reference(images[lo : lo + 4], TEXTS[lo : lo + 4])
    bn = model.image.trunk.bn1
    assert int(bn.num_batches_tracked) == 2
    for (name, got), want in zip(model.named_buffers(), reference.buffers()):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=name)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    manifest = write_dataset(tmp_path_factory.mktemp("accum"), n_train=24, n_dev=4, image_size=64)
    return split_records(read_manifest(manifest), "train", "dev", 0.0, 0)


def test_a_run_with_accumulation_keeps_the_steps_and_schedule(records, tmp_path, small_config):
    train_records, dev_records = records
    config = small_config(epochs=2, batch_size=8)
    plain = train(config, train_records, dev_records, tmp_path / "plain", progress=False)
    accum_config = dataclasses.replace(config, train=dataclasses.replace(config.train, accum_steps=2))
    accumulated = train(accum_config, train_records, dev_records, tmp_path / "accum", progress=False)
    steps = len(train_records) // 8
    assert [h["step"] for h in accumulated.history] == [h["step"] for h in plain.history] == [steps, 2 * steps]
    _, opt_state = load_trainer_state(accumulated.last_dir)
    assert opt_state["scheduler"]["last_epoch"] == 2 * steps  # one scheduler step per batch, not per micro-batch
    for h in accumulated.history:
        assert math.isfinite(h["train_loss"]) and h["train_loss"] > 0
    # BatchNorm trains on micro-batch statistics, so the losses are close to the plain run's, not equal.
    assert accumulated.history[0]["train_loss"] == pytest.approx(plain.history[0]["train_loss"], rel=0.2)


def test_accum_steps_is_validated(small_config):
    config = small_config(batch_size=8)

    def accum(steps, batch_size=8):
        return dataclasses.replace(config, train=dataclasses.replace(config.train, accum_steps=steps,
                                                                     batch_size=batch_size))

    validate_config(accum(4))
    with pytest.raises(ValueError, match=r"train\.accum_steps: got 0, expected a positive integer"):
        validate_config(accum(0))
    with pytest.raises(ValueError, match=r"train\.accum_steps: got 2\.0, expected a positive integer"):
        validate_config(accum(2.0))
    with pytest.raises(ValueError, match=r"train\.batch_size: got 6 with train\.accum_steps 4 .*multiple .* = 4"):
        validate_config(accum(4, batch_size=6))
    with pytest.raises(ValueError, match=r"accum_steps 2 over 2 process\(es\), expected a multiple .* = 4"):
        validate_config(accum(2, batch_size=6), world_size=2)
    assert micro_batch_size(32, 4, DistributedContext(0, 2, 0)) == 4
    with pytest.raises(ValueError, match=r"train\.accum_steps: got 3, .* each process's 8 pairs"):
        micro_batch_size(16, 3, DistributedContext(0, 2, 0))


# Rank r holds rows [4r, 4r + 4), micro-batches of 2. First volume row 6: rank 1's image rows are in its
# first (no_sync) micro-step, its volumes in the last; 5: both kinds in rank 1's first micro-step.
DDP_SCENARIOS = [8, 6, 5]


def _ddp_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    ctx = _join_gloo(rank, world_size, port)
    model, loss_fn = _model_and_loss()
    net = wrap_model(model, ctx, CPU)
    results = []
    lo, hi = 4 * rank, 4 * rank + 4
    for first_volume in DDP_SCENARIOS:
        images, volumes, labels = _rows(lo, hi, first_volume)
        model.zero_grad(set_to_none=True)
        loss, _ = _accumulated_step(net, loss_fn, images, volumes, TEXTS[lo:hi], CASES[lo:hi], labels, 2, CPU, ctx)
        results.append({"total": loss.total, "parts": loss.parts, "grads": _gradients(model)})
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    close_distributed(ctx)


def test_two_gloo_ranks_with_two_micro_batches_give_one_process_whole_batch_gradients(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for first_volume, results in zip(DDP_SCENARIOS, zip(*ranks)):
        want_total, want_parts, expected = _full_batch_gradients(first_volume)
        for rank, got in enumerate(results):
            where = f"first volume row {first_volume}, rank {rank}"
            torch.testing.assert_close(got["total"], want_total, rtol=1e-6, atol=1e-6, msg=where)
            assert got["parts"] == pytest.approx(want_parts, rel=1e-6, abs=1e-6), where
            _assert_same_gradients(got["grads"], expected, where)
