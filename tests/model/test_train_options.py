"""Training speed options: channels-last memory, torch.compile and prefetching workers change speed, not results."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from medcm.model.align import DualEncoder
from medcm.checkpoint import load_checkpoint
from medcm.config import VolumeEncoderConfig, validate_config
from medcm.data.manifest import read_manifest, split_records
from medcm.data.synthetic_radiographs import write_dataset
from medcm.model.train import _batch_inputs, _speed_options, train


def _with(config, **train_changes):
    return dataclasses.replace(config, train=dataclasses.replace(config.train, **train_changes))


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    manifest = write_dataset(tmp_path_factory.mktemp("options"), n_train=24, n_dev=4, image_size=64)
    return split_records(read_manifest(manifest), "train", "dev", 0.0, 0)


def test_channels_last_puts_weights_and_batches_in_nhwc_and_keeps_the_numbers(small_config):
    config = small_config(volume=VolumeEncoderConfig(depth=8, size=32))
    fast = _with(config, channels_last=True)
    torch.manual_seed(0)
    plain = DualEncoder(config.model, 64).eval()
    nhwc = DualEncoder(config.model, 64).eval()
    nhwc.load_state_dict(plain.state_dict())
    _speed_options(nhwc, fast)
    assert nhwc.image.trunk.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert nhwc.volume.trunk.conv1.weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert list(nhwc.state_dict()) == list(plain.state_dict())

    images, volumes = torch.rand(3, 1, 64, 64), torch.rand(2, 1, 8, 32, 32)
    generator = torch.Generator().manual_seed(0)
    fast_images, fast_volumes = _batch_inputs(images, volumes, _with(fast, augment=False), torch.device("cpu"), generator)
    assert fast_images.is_contiguous(memory_format=torch.channels_last)
    assert fast_volumes.is_contiguous(memory_format=torch.channels_last_3d)
    plain_images, plain_volumes = _batch_inputs(images, volumes, _with(config, augment=False), torch.device("cpu"),
                                                generator)
    with torch.no_grad():
        torch.testing.assert_close(nhwc.encode_image(fast_images), plain.encode_image(plain_images), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(nhwc.encode_volume(fast_volumes), plain.encode_volume(plain_volumes),
                                   atol=1e-5, rtol=1e-4)


def test_a_channels_last_run_with_prefetching_workers_trains_like_a_plain_one(records, tmp_path, small_config):
    train_records, dev_records = records
    config = small_config(epochs=1, batch_size=8)
    plain = train(config, train_records, dev_records, tmp_path / "plain", progress=False)
    fast = train(_with(config, channels_last=True, num_workers=2, prefetch_batches=2), train_records, dev_records,
                 tmp_path / "fast", progress=False)
    assert fast.history[0]["train_loss"] == pytest.approx(plain.history[0]["train_loss"], rel=1e-4)
    a, b = load_checkpoint(plain.last_dir).model.state_dict(), load_checkpoint(fast.last_dir).model.state_dict()
    assert list(a) == list(b)
    # NHWC convolutions round differently; AdamW's normalised steps can turn that into whole-step
    # differences on near-zero gradients, so the bound is a fraction of lr × steps, not 1e-6.
    steps, lr = fast.history[0]["step"], config.train.lr
    worst = max(float((a[name].float() - b[name].float()).abs().max()) for name in a)
    assert worst < 0.5 * lr * steps, worst


def test_compile_keeps_parameter_names_and_outputs(small_config):
    config = small_config()
    torch.manual_seed(0)
    plain = DualEncoder(config.model, 64).eval()
    compiled = DualEncoder(config.model, 64).eval()
    compiled.load_state_dict(plain.state_dict())
    _speed_options(compiled, _with(config, compile=True))
    assert list(compiled.state_dict()) == list(plain.state_dict())  # checkpoints stay loadable
    images = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(compiled.encode_image(images), plain.encode_image(images), atol=1e-4, rtol=1e-3)


def test_prefetch_needs_at_least_one_batch(small_config):
    with pytest.raises(ValueError, match=r"train\.prefetch_batches: got 0, expected >= 1"):
        validate_config(_with(small_config(), prefetch_batches=0))
