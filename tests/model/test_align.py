from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medcm.model.align import AlignmentLoss, DualOutput, infonce_loss, kl_loss, mse_loss, positive_mask


def _naive_infonce(image, text, scale):
    """Loop-by-loop symmetric InfoNCE, the reference for the vectorised one."""
    n = len(image)
    total = 0.0
    for i in range(n):
        logits_i = torch.stack([scale * image[i] @ text[j] for j in range(n)])
        logits_t = torch.stack([scale * text[i] @ image[j] for j in range(n)])
        total += -torch.log_softmax(logits_i, 0)[i] - torch.log_softmax(logits_t, 0)[i]
    return total / (2 * n)


def _embeddings(seed, n=6, d=8):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=-1), F.normalize(torch.randn(n, d, generator=g), dim=-1)


def test_infonce_matches_naive_reference():
    image, text = _embeddings(0)
    scale = torch.tensor(10.0)
    torch.testing.assert_close(infonce_loss(image, text, scale), _naive_infonce(image, text, scale))


def test_infonce_is_log_n_for_uninformative_embeddings():
    image = F.normalize(torch.ones(5, 4), dim=-1)
    assert float(infonce_loss(image, image, torch.tensor(1.0))) == pytest.approx(math.log(5), rel=1e-6)


def test_positive_mask_treats_images_of_one_case_as_matches():
    mask = positive_mask(["a", "b", "a"])
    assert mask.tolist() == [[1, 0, 1], [0, 1, 0], [1, 0, 1]]
    # Items 0 and 2 belong to case "a" but carry different texts (e.g. an image caption and the case
    # findings). Without the mask, image 0 is pushed away from text 2 of its own case; with it, pulled closer.
    texts = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]), dim=-1)
    pushes = {}
    for name, positives in (("masked", mask), ("plain", None)):
        image = texts.clone().requires_grad_(True)
        infonce_loss(image, texts, torch.tensor(10.0), positives).backward()
        pushes[name] = float(image.grad[0] @ texts[2])  # > 0: a descent step lowers similarity to text 2
    assert pushes["masked"] < 0 < pushes["plain"]


def test_mse_is_two_minus_two_cosine_for_unit_vectors():
    image, text = _embeddings(1)
    expected = (2 - 2 * (image * text).sum(-1)).mean()
    torch.testing.assert_close(mse_loss(image, text), expected)


def test_kl_is_zero_for_symmetric_similarity_and_positive_otherwise():
    image, _ = _embeddings(2)
    assert float(kl_loss(image, image, torch.tensor(5.0))) == pytest.approx(0.0, abs=1e-6)
    image, text = _embeddings(3)
    assert float(kl_loss(image, text, torch.tensor(5.0))) > 1e-3


@pytest.mark.parametrize("weights", [{"infonce": 1.0}, {"mse": 1.0}, {"kl": 1.0}, {"infonce": 1.0, "mse": 0.5, "kl": 0.5}])
def test_every_loss_decreases_on_a_toy_batch(weights):
    torch.manual_seed(0)
    image_tower, text_tower = torch.nn.Linear(6, 4), torch.nn.Linear(6, 4)
    logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    x, y = torch.randn(8, 6), torch.randn(8, 6)
    loss_fn = AlignmentLoss(weights)
    params = [*image_tower.parameters(), *text_tower.parameters(), logit_scale]
    optimizer = torch.optim.Adam(params, lr=0.05)
    losses = []
    for _ in range(60):
        out = DualOutput(F.normalize(image_tower(x), dim=-1), F.normalize(text_tower(y), dim=-1), logit_scale.exp())
        loss = loss_fn(out).total
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses[::10]


