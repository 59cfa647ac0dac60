from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medcm.config import ImageEncoderConfig, PreprocessConfig
from medcm.dicom.display import apply_window as _window
from medcm.model.encoders.image import ImageEncoder, build_trunk_3d
from medcm.model.encoders.volume import (
    GatedAttentionPool,
    SliceAttentionEncoder,
    VolumeEncoder3D,
    VolumeEncoderConfig,
    build_volume_encoder,
    prepare_volume,
    sample_slice_indices,
    study_embedding,
)
from medcm.model.preprocess import normalize, prepare_image

EMBED = 16
SMALL_3D = VolumeEncoderConfig(kind="3d", depth=8, size=32)
SMALL_25D = VolumeEncoderConfig(kind="2.5d", size=32, n_slices=4, attention_dim=8)


def _tiny_image_encoder(seed: int = 0) -> ImageEncoder:
    torch.manual_seed(seed)
    return ImageEncoder(ImageEncoderConfig(arch="resnet10"), embed_dim=EMBED, projection="mlp", image_size=32)


@pytest.fixture(scope="module")
def slice_encoder() -> SliceAttentionEncoder:
    return SliceAttentionEncoder(_tiny_image_encoder(), attention_dim=8).eval()


@pytest.fixture(scope="module")
def encoder_3d() -> VolumeEncoder3D:
    torch.manual_seed(0)
    return VolumeEncoder3D("resnet10", embed_dim=EMBED, projection="linear").eval()


# --- encoders -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "which, shape, expected",
    [
        ("2.5d", (2, 4, 1, 32, 32), (2, EMBED)),
        ("2.5d", (1, 1, 1, 32, 32), (1, EMBED)),
        ("3d", (2, 1, 8, 32, 32), (2, EMBED)),
        ("3d", (1, 1, 4, 40, 32), (1, EMBED)),
    ],
)
def test_encoder_output_shapes(which, shape, expected, slice_encoder, encoder_3d):
    encoder = slice_encoder if which == "2.5d" else encoder_3d
    with torch.no_grad():
        assert encoder(torch.randn(shape)).shape == expected


def test_build_trunk_3d_and_factory():
    trunk, dim = build_trunk_3d("resnet10")
    assert dim == 512 and trunk.conv1.stride == (2, 2, 2) and trunk.fc is None
    with pytest.raises(ValueError, match="resnet50"):
        build_trunk_3d("resnet50")
    image = _tiny_image_encoder()
    assert isinstance(build_volume_encoder(SMALL_25D, image, EMBED, "mlp"), SliceAttentionEncoder)
    encoder = build_volume_encoder(SMALL_3D, image, EMBED, "mlp")
    assert isinstance(encoder, VolumeEncoder3D) and encoder.proj[-1].out_features == EMBED


def test_one_slice_volume_embeds_like_the_2d_image(tiny_model):
    """Shared trunk and projection: a one-slice volume lands exactly where the image does."""
    torch.manual_seed(1)
    encoder = SliceAttentionEncoder(tiny_model.image, attention_dim=8).eval()
    images = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        expected = tiny_model.image(images)
        torch.testing.assert_close(encoder(images[:, None]), expected, atol=1e-5, rtol=0)
        # A short series sampled to K slices repeats its slices: still that image.
        torch.testing.assert_close(encoder(images[:, None].expand(3, 4, 1, 32, 32)), expected, atol=1e-5, rtol=1e-5)


def test_attention_weights_sum_to_one_and_follow_the_slices():
    torch.manual_seed(0)
    pool = GatedAttentionPool(8, 4)
    features = torch.randn(2, 5, 8)
    perm = torch.tensor([3, 0, 4, 1, 2])
    pooled, weights = pool(features)
    pooled_perm, weights_perm = pool(features[:, perm])
    assert pooled.shape == (2, 8) and weights.shape == (2, 5)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(2))
    torch.testing.assert_close(weights_perm, weights[:, perm])
    torch.testing.assert_close(pooled_perm, pooled)
    torch.testing.assert_close(pooled, (weights[..., None] * features).sum(dim=1))


def test_masked_slices_get_zero_weight_and_change_nothing(slice_encoder):
    torch.manual_seed(0)
    features = torch.randn(2, 5, 8)
    mask = torch.tensor([[True, True, True, False, False], [True, False, True, True, True]])
    garbage = features.clone()
    garbage[~mask] = float("nan")
    pool = GatedAttentionPool(8, 4)
    pooled, weights = pool(garbage, mask)
    assert torch.all(weights[~mask] == 0)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(2))
    torch.testing.assert_close(pooled[0], pool(features[:1, :3])[0][0])

    slices = torch.randn(1, 3, 1, 32, 32)
    padded = torch.cat([slices, 100 * torch.randn(1, 2, 1, 32, 32)], dim=1)
    with torch.no_grad():
        expected = slice_encoder(slices)
        torch.testing.assert_close(slice_encoder(padded, torch.tensor([[True] * 3 + [False] * 2])), expected)


