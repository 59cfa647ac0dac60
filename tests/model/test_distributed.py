"""Multi-process training: 2 CPU processes (gloo) must match one process on the same global batch."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medcm.model.align import AlignmentLoss, DualEncoder, positive_mask
from medcm.checkpoint import load_checkpoint
from medcm.config import AuxHeadConfig, VolumeEncoderConfig
from medcm.model.distributed import (
    DistributedContext,
    check_batch_size,
    close_distributed,
    context_from_env,
    epoch_loader,
    global_loss,
    init_distributed,
    wrap_model,
)

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1])]  # spawned workers import this module and conftest by name
from conftest import small_model_config  # noqa: E402

# One global batch of 8 pairs. Case c0 has an item on each rank (rows 0 and 4) with different texts;
# c1 (rows 1, 2) and c3 (rows 5, 7) sit on one rank. Labels -1 are unlabelled, so the ranks hold
# different numbers of labelled images and a per-rank mean of the multi-task loss would be wrong.
CASES = ["c0", "c1", "c1", "c2", "c0", "c3", "c4", "c3"]
TEXTS = ["round bright lesion", "irregular mass in the lower lobe", "irregular mass in the lower lobe",
         "normal study", "a single round lesion, well defined", "pleural effusion on the left",
         "rib fracture", "small left effusion"]
LABELS = torch.tensor([0, -1, 1, 2, -1, -1, 0, 1])
# Rows per rank (equal or unequal local batches), and the first row that is a CT volume rather than a 2D
# image: none; rank 1 mixing both; rank 1 holding only volumes, so the multi-task head (2D images only)
# runs on rank 0 alone and the volume encoder on rank 1 alone.
SCENARIOS = [((4, 4), 8), ((3, 5), 6), ((4, 4), 4)]


def _config():
    config = small_model_config(
        aux_head=AuxHeadConfig(field="label", classes=("a", "b", "c"), weight=0.5),
        losses={"infonce": 1.0, "kl": 0.5, "mse": 0.25},
        volume=VolumeEncoderConfig(kind="3d", depth=8, size=32),
    )
    # A fine-tuned transformer: its gradients are checked too (its unused pooler exercises find_unused_parameters).
    text = dataclasses.replace(config.model.text, freeze=False)
    return dataclasses.replace(config, model=dataclasses.replace(config.model, text=text))


def _model_and_loss() -> tuple[DualEncoder, AlignmentLoss]:
    config = _config()
    torch.manual_seed(0)
    model = DualEncoder(config.model, config.preprocess.image_size).eval()
    head = config.model.aux_head
    return model, AlignmentLoss(config.model.losses, head.weight, head.multi_label)


def _rows(lo: int, hi: int, first_volume: int) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
    """Rows `[lo, hi)` of the global batch: 2D images `[B2, 1, 64, 64]`, volumes `[B3, 1, 8, 32, 32]`, labels `[B2]`."""
    images = torch.randn(len(CASES), 1, 64, 64, generator=torch.Generator().manual_seed(1))
    volumes = torch.randn(len(CASES), 1, 8, 32, 32, generator=torch.Generator().manual_seed(2))
    cut = min(max(lo, first_volume), hi)
    return images[lo:cut] if cut > lo else None, volumes[cut:hi] if hi > cut else None, LABELS[lo:cut]


def _gradients(model: DualEncoder) -> dict[str, torch.Tensor | None]:
    return {name: None if p.grad is None else p.grad.detach().clone() for name, p in model.named_parameters()}


def _join_gloo(rank: int, world_size: int, port: int):
    """This process as rank `rank` of a gloo group on loopback, one thread; its DistributedContext."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    return init_distributed("cpu")


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    """One rank: its rows of the global batch through the DDP-wrapped model, gathered loss, backward."""
    ctx = _join_gloo(rank, world_size, port)
    model, loss_fn = _model_and_loss()
    net = wrap_model(model, ctx, torch.device("cpu"))
    results = []
    for split, first_volume in SCENARIOS:
        lo, hi = sum(split[:rank]), sum(split[: rank + 1])
        images, volumes, labels = _rows(lo, hi, first_volume)
        model.zero_grad(set_to_none=True)
        out = net(images, TEXTS[lo:hi], volumes)
        loss = global_loss(loss_fn, out, CASES[lo:hi], labels, ctx)
        loss.total.backward()
        results.append({"total": loss.total.detach(), "parts": loss.parts, "grads": _gradients(model)})
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    close_distributed(ctx)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_give_the_loss_and_gradients_of_one_process(tmp_path, monkeypatch):
    """Each of 2 processes takes its rows of a fixed global batch through the real DualEncoder in DDP.

    The model is in eval mode: BatchNorm in training mode normalises with each rank's own batch
    statistics, which legitimately differ from one process's statistics over the global batch.
    """
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.multiprocessing.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]

    model, loss_fn = _model_and_loss()
    for (split, first_volume), results in zip(SCENARIOS, zip(*ranks)):
        images, volumes, labels = _rows(0, len(CASES), first_volume)
        model.zero_grad(set_to_none=True)
        loss = loss_fn(model(images, TEXTS, volumes), positive_mask(CASES), labels)
        loss.total.backward()
        expected = _gradients(model)
        assert positive_mask(CASES)[0, 4] == 1 and {"infonce", "kl", "mse", "aux"} == set(loss.parts)
        trained = {n for n, g in expected.items() if g is not None}
        parts = ["logit_scale", "image.proj.", "image.trunk.", "text.proj.", "text.backbone.encoder.", "aux_head."]
        for part in parts + (["volume.trunk.", "volume.proj."] if volumes is not None else []):
            assert any(n.startswith(part) for n in trained), part
        for rank, got in enumerate(results):
            where = f"split {split}, first volume row {first_volume}, rank {rank}"
            torch.testing.assert_close(got["total"], loss.total.detach(), rtol=1e-6, atol=1e-6, msg=where)
            assert got["parts"] == pytest.approx(loss.parts, rel=1e-6, abs=1e-6), where
            assert {n for n, g in got["grads"].items() if g is not None} == trained, where
            for name in trained:  # seen: |difference| <= 1.2e-6 (summation order); wrong scaling: 2x off
                torch.testing.assert_close(got["grads"][name], expected[name], rtol=1e-4, atol=1e-5,
                                           msg=lambda m, n=name: f"{where}, {n}: {m}")


