"""Checkpoints: a folder with the weights in safetensors and a JSON config, never a pickle.

    CKPT_DIR/
      config.json          what was trained and how images are preprocessed (`MedcmConfig`),
                           the frozen text weights' fingerprint, validation metrics
      model.safetensors    weights (a frozen text transformer is not copied: its local
                           folder and fingerprint are recorded instead; its trained top
                           layers, `text.train_layers`, are saved here)
      optimizer.pt         optional, for resuming; tensors only, read with weights_only=True
      trainer_state.json   optional, for resuming: epoch, step, best metric

A folder is written under a temporary name and renamed into place, so a crash never leaves a
half-written checkpoint where a good one was.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medcm.model.align import DualEncoder
from medcm.config import MedcmConfig, config_from_dict, config_to_dict, validate_config
from medcm.model.encoders.text import weights_fingerprint
from medcm.fileio import replace_folder, sha256_of_files

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
TRAINER_STATE_FILE = "trainer_state.json"
FORMAT = "medcm-checkpoint"
FORMAT_VERSION = 1
_FROZEN_PREFIX = "text.backbone."
# A "2.5d" volume encoder holds the image tower itself: its `volume.image.*` entries are the very
# tensors saved under `image.*`, so they are neither saved twice nor expected on load.
_SHARED_PREFIX = "volume.image."


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (in eval mode), its config and what was recorded with it.

    Attributes:
        model_id: "<config name>-<first 12 hex of the weights' sha256>": stored embeddings are keyed by
            it, so a retrained model never mixes its vectors with an older model's.
    """

    model: DualEncoder
    config: MedcmConfig
    metrics: dict[str, Any]
    path: Path
    model_id: str


def _not_saved(model: DualEncoder, name: str) -> bool:
    """Weights that live elsewhere: the frozen text layers (in their model folder) and shared copies."""
    if name.startswith(_SHARED_PREFIX):
        return True
    if not (model.config.text.freeze and name.startswith(_FROZEN_PREFIX)):
        return False
    trained = tuple(_FROZEN_PREFIX + p for p in model.text.trained_backbone_prefixes())
    return not (trained and name.startswith(trained))


def _weights_to_save(model: DualEncoder) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().cpu().contiguous().clone()
            for name, tensor in model.state_dict().items() if not _not_saved(model, name)}


def save_checkpoint(
    folder: str | Path,
    model: DualEncoder,
    config: MedcmConfig,
    metrics: dict[str, Any] | None = None,
    trainer_state: dict[str, Any] | None = None,
    optimizer_state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint folder atomically (replacing an existing one only once the new one is complete).

    Returns:
        The checkpoint folder.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    save_file(_weights_to_save(model), str(staging / WEIGHTS_FILE))
    info = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": config_to_dict(config),
        "text_weights_sha256": weights_fingerprint(model.text.model_dir) if config.model.text.freeze else None,
        "metrics": metrics or {},
    }
    (staging / CONFIG_FILE).write_text(json.dumps(info, indent=2), encoding="utf-8")
    if trainer_state is not None:
        (staging / TRAINER_STATE_FILE).write_text(json.dumps(trainer_state, indent=2), encoding="utf-8")
    if optimizer_state is not None:
        torch.save(optimizer_state, staging / OPTIMIZER_FILE)
    replace_folder(staging, folder)
    return folder


def resolve_checkpoint_dir(folder: str | Path) -> Path:
    """The checkpoint folder itself, or the `best` checkpoint of a `medcm train` run folder."""
    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file() and (folder / "best" / CONFIG_FILE).is_file():
        return folder / "best"
    return folder


def read_checkpoint_info(folder: str | Path) -> dict[str, Any]:
    """The parsed `config.json` of a checkpoint.

    Raises:
        FileNotFoundError: no such folder or no config.json in it.
        ValueError: the file is not a medcm checkpoint config.
    """
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: not a medcm checkpoint (no {CONFIG_FILE})")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err.msg})") from err
    if info.get("format") != FORMAT or info.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: format {info.get('format')!r} v{info.get('format_version')}, expected {FORMAT!r} v{FORMAT_VERSION}"
        )
    return info


def load_checkpoint(folder: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild the model of a checkpoint folder (or a run folder's `best`), in eval mode on `device`.

    Raises:
        FileNotFoundError / ValueError: missing files, a foreign config, weights that do not fit the
            config, or a frozen text model whose weights changed since training.
    """
    folder = resolve_checkpoint_dir(folder)
    info = read_checkpoint_info(folder)
    config = config_from_dict(MedcmConfig, info["config"])
    validate_config(config)
    model = DualEncoder(config.model, config.preprocess.image_size)
    weights_path = load_weights(model, folder, info)
    model.to(device).eval()
    model_id = f"{config.name}-{sha256_of_files([weights_path])[:12]}"
    return Checkpoint(model=model, config=config, metrics=info.get("metrics", {}), path=folder, model_id=model_id)


def load_weights(model: DualEncoder, folder: Path, info: dict[str, Any]) -> Path:
    """Load a checkpoint folder's weights into an already built `model` (same config); returns the weights file.

    Raises:
        FileNotFoundError / ValueError: no weights file, weights that do not fit the model, or a
            frozen text model whose weights changed since training.
    """
    from safetensors.torch import load_file

    _check_text_fingerprint(model, info, folder)
    weights_path = folder / WEIGHTS_FILE
    if not weights_path.is_file():
        raise FileNotFoundError(f"{folder}: checkpoint has no {WEIGHTS_FILE}")
    missing, unexpected = model.load_state_dict(load_file(str(weights_path)), strict=False)
    missing = [k for k in missing if not _not_saved(model, k)]
    if missing or unexpected:
        raise ValueError(
            f"{weights_path}: weights do not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return weights_path


def _check_text_fingerprint(model: DualEncoder, info: dict[str, Any], folder: Path) -> None:
    expected = info.get("text_weights_sha256")
    if expected is None:
        return
    actual = weights_fingerprint(model.text.model_dir)
    if actual != expected:
        raise ValueError(
            f"{folder}: the frozen text model at {model.text.model_dir} has different weights from the ones "
            "this checkpoint was trained with; restore that model folder or retrain"
        )


def load_trainer_state(folder: str | Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Trainer state and optimizer state (None when absent) saved for resuming.

    Raises:
        FileNotFoundError: the folder has no trainer state (it was not saved by `medcm train`).
    """
    folder = Path(folder)
    state_path = folder / TRAINER_STATE_FILE
    if not state_path.is_file():
        raise FileNotFoundError(f"{folder}: cannot resume, no {TRAINER_STATE_FILE} (use the 'last' checkpoint of a run)")
    state = json.loads(state_path.read_text(encoding="utf-8"))
    optimizer_path = folder / OPTIMIZER_FILE
    optimizer = torch.load(optimizer_path, map_location="cpu", weights_only=True) if optimizer_path.is_file() else None
    return state, optimizer