def test_mask_errors_are_one_line():
    pool = GatedAttentionPool(8, 4)
    with pytest.raises(ValueError, match=r"^mask: got a volume with every slice masked[^\n]*$"):
        pool(torch.randn(2, 3, 8), torch.tensor([[True, False, False], [False, False, False]]))
    with pytest.raises(ValueError, match=r"^mask: got shape \(2, 2\)"):
        pool(torch.randn(2, 3, 8), torch.ones(2, 2, dtype=torch.bool))


def test_gradients_reach_2d_trunk_attention_and_3d_trunk():
    torch.manual_seed(0)
    encoder = SliceAttentionEncoder(_tiny_image_encoder(), attention_dim=8).train()
    encoder(torch.randn(2, 3, 1, 32, 32)).pow(2).sum().backward()
    for param in (encoder.image.trunk.conv1.weight, encoder.pool.attention_v.weight, encoder.pool.attention_w.weight):
        assert param.grad is not None and param.grad.abs().sum() > 0
    volume = VolumeEncoder3D("resnet10", EMBED, "mlp").train()
    volume(torch.randn(2, 1, 8, 32, 32)).pow(2).sum().backward()
    assert volume.trunk.conv1.weight.grad.abs().sum() > 0 and volume.proj[0].weight.grad.abs().sum() > 0


# --- prepare_volume -------------------------------------------------------------------------------


def _slices_of(values: list[float], side: int = 32) -> np.ndarray:
    """A volume whose slice k is constant `values[k]`."""
    return np.asarray(values, dtype=np.float32)[:, None, None] * np.ones((1, side, side), dtype=np.float32)


def test_ct_window_maps_minus_160_to_0_and_240_to_1():
    hu = [-1000.0, -160.0, 40.0, 240.0, 3000.0]
    out = prepare_volume(_slices_of(hu), (1.0, 1.0, 1.0), "CT", VolumeEncoderConfig(kind="2.5d", size=32, n_slices=5))
    values = out[:, 0, 16, 16]
    torch.testing.assert_close(values, torch.tensor([0.0, 0.0, 200 / 399, 1.0, 1.0]), atol=1e-6, rtol=0)
    # The same DICOM LINEAR window as the 2D display pipeline in medcm.dicom.read.
    expected = _window(np.asarray(hu), 40.0, 400.0, "LINEAR")
    torch.testing.assert_close(values, torch.tensor(expected, dtype=torch.float32), atol=1e-6, rtol=0)


def test_a_25d_slice_is_exactly_what_the_2d_tower_sees():
    rng = np.random.default_rng(0)
    voxels = rng.uniform(-400, 400, size=(5, 40, 48)).astype(np.float32)
    pre = PreprocessConfig(image_size=32)
    config = VolumeEncoderConfig(kind="2.5d", size=32, n_slices=5)
    out = normalize(prepare_volume(voxels, (2.5, 0.7, 0.7), "ct", config), pre)
    for k in (0, 2, 4):
        image = prepare_image(_window(voxels[k].astype(np.float64), 40.0, 400.0, "LINEAR"), pre)
        torch.testing.assert_close(out[k], image, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "config, shape, expected",
    [
        (SMALL_3D, (12, 40, 40), (1, 8, 32, 32)),
        (SMALL_3D, (3, 20, 50), (1, 8, 32, 32)),
        (SMALL_25D, (12, 40, 40), (4, 1, 32, 32)),
        (SMALL_25D, (1, 64, 64), (4, 1, 32, 32)),
    ],
)
def test_prepare_volume_shapes(config, shape, expected):
    out = prepare_volume(np.zeros(shape, dtype=np.int16), (1.0, 0.8, 0.8), "CT", config)
    assert out.shape == expected and out.dtype == torch.float32


def test_3d_depth_resampling_is_trilinear():
    rng = np.random.default_rng(0)
    voxels = rng.uniform(-160, 239, size=(4, 32, 32)).astype(np.float32)
    out = prepare_volume(voxels, (1.0, 1.0, 1.0), "CT", SMALL_3D)
    scaled = torch.from_numpy((voxels + 160) / 399)[None, None]
    expected = F.interpolate(scaled, size=(8, 32, 32), mode="trilinear", align_corners=False)[0]
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("config", [SMALL_3D, SMALL_25D])
def test_aspect_is_kept_by_padding(config):
    bright = np.full((3, 32, 64), 1000.0, dtype=np.float32)  # 2:1 wide: rows padded
    wide = prepare_volume(bright, (1.0, 1.0, 1.0), "CT", config).reshape(-1, 32, 32)[0]
    assert torch.all(wide[:8] == 0) and torch.all(wide[24:] == 0) and torch.all((wide[8:24] - 1).abs() < 1e-6)
    # Square pixel grid, 2:1 physical rows: tall, so columns are padded.
    tall = prepare_volume(np.full((3, 32, 32), 1000.0), (1.0, 2.0, 1.0), "CT", config).reshape(-1, 32, 32)[0]
    assert torch.all(tall[:, :8] == 0) and torch.all(tall[:, 24:] == 0) and torch.all((tall[:, 8:24] - 1).abs() < 1e-6)


