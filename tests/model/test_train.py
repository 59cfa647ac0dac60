"""Training end to end on synthetic data whose image content determines its report."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from medcm.checkpoint import load_checkpoint, read_checkpoint_info
from medcm.config import REPORT_FINDINGS, AuxHeadConfig
from medcm.data.manifest import (
    PairedImageDataset,
    read_manifest,
    records_to_pairs,
    split_records,
)
from medcm.data.synthetic_radiographs import CLASSES, write_dataset
from medcm.model.train import aux_targets, embed_dataset, evaluate_retrieval, lr_lambda, train


@pytest.fixture(scope="module")
def small_manifest(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("small"), n_train=48, n_dev=12, image_size=64)


@pytest.mark.slow
def test_training_learns_held_out_retrieval_far_above_chance(synthetic_manifest, trained_run):
    _, dev_records = split_records(read_manifest(synthetic_manifest), "train", "dev", 0.0, 0)
    result = trained_run
    assert result.history[-1]["step"] == 15 * (660 // 32)  # a few hundred steps
    assert result.history[-1]["train_loss"] < 0.5 * result.history[0]["train_loss"]

    # Re-measure on the held-out cases with the reloaded best checkpoint, independently of the loop.
    best = load_checkpoint(result.best_dir.parent)
    held_out = PairedImageDataset(records_to_pairs(dev_records), best.config.preprocess)
    metrics = evaluate_retrieval(best.model, held_out, best.config, torch.device("cpu"))
    chance = 1 / len(CLASSES)
    assert metrics["image_to_text"]["R@1"] >= 8 * chance, metrics
    assert metrics["text_to_image"]["R@1"] >= 8 * chance, metrics
    assert metrics["image_to_text"]["R@10"] >= 0.7, metrics


def test_resumed_run_equals_uninterrupted_run(small_manifest, tmp_path, small_config):
    train_records, dev_records = split_records(read_manifest(small_manifest), "train", "dev", 0.0, 0)
    straight = train(small_config(epochs=2), train_records, dev_records, tmp_path / "straight", progress=False)
    train(small_config(epochs=1), train_records, dev_records, tmp_path / "resumed", progress=False)
    resumed = train(small_config(epochs=2), train_records, dev_records, tmp_path / "resumed", resume=tmp_path / "resumed", progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    a = load_checkpoint(straight.last_dir).model.state_dict()
    b = load_checkpoint(resumed.last_dir).model.state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], msg=name)
    assert straight.history[-1]["image_to_text"] == resumed.history[-1]["image_to_text"]


def test_resume_refuses_a_different_model(small_manifest, tmp_path, small_config):
    train_records, dev_records = split_records(read_manifest(small_manifest), "train", "dev", 0.0, 0)
    train(small_config(epochs=1), train_records, dev_records, tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="differs"):
        train(small_config(arch="resnet18", epochs=2), train_records, dev_records, tmp_path / "run", resume=tmp_path / "run", progress=False)


def test_multitask_head_is_trained_and_saved_with_its_classes(small_manifest, tmp_path, small_config):
    records = read_manifest(small_manifest)
    train_records, dev_records = split_records(records, "train", "dev", 0.0, 0)
    config = small_config(epochs=1, aux_head=AuxHeadConfig(field="label", weight=0.5))
    result = train(config, train_records, dev_records, tmp_path / "run", progress=False)
    assert result.history[0]["train_aux"] > 0
    saved = read_checkpoint_info(result.best_dir)["config"]["model"]["aux_head"]
    assert saved["classes"] == sorted({r.meta["label"] for r in train_records})
    model = load_checkpoint(result.best_dir).model
    assert model.aux_head.out_features == len(saved["classes"])


def test_finding_head_is_set_to_its_best_f1_on_the_training_images(small_manifest, tmp_path, small_config):
    train_records, dev_records = split_records(read_manifest(small_manifest), "train", "dev", 0.0, 0)
    head = AuxHeadConfig(field=REPORT_FINDINGS, multi_label=True, on_embedding=True, embedding_scale=10.0)
    result = train(small_config(epochs=1, aux_head=head), train_records, dev_records, tmp_path / "run", progress=False)
    checkpoint = load_checkpoint(result.best_dir)
    labels = checkpoint.config.model.aux_head.classes
    assert "lesion" in labels and "normal" in labels
    assert set(checkpoint.metrics["finding_operating_points"]) == set(labels)
    assert "trainer_state.json" in {p.name for p in result.last_dir.iterdir()}  # resuming still works
    dataset = PairedImageDataset(records_to_pairs(train_records, REPORT_FINDINGS), checkpoint.config.preprocess)
    vectors = embed_dataset(checkpoint.model, dataset, checkpoint.config, torch.device("cpu")).numpy()
    targets = aux_targets(checkpoint.config.model.aux_head, [p.label for p in dataset.pairs]).numpy() > 0
    _, weight, bias = checkpoint.model.finding_head()
    logits = vectors @ weight.T + bias

    def f1(k: int, cut: float) -> float:
        predicted = logits[:, k] >= cut
        return 2 * (predicted & targets[:, k]).sum() / (predicted.sum() + targets[:, k].sum())

    for k in range(len(labels)):
        if 0 < targets[:, k].sum() < len(targets):  # at 0.5 (logit 0) no other cut does better
            assert f1(k, 0.0) >= max(f1(k, c) for c in logits[:, k]) - 1e-9


@pytest.mark.parametrize("losses", [{"mse": 1.0}, {"kl": 0.5, "infonce": 1.0}])
def test_alternative_losses_train(small_manifest, tmp_path, losses, small_config):
    train_records, dev_records = split_records(read_manifest(small_manifest), "train", "dev", 0.0, 0)
    result = train(small_config(epochs=1, losses=losses), train_records, dev_records, tmp_path / "run", progress=False)
    assert set(losses) <= {k.removeprefix("train_") for k in result.history[0]}


def test_warmup_then_cosine_schedule():
    factor = lr_lambda(warmup_steps=4, total_steps=14)
    assert [factor(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert factor(9) == pytest.approx(0.5)
    assert factor(14) == pytest.approx(0.0)


def test_cli_synth_then_train_end_to_end(tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    subprocess.run([sys.executable, "-m", "medcm", "synth", "--out", str(data), "--train", "40", "--dev", "8", "--size", "64"],
                   check=True, capture_output=True, text=True)
    done = subprocess.run(
        [sys.executable, "-m", "medcm", "train", "--data", str(data / "manifest.jsonl"), "--format", "manifest",
         "--config", "cpu-small", "--split", "train", "--val-split", "dev", "--epochs", "1", "--batch-size", "8",
         "--out", str(run), "--quiet"],
        capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "best checkpoint" in done.stdout
    info = json.loads((run / "best" / "config.json").read_text())
    assert info["config"]["name"] == "cpu-small" and info["config"]["train"]["epochs"] == 1
    assert set(info["metrics"]["image_to_text"]) == {"R@1", "R@5", "R@10", "median_rank"}
    assert (run / "last" / "optimizer.pt").is_file() and not (run / "best" / "optimizer.pt").exists()


def test_cli_reports_bad_input_in_one_line(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"image": "a.dcm"}\n')
    done = subprocess.run([sys.executable, "-m", "medcm", "train", "--data", str(manifest), "--out", str(tmp_path / "r")],
                          capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.strip() == f"error: {manifest}:1: field 'report' must be a non-empty string, got None"
