"""The image tower: a MONAI network trunk (or an ImageNet EfficientNet-Lite) without its classifier, plus a projection head.

This is the only module that builds MONAI networks.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from medcm.config import IMAGE_ARCHS, LITE_IMAGE_ARCHS, ImageEncoderConfig
from medcm.model.encoders.efficientnet import EfficientNetLiteTrunk


def projection_head(in_dim: int, out_dim: int, kind: str) -> nn.Module:
    """A projection into the shared space.

    Args:
        in_dim: feature size of the tower.
        out_dim: size of the shared space.
        kind: "mlp" (ConVIRT: Linear-GELU-Linear) or "linear" (CLIP).
    """
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_dim, in_dim), nn.GELU(), nn.Linear(in_dim, out_dim))
    raise ValueError(f"projection: got {kind!r}, expected 'mlp' or 'linear'")


class _DenseNetTrunk(nn.Module):
    """MONAI DenseNet `features` followed by its classifier's ReLU and pooling, without the linear layer."""

    def __init__(self, densenet: nn.Module) -> None:
        super().__init__()
        self.features = densenet.features
        self.pool = nn.Sequential(densenet.class_layers.relu, densenet.class_layers.pool, densenet.class_layers.flatten)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x))

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, F, h, w]`: what the pooling averages (the features after the classifier's ReLU)."""
        return self.pool[0](self.features(x))


class _ViTTrunk(nn.Module):
    """MONAI ViT without its classification token; the patch tokens are mean-pooled."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = vit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, _ = self.vit(x)
        return tokens.mean(dim=1)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, F, h, w]`: the patch tokens on their grid (a square input: h = w = side / patch size)."""
        tokens, _ = self.vit(x)
        side = math.isqrt(tokens.shape[1])
        if side * side != tokens.shape[1]:
            raise ValueError(f"ViT feature map: got {tokens.shape[1]} patch tokens, expected a square grid")
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], side, side)


def build_trunk(config: ImageEncoderConfig, image_size: int) -> nn.Module:
    """Build a trunk that maps `[B, C, H, W]` to pooled features `[B, F]`.

    Args:
        config: architecture, channels and initial weights.
        image_size: input side in pixels (the ViT sizes its position embedding by it, EfficientNet its padding).

    Raises:
        ValueError: unknown architecture, or a Lite trunk asked for more than one input channel.
    """
    if config.arch in LITE_IMAGE_ARCHS:
        if config.in_channels != 1 or config.spatial_dims != 2:
            raise ValueError(f"image arch {config.arch!r}: got in_channels={config.in_channels}, "
                             f"spatial_dims={config.spatial_dims}; expected 1 and 2 (greyscale 2D images)")
        return EfficientNetLiteTrunk(config.arch, image_size, pretrained=config.pretrained == "imagenet")
    from monai.networks import nets  # heavy import kept out of module import time

    dims, channels = config.spatial_dims, config.in_channels
    if config.arch.startswith("resnet") and config.arch in IMAGE_ARCHS:
        factory = getattr(nets, config.arch)
        # conv1_t_stride=2 matches torchvision's ResNet stem; MONAI's default of 1 is ~4x slower in 2D.
        return factory(spatial_dims=dims, n_input_channels=channels, conv1_t_stride=2, feed_forward=False)
    if config.arch in ("densenet121", "densenet169"):
        factory = {"densenet121": nets.DenseNet121, "densenet169": nets.DenseNet169}[config.arch]
        return _DenseNetTrunk(factory(spatial_dims=dims, in_channels=channels, out_channels=1))
    if config.arch == "vit":
        vit = nets.ViT(
            in_channels=channels,
            img_size=image_size,
            patch_size=config.vit_patch_size,
            spatial_dims=dims,
            classification=False,
            hidden_size=384,
            mlp_dim=1536,
            num_layers=6,
            num_heads=6,
        )
        return _ViTTrunk(vit)
    raise ValueError(f"image arch: got {config.arch!r}, expected one of {IMAGE_ARCHS}")


class ImageEncoder(nn.Module):
    """Trunk + projection: `[B, 1, H, W]` images to `[B, embed_dim]` (not normalised).

    Attributes:
        trunk: the MONAI feature extractor.
        feature_dim: size of the trunk's pooled features (the multi-task head reads these).
        proj: the projection head.
    """

    def __init__(self, config: ImageEncoderConfig, embed_dim: int, projection: str, image_size: int) -> None:
        super().__init__()
        self.trunk = build_trunk(config, image_size)
        self.feature_dim = _probe_feature_dim(self.trunk, config, image_size)
        self.proj = projection_head(self.feature_dim, embed_dim, projection)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled trunk features `[B, feature_dim]` of images `[B, C, H, W]`."""
        return self.trunk(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(self.features(images))

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """The trunk's last feature map before pooling, `[B, feature_dim, h, w]`; its mean over (h, w) is `features`."""
        return trunk_feature_map(self.trunk, images)

    def project_map(self, feature_map: torch.Tensor) -> torch.Tensor:
        """The projection head applied at every location of `[B, F, h, w]`, giving `[B, embed_dim, h, w]`.

        On channels-last rows a Linear (or Linear-GELU-Linear) head is exactly a 1×1 convolution with its weights.
        """
        return self.proj(feature_map.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def trunk_feature_map(trunk: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The last feature map `[B, F, h, w]` of a trunk built by `build_trunk`, before its global pooling.

    Raises:
        ValueError: the trunk has no spatial map to give (not one `build_trunk` makes).
    """
    if hasattr(trunk, "feature_map"):
        return trunk.feature_map(images)
    if hasattr(trunk, "layer4") and hasattr(trunk, "avgpool"):  # MONAI ResNet: its forward() without the pooling
        x = trunk.act(trunk.bn1(trunk.conv1(images)))
        if not trunk.no_max_pool:
            x = trunk.maxpool(x)
        return trunk.layer4(trunk.layer3(trunk.layer2(trunk.layer1(x))))
    raise ValueError(f"feature map: got a {type(trunk).__name__} trunk, expected one built by build_trunk")


def _probe_feature_dim(trunk: nn.Module, config: ImageEncoderConfig, image_size: int) -> int:
    """Run one tiny forward pass to read the trunk's output size instead of hard-coding it per arch."""
    shape = (2, config.in_channels) + (image_size,) * config.spatial_dims
    was_training = trunk.training
    trunk.eval()
    with torch.no_grad():
        dim = int(trunk(torch.zeros(shape)).shape[-1])
    trunk.train(was_training)
    return dim


def build_trunk_3d(arch: str, in_channels: int = 1) -> tuple[nn.Module, int]:
    """Build a MONAI 3D ResNet trunk that maps volumes `[B, C, D, H, W]` to pooled features `[B, F]`.

    Args:
        arch: "resnet10" or "resnet18" (MONAI's MedicalNet-style 3D ResNets).
        in_channels: channels of the volume (1: greyscale).

    Returns:
        The trunk (no classifier: `feed_forward=False`) and its feature size `F`.

    Raises:
        ValueError: unknown architecture or non-positive channel count.
    """
    archs = ("resnet10", "resnet18")
    if arch not in archs:
        raise ValueError(f"3D arch: got {arch!r}, expected one of {archs}")
    if in_channels < 1:
        raise ValueError(f"in_channels: got {in_channels}, expected >= 1")
    from monai.networks import nets  # heavy import kept out of module import time

    # conv1_t_stride=2 strides the stem in every axis (D, H and W), as in MedicalNet and torchvision.
    trunk = getattr(nets, arch)(spatial_dims=3, n_input_channels=in_channels, conv1_t_stride=2, feed_forward=False)
    return trunk, int(trunk.in_planes)  # MONAI leaves `in_planes` at the last stage's output channels