def test_slices_are_sampled_evenly_including_first_and_last():
    assert sample_slice_indices(10, 4) == [0, 3, 6, 9]
    assert sample_slice_indices(5, 5) == [0, 1, 2, 3, 4]
    assert sample_slice_indices(1, 3) == [0, 0, 0]
    many = sample_slice_indices(100, 16)
    assert many[0] == 0 and many[-1] == 99 and set(np.diff(many)) <= {6, 7}
    hu = [-160.0 + 10 * k for k in range(10)]
    out = prepare_volume(_slices_of(hu), (1.0, 1.0, 1.0), "CT", SMALL_25D)
    torch.testing.assert_close(out[:, 0, 0, 0], torch.tensor([0.0, 30.0, 60.0, 90.0]) / 399, atol=1e-6, rtol=0)


def test_mr_percentile_scaling():
    values = np.arange(1000, dtype=np.float32)
    voxels = np.repeat(values.reshape(10, 100)[:, :, None], 32, axis=2)[:, :32, :].copy()
    voxels[0, 0, 0] = 1e6  # one hot voxel must not squash the rest
    config = VolumeEncoderConfig(kind="2.5d", size=32, n_slices=10, mr_percentiles=(1.0, 99.0))
    out = prepare_volume(voxels, (3.0, 1.0, 1.0), "MR", config)
    low, high = np.percentile(voxels, [1.0, 99.0])
    expected = np.clip((voxels - low) / (high - low), 0, 1)
    torch.testing.assert_close(out[:, 0], torch.from_numpy(expected.astype(np.float32)), atol=1e-5, rtol=0)
    flat = prepare_volume(np.full((2, 32, 32), 7.0), (1.0, 1.0, 1.0), "MR", config)
    assert torch.all(flat == 0)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: prepare_volume(np.zeros((32, 32)), (1.0, 1.0, 1.0), "CT", SMALL_3D), "voxels: got ndarray of shape"),
        (lambda: prepare_volume(np.zeros((0, 32, 32)), (1.0, 1.0, 1.0), "CT", SMALL_3D), "voxels: got"),
        (lambda: prepare_volume(np.zeros((2, 32, 32)), (1.0, 0.0, 1.0), "CT", SMALL_3D), r"spacing: got \(1.0, 0.0, 1.0\)"),
        (lambda: prepare_volume(np.zeros((2, 32, 32)), (1.0, 1.0), "CT", SMALL_3D), "spacing: got"),
        (lambda: VolumeEncoderConfig(kind="4d"), "volume kind: got '4d'"),
        (lambda: VolumeEncoderConfig(arch_3d="resnet50"), "volume arch_3d: got 'resnet50'"),
        (lambda: VolumeEncoderConfig(size=16), "size=16"),
        (lambda: VolumeEncoderConfig(ct_window=(40.0, 0.0)), "ct_window: got"),
        (lambda: VolumeEncoderConfig(mr_percentiles=(99.0, 1.0)), "mr_percentiles: got"),
    ],
)
def test_bad_inputs_raise_one_line_value_errors(call, message):
    with pytest.raises(ValueError, match=message) as info:
        call()
    assert "\n" not in str(info.value) and "expected" in str(info.value)


def test_config_from_json_lists_is_equal_and_hashable():
    config = VolumeEncoderConfig(ct_window=[40, 400], mr_percentiles=[0.5, 99.5])
    assert config == VolumeEncoderConfig() and hash(config) == hash(VolumeEncoderConfig())


# --- study embedding ------------------------------------------------------------------------------


def test_study_embedding_is_the_normalised_weighted_mean():
    series = torch.tensor([[2.0, 0.0], [0.0, 5.0]])  # normalised first: [1, 0] and [0, 1]
    torch.testing.assert_close(study_embedding(series), torch.tensor([1.0, 1.0]) / 2**0.5)
    weighted = study_embedding(series, torch.tensor([3.0, 1.0]))
    torch.testing.assert_close(weighted, torch.tensor([3.0, 1.0]) / 10**0.5)
    assert abs(float(weighted.norm()) - 1.0) < 1e-6
    single = F.normalize(torch.randn(1, 8), dim=-1)
    torch.testing.assert_close(study_embedding(single), single[0])
    with pytest.raises(ValueError, match="weights: got"):
        study_embedding(series, torch.tensor([0.0, 0.0]))
    with pytest.raises(ValueError, match="series_embeddings: got shape"):
        study_embedding(torch.zeros(4))
