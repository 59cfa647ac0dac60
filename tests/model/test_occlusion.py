"""Occlusion sensitivity: the patch grid, each pixel's mean drop against a naive reference, bad settings."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medcm.model.occlusion import occlusion_maps, patch_grid


@pytest.mark.parametrize("side, patch, stride, count", [(12, 4, 2, 49), (12, 4, 4, 16), (10, 10, 5, 9)])
def test_patch_grid_covers_every_pixel_and_clips_to_the_image(side, patch, stride, count):
    boxes = patch_grid(side, patch, stride)
    assert len(boxes) == count
    covered = torch.zeros(side, side)
    for top, bottom, left, right in boxes:
        assert 0 <= top < bottom <= side and 0 <= left < right <= side
        covered[top:bottom, left:right] += 1
    assert covered.min() >= 1
    assert boxes[0] == (0, patch - patch // 2, 0, patch - patch // 2)  # half a patch hangs over the corner


def test_each_pixel_is_the_mean_drop_of_the_patches_over_it(tiny_model):
    torch.manual_seed(3)
    image, texts = torch.randn(1, 1, 64, 64), F.normalize(torch.randn(2, 32), dim=-1)
    maps = occlusion_maps(tiny_model, image, texts, patch=16 / 64, stride=16 / 64, fill=-1.5, batch_size=5)
    assert maps.shape == (1, 2, 64, 64)
    with torch.no_grad():
        whole = F.normalize(tiny_model.image(image), dim=-1) @ texts.T
        drops, hits = torch.zeros(2, 64, 64), torch.zeros(64, 64)
        for top, bottom, left, right in patch_grid(64, 16, 16):
            hidden = image.clone()
            hidden[..., top:bottom, left:right] = -1.5
            drop = (whole - F.normalize(tiny_model.image(hidden), dim=-1) @ texts.T)[0]
            drops[:, top:bottom, left:right] += drop[:, None, None]
            hits[top:bottom, left:right] += 1
    torch.testing.assert_close(maps[0], drops / hits, atol=1e-5, rtol=1e-4)


def test_bad_settings_name_what_was_received(tiny_model):
    with pytest.raises(ValueError, match="patch 4 px and stride 6 px"):
        patch_grid(12, 4, 6)
    with pytest.raises(ValueError, match=r"expected \[B, C, S, S\] and \[K, D\]"):
        occlusion_maps(tiny_model, torch.zeros(1, 64, 64), torch.zeros(1, 32))
