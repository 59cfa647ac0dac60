"""Training on CT series as volumes: pairs, the mixed image/volume dataset, and the training loop."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from medcm.model.align import AlignmentLoss, DualEncoder, positive_mask
from medcm.checkpoint import load_checkpoint
from medcm.config import VolumeEncoderConfig
from medcm.data.manifest import PairedImageDataset, collate_pairs, read_manifest, records_to_pairs, split_records
from medcm.dicom.write import write_image
from medcm.model.encoders.volume import prepare_volume
from medcm.model.preprocess import augment_volumes, normalize
from medcm.data.synthetic_ct import write_volume_dataset
from medcm.model.train import evaluate_retrieval, train
from medcm.dicom.series import read_volume

VOLUME = VolumeEncoderConfig(kind="3d", depth=8, size=32)


@pytest.fixture(scope="module")
def volume_manifest(tmp_path_factory):
    """8-slice synthetic CT series at 32 px, plus a 2D image (Secondary Capture) in two training cases."""
    folder = tmp_path_factory.mktemp("volumes")
    manifest = write_volume_dataset(folder, n_train=16, n_dev=4, seed=3, depth=8, size=32)
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    rng = np.random.default_rng(0)
    for line in lines[:2]:
        name = f"{line['case_id']}/radiograph.dcm"
        write_image(folder / name, rng.random((40, 40)), modality="CR")
        line["images"].insert(3, name)  # in the middle of the series' files
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest


def _config(small_config, volume=VOLUME, **train_changes):
    config = small_config(epochs=2, batch_size=6, volume=volume)
    return dataclasses.replace(config, train=dataclasses.replace(config.train, warmup_steps=2, **train_changes))


def test_a_series_becomes_one_pair_at_its_first_file(volume_manifest):
    records = read_manifest(volume_manifest)
    mixed = records[0]
    pairs = records_to_pairs([mixed], volumes=True)
    assert [len(p.series) for p in pairs] == [8, 0]  # the volume, then the radiograph that followed its first slice
    assert pairs[0].series == tuple(f for f in mixed.images if "radiograph" not in f)
    assert pairs[0].image == mixed.images[0] and pairs[1].image.endswith("radiograph.dcm")
    assert len(records_to_pairs([mixed])) == 9  # without a volume encoder, every slice is a 2D pair


def test_dataset_holds_images_and_volumes_and_collates_images_first(volume_manifest):
    records = read_manifest(volume_manifest)[:3]
    dataset = PairedImageDataset(records_to_pairs(records, volumes=True), small_preprocess(), volume=VOLUME)
    assert len(dataset) == 5 and dataset.volume_count == 3 and tuple(dataset.images.shape) == (2, 1, 64, 64)
    assert tuple(dataset.volumes.shape) == (3, 1, 8, 32, 32) and dataset.volumes.dtype == torch.uint8

    volume = read_volume(dataset.pairs[0].series)
    expected = prepare_volume(volume.voxels, volume.spacing, volume.modality, VOLUME)
    item, index = dataset[0]
    assert index == 0 and (item - expected).abs().max() <= 0.5 / 255 + 1e-6  # stored as uint8

    images, volumes, indices = collate_pairs([dataset[i] for i in range(len(dataset))])
    kinds = ["volume" if p.series else "image" for p in dataset.pairs]
    assert kinds == ["volume", "image", "volume", "image", "volume"]
    assert indices.tolist() == [1, 3, 0, 2, 4]
    assert tuple(images.shape) == (2, 1, 64, 64) and tuple(volumes.shape) == (3, 1, 8, 32, 32)


def test_a_series_with_a_missing_slice_is_dropped_naming_its_file(volume_manifest, tmp_path):
    record = read_manifest(volume_manifest)[5]
    broken = tmp_path / "broken"
    shutil.copytree(volume_manifest.parent / record.case_id, broken)
    (broken / "slice-004.dcm").unlink()
    files = tuple(str(p) for p in sorted(broken.glob("slice-*.dcm")))
    record = dataclasses.replace(record, images=files)
    pairs = records_to_pairs([record, read_manifest(volume_manifest)[6]], volumes=True)
    dataset = PairedImageDataset(pairs, small_preprocess(), volume=VOLUME)
    assert len(dataset) == 1 and len(dataset.errors) == 1
    error = str(dataset.errors[0])
    assert error.startswith(files[0]) and "not a usable volume" in error and "missing" in error


def test_one_loss_over_a_mixed_batch_trains_both_towers(small_config):
    config = _config(small_config)
    torch.manual_seed(0)
    model = DualEncoder(config.model, 64)
    images, volumes = torch.rand(3, 1, 64, 64), torch.rand(2, 1, 8, 32, 32)
    texts = ["left effusion", "right nodule", "normal", "rib fracture", "left effusion"]
    out = model(normalize(images, config.preprocess), texts, normalize(volumes, config.preprocess))
    assert tuple(out.image.shape) == (5, 64) and out.aux_logits is None
    loss = AlignmentLoss({"infonce": 1.0})(out, positive_mask(["a", "b", "c", "d", "e"]))
    loss.total.backward()
    image_grad = model.image.trunk.conv1.weight.grad
    volume_grad = model.volume.trunk.conv1.weight.grad
    assert image_grad is not None and image_grad.abs().sum() > 0
    assert volume_grad is not None and volume_grad.abs().sum() > 0
    with pytest.raises(ValueError, match="got 5 images and volumes but 4 texts"):
        model(images, texts[:4], volumes)


def test_volume_augmentation_warps_every_slice_alike():
    slice_ = torch.rand(1, 32, 32)
    volumes = torch.stack([slice_.expand(8, 32, 32)[None]] * 2)  # [2, 1, 8, 32, 32], all slices equal
    out = augment_volumes(volumes, torch.Generator().manual_seed(0))
    assert tuple(out.shape) == (2, 1, 8, 32, 32)
    torch.testing.assert_close(out[:, :, 1:], out[:, :, :1].expand(-1, -1, 7, -1, -1))  # one warp per volume
    assert (out[0] - out[1]).abs().max() > 1e-3  # a different draw per volume
    assert (out[0] - volumes[0]).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["3d", "2.5d"])
def test_training_on_volumes_saves_a_volume_encoder_that_reloads(volume_manifest, tmp_path, small_config, kind):
    volume = VolumeEncoderConfig(kind=kind, depth=8, size=64 if kind == "2.5d" else 32, n_slices=4)
    config = _config(small_config, volume=volume)
    train_records, dev_records = split_records(read_manifest(volume_manifest), "train", "dev", 0.0, 0)
    torch.manual_seed(config.train.seed)
    initial = DualEncoder(config.model, 64).volume.state_dict()
    result = train(config, train_records, dev_records, tmp_path / kind, progress=False)
    assert [h["epoch"] for h in result.history] == [1, 2]

    best = load_checkpoint(result.best_dir)
    assert best.config.model.volume == volume
    trained = best.model.volume.state_dict()
    changed = [name for name in trained if not torch.equal(trained[name], initial[name])]
    assert len(changed) > len(trained) // 2, "the volume encoder was not trained"

    # The loop's validation numbers are reproduced from the reloaded checkpoint: 4 dev volumes, 4 reports.
    dev = PairedImageDataset(records_to_pairs(dev_records, volumes=True), best.config.preprocess, volume=volume)
    assert dev.volume_count == 4 and len(dev) == 4
    metrics = evaluate_retrieval(best.model, dev, best.config, torch.device("cpu"))
    logged = next(h for h in result.history if h["score"] == max(x["score"] for x in result.history))
    assert metrics["image_to_text"] == pytest.approx(logged["image_to_text"])


def test_training_on_2d_images_only_drops_the_volume_encoder(tmp_path, small_config):
    from medcm.data.synthetic_radiographs import write_dataset

    manifest = write_dataset(tmp_path / "flat", n_train=12, n_dev=4, image_size=64)
    train_records, dev_records = split_records(read_manifest(manifest), "train", "dev", 0.0, 0)
    result = train(_config(small_config, epochs=1), train_records, dev_records, tmp_path / "run", progress=False)
    best = load_checkpoint(result.best_dir)
    assert best.config.model.volume is None and best.model.volume is None
    assert not any(name.startswith("volume.") for name in best.model.state_dict())


def small_preprocess():
    from medcm.config import PreprocessConfig

    return PreprocessConfig(image_size=64)
