from __future__ import annotations

import pytest
import torch

from medcm.config import ImageEncoderConfig, TextEncoderConfig
from medcm.model.encoders.image import ImageEncoder
from medcm.model.encoders.text import TextEncoder, mean_pool, resolve_text_model_path


@pytest.mark.parametrize(
    "arch, feature_dim",
    [("resnet10", 512), ("resnet18", 512), ("resnet34", 512), ("resnet50", 2048), ("densenet121", 1024), ("vit", 384)],
)
def test_image_encoder_shapes(arch, feature_dim):
    torch.manual_seed(0)
    encoder = ImageEncoder(ImageEncoderConfig(arch=arch), embed_dim=24, projection="linear", image_size=64).eval()
    images = torch.randn(3, 1, 64, 64)
    with torch.no_grad():
        assert encoder.feature_dim == feature_dim
        assert encoder.features(images).shape == (3, feature_dim)
        assert encoder(images).shape == (3, 24)


def test_image_encoder_has_no_classifier_and_takes_one_channel():
    encoder = ImageEncoder(ImageEncoderConfig(arch="densenet121"), 16, "mlp", 64)
    names = [name for name, _ in encoder.trunk.named_modules()]
    assert not any(name.endswith("out") or name.endswith(".fc") for name in names)
    with pytest.raises(RuntimeError):
        encoder(torch.zeros(1, 3, 64, 64))


def test_resnet_trunk_uses_stride_two_stem():
    encoder = ImageEncoder(ImageEncoderConfig(arch="resnet18"), 16, "mlp", 64)
    assert encoder.trunk.conv1.stride == (2, 2)


def test_unknown_arch_is_rejected():
    with pytest.raises(ValueError, match="resnet9"):
        ImageEncoder(ImageEncoderConfig(arch="resnet9"), 16, "mlp", 64)


def test_mean_pool_ignores_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(mean_pool(hidden, mask), torch.tensor([[2.0, 3.0]]))


@pytest.fixture(scope="module")
def frozen_text():
    torch.manual_seed(0)
    return TextEncoder(TextEncoderConfig(freeze=True, max_length=64), embed_dim=16, projection="linear")


def test_default_text_model_matches_sentence_transformers(frozen_text):
    """Our mean pooling over the packaged MiniLM equals the reference sentence-transformers pipeline."""
    st = pytest.importorskip("sentence_transformers")
    texts = ["No pleural effusion.", "A 2.3 cm hypodense lesion in segment VII of the liver."]
    reference = st.SentenceTransformer(str(resolve_text_model_path(None)), device="cpu").encode(
        texts, convert_to_tensor=True, normalize_embeddings=True
    )
    ours = torch.nn.functional.normalize(frozen_text.pooled(texts), dim=-1)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-4)


def test_frozen_text_tower_caches_each_text_once(frozen_text, monkeypatch):
    calls = []
    original = frozen_text._run_backbone
    monkeypatch.setattr(frozen_text, "_run_backbone", lambda texts: calls.append(list(texts)) or original(texts))
    first = frozen_text(["small effusion", "clear lungs", "small effusion"])
    second = frozen_text(["clear lungs"])
    assert calls == [["small effusion", "clear lungs"]]
    torch.testing.assert_close(first[1], second[0])
    assert not any(p.requires_grad for p in frozen_text.backbone.parameters())
    frozen_text.train()
    assert not frozen_text.backbone.training  # no dropout: cached outputs stay valid


def test_frozen_text_tower_trains_only_its_projection(frozen_text):
    frozen_text.zero_grad()
    frozen_text(["cardiomegaly"]).sum().backward()
    assert frozen_text.proj.weight.grad is not None
    assert all(p.grad is None for p in frozen_text.backbone.parameters())


def test_unfrozen_text_tower_gets_gradients():
    encoder = TextEncoder(TextEncoderConfig(freeze=False, max_length=32), embed_dim=8, projection="mlp")
    encoder(["pneumothorax", "normal chest"]).sum().backward()
    grads = [p.grad for p in encoder.backbone.parameters() if p.requires_grad]
    assert grads and any(g is not None and g.abs().sum() > 0 for g in grads)


def test_local_checkpoint_folder_is_used(tmp_path):
    """Any folder saved with save_pretrained works (stands in for a clinical BERT on disk)."""
    from transformers import AutoModel, AutoTokenizer

    source = resolve_text_model_path(None)
    AutoModel.from_pretrained(source).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(source).save_pretrained(tmp_path)
    encoder = TextEncoder(TextEncoderConfig(model_path=str(tmp_path)), embed_dim=8, projection="linear")
    assert encoder.model_dir == tmp_path and encoder.hidden_size == 384


@pytest.mark.parametrize("bad", ["emilyalsentzer/Bio_ClinicalBERT", "/no/such/folder"])
def test_hub_ids_and_missing_folders_are_refused(bad):
    with pytest.raises(ValueError, match="never downloads"):
        resolve_text_model_path(bad)