@pytest.mark.parametrize("multi_label", [False, True])
def test_aux_loss_decreases_and_ignores_unlabelled(multi_label):
    torch.manual_seed(0)
    head = torch.nn.Linear(6, 3)
    x = torch.randn(6, 6)
    targets = torch.tensor([0, 1, 2, -1, 1, 0]) if not multi_label else (torch.rand(6, 3) > 0.5).float()
    loss_fn = AlignmentLoss({"mse": 1.0}, aux_weight=1.0, aux_multi_label=multi_label)
    optimizer = torch.optim.Adam(head.parameters(), lr=0.1)
    emb = F.normalize(torch.ones(6, 2), dim=-1)
    first = last = None
    for _ in range(50):
        out = loss_fn(DualOutput(emb, emb, torch.tensor(1.0), head(x)), aux_targets=targets)
        optimizer.zero_grad()
        out.total.backward()
        optimizer.step()
        first = first if first is not None else out.parts["aux"]
        last = out.parts["aux"]
    assert last < 0.3 * first


def test_unknown_loss_name_is_refused():
    with pytest.raises(ValueError, match="triplet"):
        AlignmentLoss({"triplet": 1.0})


def test_dual_encoder_outputs_unit_vectors_and_clamped_scale(tiny_model):
    with torch.no_grad():
        images = tiny_model.encode_image(torch.randn(4, 1, 64, 64))
        texts = tiny_model.encode_text(["a", "b"])
        raw = tiny_model.encode_text(["a"], normalize=False)
    torch.testing.assert_close(images.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(texts.norm(dim=-1), torch.ones(2))
    assert abs(float(raw.norm()) - 1.0) > 1e-3
    assert float(tiny_model.scale().detach()) == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        tiny_model.logit_scale.fill_(10.0)
        assert float(tiny_model.scale().detach()) == 100.0
        tiny_model.logit_scale.fill_(math.log(1 / 0.07))


@pytest.mark.parametrize("on_embedding", [False, True])
def test_aux_head_reads_features_or_the_shared_embedding(tiny_config, on_embedding):
    import dataclasses

    from medcm.model.align import DualEncoder
    from medcm.config import AuxHeadConfig

    head = AuxHeadConfig(field="region", classes=("Head", "Thorax", "Abdomen"), on_embedding=on_embedding)
    model_config = dataclasses.replace(tiny_config.model, aux_head=head)
    model = DualEncoder(model_config, tiny_config.preprocess.image_size).eval()
    expected_in = model_config.embed_dim if on_embedding else model.image.feature_dim
    assert model.aux_head.in_features == expected_in
    images = torch.rand(2, 1, tiny_config.preprocess.image_size, tiny_config.preprocess.image_size)
    with torch.no_grad():
        out = model(images, ["a", "b"])
        feats = model.image.features(images)
    source = out.image if on_embedding else feats
    torch.testing.assert_close(out.aux_logits, model.aux_head(source))


def test_finding_head_gives_each_label_its_sigmoid_probability(tiny_config):
    import dataclasses

    from medcm.model.align import DualEncoder
    from medcm.config import REPORT_FINDINGS, AuxHeadConfig

    labels = ("effusion", "effusion:left", "normal")
    head = AuxHeadConfig(field=REPORT_FINDINGS, classes=labels, multi_label=True, on_embedding=True, embedding_scale=2.0)
    model = DualEncoder(dataclasses.replace(tiny_config.model, aux_head=head), tiny_config.preprocess.image_size)
    vector = np.zeros(tiny_config.model.embed_dim, np.float32)
    vector[0] = 1.0
    with torch.no_grad():
        model.aux_head.weight.zero_()
        model.aux_head.weight[1, 0] = 2.0
        model.aux_head.bias.copy_(torch.tensor([0.0, -1.0, 3.0]))
    seen = model.image_findings(vector)
    assert list(seen) == list(labels)
    np.testing.assert_allclose([seen[x] for x in labels], 1 / (1 + np.exp(-np.array([0.0, 3.0, 3.0]))), rtol=1e-6)
    with torch.no_grad():  # the forward pass scales the embedding the same way
        out = model.eval()(torch.rand(1, 1, tiny_config.preprocess.image_size, tiny_config.preprocess.image_size), ["a"])
    torch.testing.assert_close(out.aux_logits, model.aux_head(out.image * 2.0))
    assert model.region_head() is None
    # A multi-label head on another field, or a single-label one, is no finding head.
    other = dataclasses.replace(head, field="labels")
    assert DualEncoder(dataclasses.replace(tiny_config.model, aux_head=other), tiny_config.preprocess.image_size).image_findings(vector) is None
