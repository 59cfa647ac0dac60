from __future__ import annotations

import json

import pytest
import torch

from medcm.checkpoint import CONFIG_FILE, WEIGHTS_FILE, load_checkpoint, read_checkpoint_info, save_checkpoint


def _embed(model):
    torch.manual_seed(1)
    images = torch.randn(3, 1, 64, 64)
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(["small effusion", "normal chest"])


def test_round_trip_gives_identical_embeddings(tmp_path, tiny_model, tiny_config):
    save_checkpoint(tmp_path / "ckpt", tiny_model, tiny_config, metrics={"score": 0.5})
    loaded = load_checkpoint(tmp_path / "ckpt")
    for before, after in zip(_embed(tiny_model), _embed(loaded.model)):
        torch.testing.assert_close(before, after, rtol=0, atol=0)
    assert loaded.config == tiny_config
    assert loaded.metrics == {"score": 0.5}
    assert not loaded.model.training


def test_frozen_text_weights_are_not_copied_but_fingerprinted(tmp_path, tiny_model, tiny_config):
    from safetensors import safe_open

    folder = save_checkpoint(tmp_path / "ckpt", tiny_model, tiny_config)
    with safe_open(str(folder / WEIGHTS_FILE), "pt") as weights:
        keys = list(weights.keys())
    assert not any(k.startswith("text.backbone.") for k in keys)
    assert any(k.startswith("text.proj.") for k in keys) and "logit_scale" in keys
    assert len(read_checkpoint_info(folder)["text_weights_sha256"]) == 64


def test_config_json_holds_the_preprocessing(tmp_path, tiny_model, tiny_config):
    folder = save_checkpoint(tmp_path / "ckpt", tiny_model, tiny_config)
    info = json.loads((folder / CONFIG_FILE).read_text())
    assert info["config"]["preprocess"] == {"image_size": 64, "mean": 0.5, "std": 0.25, "frame": "middle"}


def test_overwrite_is_atomic_and_leaves_no_staging_folders(tmp_path, tiny_model, tiny_config):
    save_checkpoint(tmp_path / "ckpt", tiny_model, tiny_config, metrics={"epoch": 1})
    save_checkpoint(tmp_path / "ckpt", tiny_model, tiny_config, metrics={"epoch": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert read_checkpoint_info(tmp_path / "ckpt")["metrics"] == {"epoch": 2}


def test_run_folder_resolves_to_its_best_checkpoint(tmp_path, tiny_model, tiny_config):
    save_checkpoint(tmp_path / "run" / "best", tiny_model, tiny_config)
    assert load_checkpoint(tmp_path / "run").path == tmp_path / "run" / "best"


def test_missing_and_foreign_checkpoints_are_clear_errors(tmp_path, tiny_model, tiny_config):
    with pytest.raises(FileNotFoundError, match="not a medcm checkpoint"):
        load_checkpoint(tmp_path)
    folder = save_checkpoint(tmp_path / "ckpt", tiny_model, tiny_config)
    info = json.loads((folder / CONFIG_FILE).read_text())
    info["format_version"] = 99
    (folder / CONFIG_FILE).write_text(json.dumps(info))
    with pytest.raises(ValueError, match="v99"):
        load_checkpoint(folder)


def test_changed_frozen_text_model_is_detected(tmp_path, tiny_model, tiny_config):
    folder = save_checkpoint(tmp_path / "ckpt", tiny_model, tiny_config)
    info = json.loads((folder / CONFIG_FILE).read_text())
    info["text_weights_sha256"] = "0" * 64
    (folder / CONFIG_FILE).write_text(json.dumps(info))
    with pytest.raises(ValueError, match="different weights"):
        load_checkpoint(folder)


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path, tiny_model, tiny_config):
    folder = save_checkpoint(tmp_path / "ckpt", tiny_model, tiny_config)
    info = json.loads((folder / CONFIG_FILE).read_text())
    info["config"]["model"]["image"]["arch"] = "resnet34"
    (folder / CONFIG_FILE).write_text(json.dumps(info))
    with pytest.raises(ValueError, match="do not match"):
        load_checkpoint(folder)
