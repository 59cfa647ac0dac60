"""Training the top layers of a frozen text tower: cached lower layers, same outputs, saved weights."""

from __future__ import annotations

import pytest
import torch

from medcm.checkpoint import load_checkpoint, save_checkpoint
from medcm.config import MedcmConfig, ModelConfig, TextEncoderConfig, ImageEncoderConfig
from medcm.model.align import DualEncoder
from medcm.model.encoders.text import TextEncoder

TEXTS = ["No pleural effusion.", "A 2.3 cm hypodense lesion in segment VII of the liver, with rim enhancement.",
         "Normal study."]


@pytest.fixture(scope="module")
def top2() -> TextEncoder:
    torch.manual_seed(0)
    return TextEncoder(TextEncoderConfig(freeze=True, train_layers=2, max_length=64), embed_dim=8, projection="linear")


def test_cached_lower_layers_give_the_full_model_output(top2):
    """Training mode (cached states + top layers, padded batch) equals the plain forward pass (eval mode)."""
    top2.eval()
    with torch.no_grad():
        full = top2.pooled(TEXTS)
    top2.train()
    for layer in top2.top_layers:
        layer.eval()  # dropout off to compare
    with torch.no_grad():
        cached = top2.pooled(TEXTS)
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-4)
    assert set(top2._cache) == set(TEXTS) and top2._cache[TEXTS[0]].shape[1] == top2.hidden_size


def test_only_the_top_layers_and_projection_get_gradients(top2):
    top2.train()
    top2.zero_grad()
    top2(TEXTS).sum().backward()
    trained = {n for n, p in top2.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any(n.startswith("backbone.encoder.layer.5.") for n in trained)
    assert any(n.startswith("backbone.encoder.layer.4.") for n in trained)
    assert not any(n.startswith(("backbone.encoder.layer.3.", "backbone.embeddings.")) for n in trained)
    assert top2.trained_backbone_prefixes() == ("encoder.layer.4.", "encoder.layer.5.")


def test_bad_layer_counts_are_refused():
    with pytest.raises(ValueError, match="at most the 6 layers"):
        TextEncoder(TextEncoderConfig(train_layers=7), 8, "linear")
    with pytest.raises(ValueError, match="train_layers: got 2 with freeze=False"):
        TextEncoderConfig(freeze=False, train_layers=2)
    with pytest.raises(ValueError, match="train_layers: got -1"):
        TextEncoderConfig(train_layers=-1)


def test_checkpoint_carries_the_adapted_layers_only(tmp_path):
    torch.manual_seed(0)
    config = MedcmConfig(model=ModelConfig(image=ImageEncoderConfig(arch="resnet10"),
                                           text=TextEncoderConfig(freeze=True, train_layers=1, max_length=32),
                                           embed_dim=8))
    model = DualEncoder(config.model, 64)
    with torch.no_grad():
        model.text.backbone.encoder.layer[5].output.dense.weight.add_(0.5)  # "adapted"
    save_checkpoint(tmp_path / "ck", model, config)
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "ck" / "model.safetensors"))
    text_keys = [k for k in saved if k.startswith("text.backbone.")]
    assert text_keys and all(k.startswith("text.backbone.encoder.layer.5.") for k in text_keys)
    loaded = load_checkpoint(tmp_path / "ck")
    torch.testing.assert_close(loaded.model.text.backbone.encoder.layer[5].output.dense.weight,
                               model.text.backbone.encoder.layer[5].output.dense.weight)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.encode_text(TEXTS), model.eval().encode_text(TEXTS))
