"""Shared fixtures: the development data folder, a tiny model config, a synthetic data set."""

from __future__ import annotations

import os
import shutil
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

    from medcm.model.align import DualEncoder

    torch.manual_seed(0)
    return DualEncoder(tiny_config.model, tiny_config.preprocess.image_size).eval()


@pytest.fixture(scope="session")
def synthetic_manifest(tmp_path_factory):
    """Synthetic shapes cases at 64 px: 20 training cases per class, one dev case per class."""
    from medcm.data.synthetic_radiographs import CLASSES, write_dataset

    return write_dataset(tmp_path_factory.mktemp("synth"), n_train=20 * len(CLASSES), n_dev=len(CLASSES), image_size=64)


def small_model_config(arch: str = "resnet10", epochs: int = 1, batch_size: int = 8, **model_changes):
    """cpu-small with a small trunk at 64 px: what the training and engine tests train."""
    import dataclasses

    from medcm.config import get_config

    base = get_config("cpu-small")
    return dataclasses.replace(
        base,
        name="test",
        model=dataclasses.replace(base.model, image=dataclasses.replace(base.model.image, arch=arch), embed_dim=64, **model_changes),
        preprocess=dataclasses.replace(base.preprocess, image_size=64),
        train=dataclasses.replace(base.train, epochs=epochs, batch_size=batch_size, warmup_steps=20),
    )


@pytest.fixture(scope="session")
def synthetic_pool(synthetic_manifest, tmp_path_factory):
    """A factory: `make(n, name)` copies the first `n` synthetic training cases into `<fresh folder>/pool` and
    returns the fresh folder (a case database can sit beside the pool)."""
    cases = synthetic_manifest.parent / "cases"

    def make(n: int, name: str) -> Path:
        root = tmp_path_factory.mktemp(name)
        for i in range(n):
            shutil.copytree(cases / f"train-{i:05d}", root / "pool" / f"train-{i:05d}")
        return root

    return make


@pytest.fixture(scope="session")
def trained_run(synthetic_manifest, tmp_path_factory):
    """A model trained for a few hundred steps on the synthetic cases (about half a minute on 2 cores)."""
    from medcm.data.manifest import read_manifest, split_records
    from medcm.model.train import train

    train_records, dev_records = split_records(read_manifest(synthetic_manifest), "train", "dev", 0.0, 0)
    return train(small_model_config(epochs=15, batch_size=32), train_records, dev_records,
                 tmp_path_factory.mktemp("run"), progress=False)


@pytest.fixture(scope="session")
def small_config():
    """The `small_model_config` factory, for tests that train their own small models."""
    return small_model_config


@pytest.fixture(scope="session")
def untrained_checkpoint(tmp_path_factory):
    """A factory of untrained, seeded 32-px checkpoints with a tiny volume encoder (8 slices of 32 px) or none.

    `untrained_checkpoint(volume=True, kind="3d")` returns the checkpoint folder; each call writes a new one.
    """
    import dataclasses

    import torch

    from medcm.model.align import DualEncoder
    from medcm.checkpoint import save_checkpoint
    from medcm.config import VolumeEncoderConfig, get_config

    def make(volume: bool = True, kind: str = "3d") -> Path:
        base = get_config("cpu-small")
        volume_config = VolumeEncoderConfig(kind=kind, depth=8, size=32, n_slices=4) if volume else None
        config = dataclasses.replace(base, name=f"vol-{kind}" if volume else "no-vol",
                                     model=dataclasses.replace(base.model, embed_dim=32, volume=volume_config),
                                     preprocess=dataclasses.replace(base.preprocess, image_size=32))
        torch.manual_seed(0)
        folder = tmp_path_factory.mktemp("untrained-ckpt") / "ckpt"
        return save_checkpoint(folder, DualEncoder(config.model, 32).eval(), config)

    return make


@pytest.fixture
def postgres_url():
    """A PostgreSQL database URL, emptied after the test; skips without a server.

    CI starts one with scripts/start_test_postgres.sh and sets MEDCM_TEST_POSTGRES_URL.
    """
    url = os.environ.get("MEDCM_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("no PostgreSQL server: set MEDCM_TEST_POSTGRES_URL (scripts/start_test_postgres.sh starts one)")
    yield url
    from sqlalchemy import create_engine

    engine = create_engine(url)
    with engine.begin() as conn:  # leave an empty database for the next test
        conn.exec_driver_sql("DROP SCHEMA public CASCADE")
        conn.exec_driver_sql("CREATE SCHEMA public")
    engine.dispose()
