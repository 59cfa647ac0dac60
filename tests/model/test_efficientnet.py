"""The ImageNet EfficientNet-Lite trunks: greyscale stem, ImageNet features, configs that say so."""

from __future__ import annotations

import pytest
import torch

from medcm.config import ImageEncoderConfig, MedcmConfig, ModelConfig, config_from_dict, config_to_dict
from medcm.model.encoders.efficientnet import EfficientNetLiteTrunk, imagenet_weights_path
from medcm.model.encoders.image import ImageEncoder


@pytest.fixture(scope="module")
def lite0() -> EfficientNetLiteTrunk:
    return EfficientNetLiteTrunk("efficientnet-lite0", image_size=96, pretrained=True).eval()


def test_grey_stem_equals_the_rgb_network_on_a_grey_image(lite0):
    """Summing the RGB filters is exact: a grey image through our trunk = the same image as RGB through theirs."""
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0", image_size=96)
    net.load_state_dict(torch.load(imagenet_weights_path("efficientnet-lite0"), weights_only=True))
    net.eval()
    grey = torch.rand(2, 1, 96, 96)
    with torch.no_grad():
        theirs = net.extract_features(grey.expand(-1, 3, -1, -1)).mean(dim=(2, 3))
        ours = lite0(grey)
    assert ours.shape == (2, 1280)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_imagenet_weights_are_loaded_not_random(lite0):
    random = EfficientNetLiteTrunk("efficientnet-lite0", image_size=96, pretrained=False)
    assert not torch.allclose(random.stem.weight, lite0.stem.weight)
    # ImageNet BN statistics are not the fresh 0/1 of a random network.
    assert float(lite0.bn1.running_var.mean()) != pytest.approx(1.0, abs=1e-3)


def test_lite_image_encoder_shapes_and_one_channel():
    encoder = ImageEncoder(ImageEncoderConfig(arch="efficientnet-lite0", pretrained="imagenet"), 32, "mlp", 64).eval()
    with torch.no_grad():
        assert encoder.feature_dim == 1280
        assert encoder(torch.rand(3, 1, 64, 64)).shape == (3, 32)
    with pytest.raises(RuntimeError):
        encoder(torch.zeros(1, 3, 64, 64))


def test_pretrained_is_recorded_in_the_config_and_checked():
    config = MedcmConfig(model=ModelConfig(image=ImageEncoderConfig(arch="efficientnet-lite2", pretrained="imagenet")))
    again = config_from_dict(MedcmConfig, config_to_dict(config))
    assert again.model.image.pretrained == "imagenet" and again == config
    with pytest.raises(ValueError, match="image.pretrained.*resnet18"):
        ImageEncoderConfig(arch="resnet18", pretrained="imagenet")
    with pytest.raises(ValueError, match="image.pretrained: got 'radimagenet'"):
        ImageEncoderConfig(arch="efficientnet-lite0", pretrained="radimagenet")
    with pytest.raises(ValueError, match="in_channels=3"):
        ImageEncoder(ImageEncoderConfig(arch="efficientnet-lite0", in_channels=3), 16, "mlp", 64)