@pytest.mark.parametrize("env", [{}, {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}])
def test_without_torchrun_the_context_is_a_single_process(monkeypatch, env):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    ctx = init_distributed("cpu")
    assert ctx == DistributedContext() and ctx.is_main and not ctx.enabled
    assert not torch.distributed.is_initialized()
    model = torch.nn.Linear(2, 2)
    assert wrap_model(model, ctx, torch.device("cpu")) is model
    close_distributed(ctx)


def test_single_process_loader_matches_a_shuffled_dataloader():
    data = list(range(10))
    ours = [b.tolist() for b in epoch_loader(data, 4, torch.Generator().manual_seed(3), DistributedContext())]
    plain = torch.utils.data.DataLoader(data, batch_size=4, shuffle=True, drop_last=True,
                                        generator=torch.Generator().manual_seed(3))
    assert ours == [b.tolist() for b in plain] and len(ours) == 2


def test_ranks_split_each_global_batch_in_order():
    data = list(range(10))
    shares = [[b.tolist() for b in epoch_loader(data, 4, torch.Generator().manual_seed(3), DistributedContext(r, 2, r))]
              for r in range(2)]
    single = [b.tolist() for b in epoch_loader(data, 4, torch.Generator().manual_seed(3), DistributedContext())]
    assert [a + b for a, b in zip(*shares)] == single


def test_bad_environment_and_batch_sizes_are_refused():
    with pytest.raises(ValueError, match="RANK=2.*WORLD_SIZE=2"):
        context_from_env({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    with pytest.raises(ValueError, match="WORLD_SIZE: got 'two'"):
        context_from_env({"WORLD_SIZE": "two"})
    assert context_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == DistributedContext(3, 4, 1)
    assert check_batch_size(32, DistributedContext(0, 4, 0)) == 8
    with pytest.raises(ValueError, match="batch size 30 .* 4 processes; use a multiple of 4"):
        check_batch_size(30, DistributedContext(0, 4, 0))


def test_torchrun_two_processes_train_resume_and_write_one_checkpoint(tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    subprocess.run([sys.executable, "-m", "medcm", "synth", "--out", str(data), "--train", "32", "--dev", "8",
                    "--size", "64"], check=True, capture_output=True, text=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for epochs, resume in (("1", []), ("2", ["--resume", str(run)])):
        done = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "medcm",
             "train", "--data", str(data / "manifest.jsonl"), "--split", "train", "--val-split", "dev",
             "--epochs", epochs, "--batch-size", "8", "--device", "cpu", "--out", str(run), "--quiet", *resume],
            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.count("best checkpoint") == 1, done.stdout  # rank 0 alone reports
    info = json.loads((run / "last" / "config.json").read_text())
    assert info["metrics"]["epoch"] == 2 and info["metrics"]["step"] == 2 * (32 // 8)
    loaded = load_checkpoint(run / "last")
    assert loaded.model.encode_text(["normal study"]).shape == (1, loaded.config.model.embed_dim)
