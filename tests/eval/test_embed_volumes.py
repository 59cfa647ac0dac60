"""`embed_records` with a volume encoder: one image row per CT series (the numbers of encode_volume),
one per other image; without one, one row per slice exactly as the 2D tower embeds each file; a
series that is not a trustworthy volume falls back to its slices and is named in `errors`."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from medcm.checkpoint import load_checkpoint
from medcm.data.manifest import load_image, read_manifest
from medcm.model.encoders.volume import volume_input
from medcm.eval.evaluate import embed_records
from medcm.model.preprocess import prepare_image
from medcm.dicom.series import read_volume

DEPTH, SIZE = 8, 32


@pytest.fixture(scope="module")
def records(tmp_path_factory, synthetic_manifest):
    """Two CT cases; the first also lists a DX radiograph after its slices."""
    from medcm.data.synthetic_ct import write_volume_dataset

    cases = read_manifest(write_volume_dataset(tmp_path_factory.mktemp("ct"), n_train=2, n_dev=0, depth=DEPTH, size=SIZE))
    radiograph = str(synthetic_manifest.parent / "cases" / "train-00000" / "image.dcm")
    first = dataclasses.replace(cases[0], images=(*cases[0].images, radiograph),
                                image_meta=tuple({"modality": "CT"} for _ in range(DEPTH)) + ({"modality": "DX"},))
    return [first, cases[1]]


@pytest.fixture(scope="module")
def volume_checkpoint(untrained_checkpoint):
    return load_checkpoint(untrained_checkpoint())


def _volume_vector(checkpoint, files) -> np.ndarray:
    prepared = volume_input(read_volume(list(files)), checkpoint.config.model.volume, checkpoint.config.preprocess)
    with torch.no_grad():
        return checkpoint.model.encode_volume(prepared[None]).numpy()[0]


def _image_vectors(checkpoint, files) -> np.ndarray:
    batch = torch.stack([prepare_image(load_image(f), checkpoint.config.preprocess) for f in files])
    with torch.no_grad():
        return checkpoint.model.encode_image(batch).numpy()


def test_one_row_per_volume_series_and_per_other_image(volume_checkpoint, records):
    embedded = embed_records(volume_checkpoint, records, torch.device("cpu"))
    first, second = records
    assert embedded.errors == []
    assert embedded.image_case == [first.case_id, first.case_id, second.case_id]
    assert [meta["modality"] for meta in embedded.image_meta[:2]] == ["CT", "DX"], "meta of the series' first file"
    assert embedded.image_meta[2] == second.meta
    np.testing.assert_allclose(embedded.image_emb[0], _volume_vector(volume_checkpoint, first.images[:DEPTH]), atol=1e-5)
    np.testing.assert_allclose(embedded.image_emb[1], _image_vectors(volume_checkpoint, first.images[DEPTH:])[0],
                               atol=1e-5)
    np.testing.assert_allclose(embedded.image_emb[2], _volume_vector(volume_checkpoint, second.images), atol=1e-5)
    assert embedded.report_emb.shape == (2, 32)


def test_without_a_volume_encoder_every_slice_is_a_row(records, untrained_checkpoint):
    checkpoint = load_checkpoint(untrained_checkpoint(volume=False))
    embedded = embed_records(checkpoint, records, torch.device("cpu"))
    files = [f for record in records for f in record.images]
    assert embedded.errors == [] and len(embedded.image_case) == len(files) == 2 * DEPTH + 1
    assert embedded.image_meta == [r.meta_of_image(i) for r in records for i in range(len(r.images))]
    np.testing.assert_allclose(embedded.image_emb, _image_vectors(checkpoint, files), atol=1e-6)


def test_a_series_with_a_missing_slice_falls_back_to_its_slices(volume_checkpoint, records):
    gap = dataclasses.replace(records[1], images=records[1].images[:3] + records[1].images[4:])
    embedded = embed_records(volume_checkpoint, [gap], torch.device("cpu"))
    assert len(embedded.image_case) == DEPTH - 1
    np.testing.assert_allclose(embedded.image_emb, _image_vectors(volume_checkpoint, gap.images), atol=1e-5)
    (error,) = embedded.errors
    series_uid = read_volume(records[1].images).series_uid
    assert error.startswith(f"{gap.case_id}: series {series_uid} (") and "gap" in error
    assert error.endswith(f"so its {DEPTH - 1} images are embedded one by one, not as one volume")


def test_an_unreadable_file_is_an_error_and_the_rest_of_the_case_still_counts(volume_checkpoint, records, tmp_path):
    missing = str(tmp_path / "missing.dcm")
    case = dataclasses.replace(records[1], images=(*records[1].images, missing))
    embedded = embed_records(volume_checkpoint, [case], torch.device("cpu"))
    assert len(embedded.image_case) == 1 and len(embedded.errors) == 1 and missing in embedded.errors[0]
    np.testing.assert_allclose(embedded.image_emb[0], _volume_vector(volume_checkpoint, records[1].images), atol=1e-5)
