"""Shared fixtures: the development data folder, a tiny model config, a synthetic data set."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests must never reach a model hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data`, present in CI and development, absent in a user's fresh clone."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"development data not found at {SHARED_DATA} (only present beside the team's checkout)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_config():
    """cpu-small shrunk to 64 px so a model builds and runs in well under a second."""
    import dataclasses

    from medcm.config import get_config

    config = get_config("cpu-small")
    return dataclasses.replace(
        config,
        name="tiny",
        model=dataclasses.replace(config.model, embed_dim=32),
        preprocess=dataclasses.replace(config.preprocess, image_size=64),
        train=dataclasses.replace(config.train, epochs=1, batch_size=8, warmup_steps=2),
    )


@pytest.fixture(scope="session")
def tiny_model(tiny_config):
    """A freshly initialised tiny dual encoder (shared: tests must not train it in place)."""
    import torch

    from medcm.align import DualEncoder

    torch.manual_seed(0)
    return DualEncoder(tiny_config.model, tiny_config.preprocess.image_size).eval()
