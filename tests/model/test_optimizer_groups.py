"""Learning rates per part: heads at `lr`, an ImageNet trunk at `image_lr`, the trained text layers at `text_lr`."""

from __future__ import annotations

import dataclasses

from medcm.config import ImageEncoderConfig, MedcmConfig, ModelConfig, TextEncoderConfig, TrainConfig
from medcm.model.align import DualEncoder
from medcm.model.train import build_optimizer


def _rates(config: MedcmConfig) -> dict[str, float]:
    model = DualEncoder(config.model, 64)
    optimizer = build_optimizer(model, config)
    rate_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    return {name: rate_of[id(p)] for name, p in model.named_parameters() if id(p) in rate_of}


def test_each_part_trains_at_its_own_rate():
    config = MedcmConfig(
        model=ModelConfig(image=ImageEncoderConfig(arch="efficientnet-lite0", pretrained="imagenet"),
                          text=TextEncoderConfig(train_layers=1, max_length=32), embed_dim=8),
        train=TrainConfig(lr=1e-3, image_lr=3e-4, text_lr=5e-5))
    rates = _rates(config)
    assert {r for n, r in rates.items() if n.startswith("image.trunk.")} == {3e-4}
    assert {r for n, r in rates.items() if n.startswith(("image.proj.", "text.proj.", "logit_scale"))} == {1e-3}
    text = {n for n in rates if n.startswith("text.backbone.")}
    assert text and all(n.startswith("text.backbone.encoder.layer.5.") for n in text)
    assert {rates[n] for n in text} == {5e-5}
    same = _rates(dataclasses.replace(config, train=dataclasses.replace(config.train, image_lr=None)))
    assert {r for n, r in same.items() if n.startswith("image.trunk.")} == {1e-3}  # None: the trunk at lr
