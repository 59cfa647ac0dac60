"""medcm.engine.embed: a CT series is one volume vector (given a volume encoder), other images one vector each;
the numbers are those of encode_volume / encode_image on the same inputs, whatever the file order or
container, and a series that is not a trustworthy volume falls back to its slices with a warning."""

from __future__ import annotations

import dataclasses
import logging
import random
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from medcm.checkpoint import load_checkpoint
from medcm.model.encoders.volume import volume_input
from medcm.engine.ingest import read_images
from medcm.engine.embed import VisualVector, embed_images_2d, embed_visual, study_vector, volume_key
from medcm.dicom.series import read_volume

DEPTH, SIZE = 8, 32


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two synthetic CT series (8 slices of 32 px each, with reports) and one DX radiograph."""
    from medcm.data.synthetic_radiographs import write_dataset
    from medcm.data.synthetic_ct import write_volume_dataset

    root = tmp_path_factory.mktemp("visual-data")
    write_volume_dataset(root / "ct", n_train=2, n_dev=0, depth=DEPTH, size=SIZE)
    write_dataset(root / "dx", n_train=1, n_dev=0, image_size=64)
    return root


@pytest.fixture(scope="module")
def checkpoint(untrained_checkpoint):
    return load_checkpoint(untrained_checkpoint())


@pytest.fixture(scope="module")
def plain_checkpoint(untrained_checkpoint):
    return load_checkpoint(untrained_checkpoint(volume=False))


def _series(data: Path, case: str = "case-train-00000") -> list:
    images, errors = read_images([data / "ct" / case])
    assert errors == [] and len(images) == DEPTH
    return images


def _radiograph(data: Path) -> list:
    images, errors = read_images([data / "dx" / "cases" / "train-00000" / "image.dcm"])
    assert errors == [] and len(images) == 1
    return images


def _reference_volume_vector(checkpoint, files: list[str]) -> np.ndarray:
    volume = read_volume(files)
    prepared = volume_input(volume, checkpoint.config.model.volume, checkpoint.config.preprocess)
    with torch.no_grad():
        return checkpoint.model.encode_volume(prepared[None]).numpy()[0]


def test_a_series_is_one_volume_vector_and_a_radiograph_its_own(checkpoint, data):
    series, radiograph = _series(data), _radiograph(data)
    vectors, warnings = embed_visual(checkpoint, radiograph + series, "cpu")
    assert warnings == []
    assert [(v.is_volume, v.slices) for v in vectors] == [(False, 1), (True, DEPTH)], "in order of first appearance"
    image, volume = vectors
    assert volume.series_uid == series[0].meta.series_uid and volume.vector.shape == (32,)
    middle = next(im for im in series if im.meta.path.endswith(f"slice-{DEPTH // 2:03d}.dcm"))  # written bottom to top
    assert volume.key == middle.meta.sop_instance_uid
    np.testing.assert_allclose(volume.vector, _reference_volume_vector(checkpoint, [im.meta.path for im in series]),
                               atol=1e-5)
    assert np.linalg.norm(volume.vector) == pytest.approx(1.0, abs=1e-5)
    assert (image.key, image.is_volume) == (radiograph[0].meta.sop_instance_uid, False)
    np.testing.assert_allclose(image.vector, embed_images_2d(checkpoint, radiograph, "cpu")[0], atol=1e-6)


def test_without_a_volume_encoder_every_slice_is_a_2d_vector(plain_checkpoint, data):
    series = _series(data)
    vectors, warnings = embed_visual(plain_checkpoint, series, "cpu")
    assert warnings == [] and not any(v.is_volume for v in vectors)
    assert [v.key for v in vectors] == [im.meta.sop_instance_uid for im in series]
    np.testing.assert_allclose(np.stack([v.vector for v in vectors]), embed_images_2d(plain_checkpoint, series, "cpu"),
                               atol=1e-6)


def test_shuffled_files_and_a_zip_give_the_same_volume_vector(checkpoint, data, tmp_path):
    series = _series(data)
    (reference,), _ = embed_visual(checkpoint, series, "cpu")
    shuffled = list(series)
    random.Random(3).shuffle(shuffled)
    assert shuffled != series
    (again,), _ = embed_visual(checkpoint, shuffled, "cpu")
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for image in series:
            out.write(image.meta.path, f"ct/{Path(image.meta.path).name}")
    zipped, errors = read_images([archive])
    assert errors == [] and all(".zip:" in im.meta.path for im in zipped)
    (from_zip,), _ = embed_visual(checkpoint, zipped, "cpu")
    for other in (again, from_zip):
        assert (other.key, other.is_volume) == (reference.key, True)
        np.testing.assert_allclose(other.vector, reference.vector, atol=1e-5)


def test_a_series_with_a_missing_slice_falls_back_to_its_slices_with_a_warning(checkpoint, data, tmp_path):
    folder = tmp_path / "gap"
    shutil.copytree(data / "ct" / "case-train-00001", folder)
    (folder / "slice-003.dcm").unlink()
    images, _ = read_images([folder])
    vectors, warnings = embed_visual(checkpoint, images, "cpu")
    assert [v.key for v in vectors] == [im.meta.sop_instance_uid for im in images] and not any(v.is_volume for v in vectors)
    np.testing.assert_allclose(np.stack([v.vector for v in vectors]), embed_images_2d(checkpoint, images, "cpu"), atol=1e-6)
    (warning,) = warnings
    assert warning.startswith(f"series {images[0].meta.series_uid} (") and "gap" in warning
    assert "\n" not in warning and warning.endswith(f"so its {DEPTH - 1} images are embedded one by one, not as one volume")


def test_two_series_and_a_radiograph_in_one_call(checkpoint, data):
    images = _series(data, "case-train-00000") + _radiograph(data) + _series(data, "case-train-00001")
    vectors, _ = embed_visual(checkpoint, images, "cpu")
    assert [v.is_volume for v in vectors] == [True, False, True]
    np.testing.assert_allclose(vectors[2].vector, _reference_volume_vector(
        checkpoint, [im.meta.path for im in images[DEPTH + 1:]]), atol=1e-5)


def test_a_25d_encoder_embeds_the_series_as_one_volume_too(data, tmp_path, untrained_checkpoint):
    checkpoint = load_checkpoint(untrained_checkpoint(kind="2.5d"))
    series = _series(data)
    (vector,), warnings = embed_visual(checkpoint, series, "cpu")
    assert warnings == [] and vector.is_volume
    np.testing.assert_allclose(vector.vector, _reference_volume_vector(checkpoint, [im.meta.path for im in series]),
                               atol=1e-5)


def test_study_vector_weighs_each_series_once():
    def unit(*values):
        vector = np.array(values, np.float32)
        return vector / np.linalg.norm(vector)

    volume = VisualVector("v", "series-ct", unit(1, 0, 0), True, 100)
    slices = [VisualVector(f"s{i}", "series-mr", unit(0, 1, 1 if i else -1), False, 1) for i in range(2)]
    # MR mean (0, 1, 0); CT (1, 0, 0): the study is their normalised mean, whatever the slice counts.
    np.testing.assert_allclose(study_vector([volume, *slices]), unit(1, 1, 0), atol=1e-6)
    np.testing.assert_allclose(study_vector([volume]), unit(1, 0, 0), atol=1e-6)
    with pytest.raises(ValueError, match="no readable DICOM image"):
        study_vector([])


def test_volume_key_is_the_middle_slice_without_a_frame_suffix(data):
    volume = read_volume([im.meta.path for im in _series(data)])
    assert volume_key(volume) == volume.sop_instance_uids[DEPTH // 2]
    frames = dataclasses.replace(volume, sop_instance_uids=("1.2.3#1", "1.2.3#2", "1.2.3#3"))
    assert volume_key(frames) == "1.2.3"


def test_engine_logs_the_fallback_warning(checkpoint, data, tmp_path, caplog):
    """The engine passes visual warnings to the log (the query still gets a vector)."""
    from medcm.engine.facade import Engine

    class NoStore:
        url = "sqlite://"

    engine = Engine(NoStore(), device="cpu")
    engine.checkpoint = checkpoint
    folder = tmp_path / "gap"
    shutil.copytree(data / "ct" / "case-train-00000", folder)
    (folder / "slice-005.dcm").unlink()
    images, _ = read_images([folder])
    with caplog.at_level(logging.WARNING, logger="medcm.engine.facade"):
        query = engine.study_embedding(images)
    assert f"series {images[0].meta.series_uid} (" in caplog.text and "not as one volume" in caplog.text
    mean = embed_images_2d(checkpoint, images, "cpu").mean(axis=0)
    np.testing.assert_allclose(query, mean / np.linalg.norm(mean), atol=1e-5)
