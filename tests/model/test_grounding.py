"""Local features in the shared space and sentence heatmaps: shapes per tower, planted features, the local loss."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medcm.config import ImageEncoderConfig, PreprocessConfig, validate_config
from medcm.model.align import AlignmentLoss, DualOutput, local_infonce_loss
from medcm.model.encoders.efficientnet import EfficientNetLiteTrunk
from medcm.model.encoders.image import ImageEncoder
from medcm.model.grounding import (
    GroundingConfig,
    heatmap_peak,
    integrated_gradients,
    local_maps,
    sentence_direction,
    sentence_heatmaps,
    to_image_grid,
)
from medcm.model.preprocess import prepare_image

SIDE, EMBED = 64, 16
# (arch, initial weights, projection, trunk stride in pixels): the kinds of trunk the named configs use (MONAI
# ResNet, EfficientNet-Lite from its ImageNet weights as there: from random ones its signal vanishes).
TOWERS = [("resnet10", None, "mlp", 32), ("efficientnet-lite0", "imagenet", "linear", 32)]
# The other trunks `build_trunk` makes have feature maps too.
OTHER_TOWERS = [("densenet121", None, "linear", 32), ("vit", None, "mlp", 16)]


def _tower(arch: str, weights: str | None, projection: str, stride: int) -> tuple[SimpleNamespace, int]:
    """A seeded image tower at 64 px; grounding reads only `model.image`, so no text tower is built."""
    torch.manual_seed(0)
    encoder = ImageEncoder(ImageEncoderConfig(arch=arch, pretrained=weights), EMBED, projection, SIDE).eval()
    return SimpleNamespace(image=encoder), stride


@pytest.fixture(scope="module", params=TOWERS, ids=[t[0] for t in TOWERS])
def tower(request):
    return _tower(*request.param)


def _blob(centre: tuple[int, int], side: int = SIDE, radius: int = 5) -> torch.Tensor:
    """`[1, 1, side, side]`: zeros (the preprocessed background) with one bright disc."""
    yy, xx = np.mgrid[0:side, 0:side] + 0.5
    disc = np.hypot(yy - centre[0], xx - centre[1]) <= radius
    return torch.from_numpy(4.0 * disc.astype(np.float32))[None, None]


@pytest.mark.parametrize("spec", TOWERS + OTHER_TOWERS, ids=[t[0] for t in TOWERS + OTHER_TOWERS])
def test_feature_map_pools_to_the_trunk_features_and_projects_per_location(spec):
    model, stride = _tower(*spec)
    images = torch.randn(2, 1, SIDE, SIDE)
    with torch.no_grad():
        fmap = model.image.feature_map(images)
        assert fmap.shape == (2, model.image.feature_dim, SIDE // stride, SIDE // stride)
        torch.testing.assert_close(fmap.mean(dim=(2, 3)), model.image.features(images), atol=1e-5, rtol=1e-4)
        local = model.image.project_map(fmap)
        naive = torch.stack([torch.stack([model.image.proj(fmap[:, :, i, j]) for j in range(fmap.shape[3])], -1)
                             for i in range(fmap.shape[2])], -2)  # the head on each location's vector
        torch.testing.assert_close(local, naive, atol=1e-5, rtol=1e-4)


def test_cosine_heatmap_peaks_at_a_planted_feature(tower):
    model, stride = tower
    centre = (SIDE - stride // 2, stride // 2)  # the centre of the last row's first cell
    image = _blob(centre)
    with torch.no_grad():
        local = F.normalize(model.image.project_map(model.image.feature_map(image)), dim=1)
    text = local[0, :, centre[0] // stride, centre[1] // stride][None]  # the text that "is" the blob's feature
    heat = sentence_heatmaps(model, image, text, GroundingConfig("cosine", shifts=1))
    assert heat.shape == (1, 1, SIDE, SIDE) and float(heat.min()) == 0.0 and float(heat.max()) == 1.0
    row, col = heatmap_peak(heat[0, 0].numpy())
    assert np.hypot(row + 0.5 - centre[0], col + 0.5 - centre[1]) <= stride / 2 + 1, (row, col)
    far = heat[0, 0, : SIDE // 2, SIDE // 2 :]  # the quadrant opposite the blob
    assert float(far.max()) < 0.9


def test_shift_and_stitch_finds_a_feature_between_grid_centres(tower):
    model, stride = tower
    if stride != 32:
        pytest.skip("exact for convolutional trunks only: a ViT's position embeddings are not shifted with the image")
    # Seen centred in the first cell, the blob has feature f; at (40, 24) no plain cell centres it, but the
    # shift that moves it up-left by (24, 8) does, so the stitched map holds f exactly there.
    with torch.no_grad():
        reference = F.normalize(model.image.project_map(model.image.feature_map(_blob((16, 16)))), dim=1)
    text = reference[0, :, 0, 0][None]
    image = _blob((40, 24))
    plain = heatmap_peak(sentence_heatmaps(model, image, text, GroundingConfig("cosine", shifts=1))[0, 0].numpy())
    dense = heatmap_peak(sentence_heatmaps(model, image, text, GroundingConfig("cosine", shifts=4))[0, 0].numpy())
    assert np.hypot(dense[0] + 0.5 - 40, dense[1] + 0.5 - 24) <= 1.0, dense
    assert np.hypot(plain[0] + 0.5 - 40, plain[1] + 0.5 - 24) > 5.0, plain  # the plain map cannot get there


def test_integrated_gradients_add_up_to_the_cosines_change_from_black(tower):
    model, _ = tower
    torch.manual_seed(2)
    image, texts = torch.randn(1, 1, SIDE, SIDE), F.normalize(torch.randn(2, EMBED), dim=-1)
    # The ImageNet Lite bends more along this path: its Riemann sum needs more points to converge.
    steps = 512 if isinstance(model.image.trunk, EfficientNetLiteTrunk) else 64
    maps = integrated_gradients(model, image, texts, steps=steps, baseline=-2.0)
    assert maps.shape == (1, 2, SIDE, SIDE)
    with torch.no_grad():
        cosines = F.normalize(model.image(torch.cat([image, torch.full_like(image, -2.0)])), dim=-1) @ texts.T
    change = cosines[0] - cosines[1]  # completeness: the attributions share out exactly this
    torch.testing.assert_close(maps.sum(dim=(2, 3))[0], change, atol=0.04 * float(change.abs().max()) + 1e-3, rtol=0)


@pytest.mark.parametrize("method", ["integrated_gradients", "occlusion"])
def test_maps_from_black_point_at_the_blob_the_sentence_describes(tower, method):
    model, _ = tower
    first, second = (16, 16), (44, 44)
    image = _blob(first) + _blob(second, radius=3)
    with torch.no_grad():  # the "sentence" is the embedding of an image holding only the first blob
        text = F.normalize(model.image(_blob(first)), dim=-1)
    heat = sentence_heatmaps(model, image, text, GroundingConfig(method, steps=16))[0, 0].numpy()
    row, col = heatmap_peak(heat)
    assert np.hypot(row + 0.5 - first[0], col + 0.5 - first[1]) <= 6, (row, col)
    corners = np.concatenate([heat[:8, -8:], heat[-8:, :8]])  # black like the baseline: no share at all
    assert np.ptp(corners) < 1e-5 and corners.max() < 0.7


def test_cam_is_each_locations_share_of_the_pooled_cosine(tiny_model):
    """Checked against autograd through the whole pooled path: map(l) = hw · <d cos / d F(l), F(l)>."""
    torch.manual_seed(1)
    images, texts = torch.randn(2, 1, 64, 64), F.normalize(torch.randn(3, 32), dim=-1)
    maps, step, stride = local_maps(tiny_model, images, texts, GroundingConfig("cam", shifts=1))
    assert maps.shape == (2, 3, 2, 2) and step == stride == 32
    fmap = tiny_model.image.feature_map(images).detach().requires_grad_(True)
    for k in range(3):
        score = (F.normalize(tiny_model.image.proj(fmap.mean(dim=(2, 3))), dim=-1) @ texts[k]).sum()
        (grad,) = torch.autograd.grad(score, fmap)
        expected = (grad * fmap).sum(dim=1) * fmap.shape[2] * fmap.shape[3]
        torch.testing.assert_close(maps[:, k], expected.detach(), atol=1e-4, rtol=1e-3)


def test_encode_image_local_is_unit_length_per_location_and_refuses_volumes(tiny_model):
    local = tiny_model.encode_image_local(torch.randn(3, 1, 64, 64))
    assert local.shape == (3, 32, 2, 2)
    torch.testing.assert_close(local.norm(dim=1), torch.ones(3, 2, 2))
    with pytest.raises(ValueError, match="3D volumes are not supported yet"):
        tiny_model.encode_image_local(torch.randn(1, 1, 8, 64, 64))
    with pytest.raises(ValueError, match="3D volumes are not supported yet"):
        sentence_heatmaps(tiny_model, torch.randn(1, 1, 8, 64, 64), torch.randn(1, 32))


def test_bad_grounding_settings_are_refused(tiny_model):
    with pytest.raises(ValueError, match="method"):
        GroundingConfig(method="gradcam++")
    with pytest.raises(ValueError, match="shifts"):
        GroundingConfig(shifts=0)
    with pytest.raises(ValueError, match="divisor"):
        local_maps(tiny_model, torch.randn(1, 1, 64, 64), torch.randn(1, 32), GroundingConfig("cosine", shifts=3))
    with pytest.raises(ValueError, match="steps"):
        GroundingConfig(steps=0)
    with pytest.raises(ValueError, match="smooth"):
        GroundingConfig(smooth=0.6)


def test_a_heatmap_returns_to_the_original_image_without_the_padding():
    pixels = np.zeros((40, 80), dtype=np.float32)  # wide: resize_and_pad puts it in rows 16..47 of 64
    assert prepare_image(pixels, PreprocessConfig(image_size=64)).shape == (1, 64, 64)
    square = np.zeros((64, 64), dtype=np.float32)
    square[16:48, 60:] = 1.0  # the right edge of the image part; the padding rows stay 0
    back = to_image_grid(square, (40, 80))
    assert back.shape == (40, 80)
    assert back[:, -4:].min() > 0.9 and back[:, :60].max() == 0.0
    assert heatmap_peak(back)[1] >= 74


def test_local_loss_rewards_texts_that_match_a_place_in_their_own_image():
    torch.manual_seed(0)
    local = F.normalize(torch.randn(4, 8, 3, 3), dim=1)
    matched = local[torch.arange(4), :, torch.tensor([0, 1, 2, 0]), torch.tensor([2, 1, 0, 0])]  # one place each
    scale = torch.tensor(10.0)
    good = local_infonce_loss(local, matched, scale)
    shuffled = local_infonce_loss(local, matched[[1, 2, 3, 0]], scale)
    assert float(good) < 0.1 < float(shuffled)
    # Images 0 and 1 of one case count each other's texts as matches (as in InfoNCE): swapping them costs nothing.
    swapped = matched[[1, 0, 2, 3]]
    grouped = torch.eye(4)
    grouped[0, 1] = grouped[1, 0] = 1.0
    assert float(local_infonce_loss(local, swapped, scale, grouped)) == pytest.approx(
        float(local_infonce_loss(local, matched, scale, grouped)), abs=1e-5)
    assert float(local_infonce_loss(local, swapped, scale)) > float(good) + 1.0


def test_local_loss_needs_local_features_and_is_off_by_default(tiny_model, tiny_config):
    out = tiny_model(torch.randn(2, 1, 64, 64), ["a", "b"])
    assert out.local is None  # the default recipe computes no local map
    loss = AlignmentLoss({"infonce": 1.0, "local": 0.5})
    with pytest.raises(ValueError, match="loss 'local'"):
        loss(out)
    with_local = dataclasses.replace(out, local=F.normalize(torch.randn(2, 32, 2, 2), dim=1))
    parts = loss(with_local).parts
    assert set(parts) == {"infonce", "local"}
    local_model = dataclasses.replace(tiny_config.model, losses={"infonce": 1, "local": 1})
    accumulated = dataclasses.replace(tiny_config, model=local_model,
                                      train=dataclasses.replace(tiny_config.train, accum_steps=2))
    with pytest.raises(ValueError, match="local"):
        validate_config(accumulated)


def test_forward_with_the_local_loss_gives_the_map_and_the_same_pooled_embedding(tiny_config):
    from medcm.model.align import DualEncoder

    model_config = dataclasses.replace(tiny_config.model, losses={"infonce": 1.0, "local": 0.5})
    torch.manual_seed(0)
    model = DualEncoder(model_config, 64).eval()
    images = torch.randn(3, 1, 64, 64)
    out: DualOutput = model(images, ["a", "b", "c"])
    assert out.local.shape == (3, 32, 2, 2)
    torch.testing.assert_close(out.image, model.encode_image(images), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.local, model.encode_image_local(images), atol=1e-5, rtol=1e-4)
    loss = AlignmentLoss(model_config.losses)(out)
    loss.total.backward()  # the local term reaches the trunk
    assert model.image.trunk.conv1.weight.grad is not None


def test_a_finding_sentence_is_grounded_along_the_finding_heads_weights(tiny_config, tiny_model):
    from medcm.config import REPORT_FINDINGS, AuxHeadConfig
    from medcm.model.align import DualEncoder

    head = AuxHeadConfig(field=REPORT_FINDINGS, classes=("effusion", "effusion:left", "nodule"), multi_label=True,
                         on_embedding=True)
    model = DualEncoder(dataclasses.replace(tiny_config.model, aux_head=head), tiny_config.preprocess.image_size).eval()
    rows = model.aux_head.weight.detach()
    direction = sentence_direction(model, "Small left pleural effusion.")
    torch.testing.assert_close(direction, F.normalize(rows[0:1], dim=-1))  # the finding's row, not its side's
    torch.testing.assert_close(sentence_direction(model, "A 9 mm nodule in the right upper lobe."),
                               F.normalize(rows[2:3], dim=-1))
    # Denials, unknown findings and a model without a finding head use the sentence's embedding.
    for sentence in ("No pleural effusion.", "Small right pneumothorax."):
        torch.testing.assert_close(sentence_direction(model, sentence), model.encode_text([sentence]).float())
    torch.testing.assert_close(sentence_direction(tiny_model, "Small left pleural effusion."),
                               tiny_model.encode_text(["Small left pleural effusion."]).float())
