"""The dual encoder that puts images and reports in one shared space, and its losses.

Follows open_clip's split: the model owns `encode_image`, `encode_text(normalize=...)` and a
learnable `logit_scale`; each loss is a small function and `AlignmentLoss` weighs them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medcm.config import LOSS_NAMES, REPORT_FINDINGS, ModelConfig
from medcm.model.encoders.image import ImageEncoder
from medcm.model.encoders.text import TextEncoder
from medcm.model.encoders.volume import build_volume_encoder

MAX_LOGIT_SCALE = 100.0  # CLIP's cap on 1/temperature, which keeps training stable
# How sharply the local loss pools a text's cosines over an image's locations: 0 would be their mean,
# infinity their maximum. 10 on cosines in [-1, 1] is GLoRIA's order of magnitude (its gammas are 4 to 10).
LOCAL_SHARPNESS = 10.0


@dataclass
class DualOutput:
    """What one forward pass produces.

    Attributes:
        image: `[B, D]` L2-normalised visual embeddings: the 2D images' rows, then the volumes' rows.
        text: `[B, D]` L2-normalised text embeddings, row i paired with `image` row i.
        logit_scale: scalar, 1/temperature (already exponentiated and clamped).
        aux_logits: `[B2, K]` multi-task head logits of the 2D images (the first B2 rows), or None
            without a head or without 2D images.
        local: `[B2, D, h, w]` the 2D images' local features in the shared space, L2-normalised per
            location; only computed when the `local` loss has a weight (None otherwise).
    """

    image: torch.Tensor
    text: torch.Tensor
    logit_scale: torch.Tensor
    aux_logits: torch.Tensor | None = None
    local: torch.Tensor | None = None


class DualEncoder(nn.Module):
    """Image tower + text tower + learnable temperature (+ optional multi-task head on the image trunk).

    With `config.volume`, a volume encoder (`medcm.model.encoders.volume`) embeds CT/MR/PT series into the
    same space: "2.5d" shares the image tower's trunk and projection, "3d" has its own; both are
    trained against the same reports as the 2D images, in the same batches.
    """

    def __init__(self, config: ModelConfig, image_size: int) -> None:
        super().__init__()
        self.config = config
        self.image = ImageEncoder(config.image, config.embed_dim, config.projection, image_size)
        self.text = TextEncoder(config.text, config.embed_dim, config.projection)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.init_temperature)))
        head = config.aux_head
        n_classes = len(head.classes) if head is not None else 0
        if head is not None and n_classes < 2 and not head.multi_label:
            raise ValueError(f"aux_head.classes: got {head.classes}, expected at least 2 classes")
        head_in = config.embed_dim if head is not None and head.on_embedding else self.image.feature_dim
        self.aux_head = nn.Linear(head_in, n_classes) if head is not None else None
        self.volume = (build_volume_encoder(config.volume, self.image, config.embed_dim, config.projection)
                       if config.volume is not None else None)

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Embed images `[B, 1, H, W]` (preprocessed) into `[B, D]`."""
        emb = self.image(images)
        return F.normalize(emb, dim=-1) if normalize else emb

    def encode_image_local(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Local features of images `[B, 1, H, W]` (preprocessed) in the shared space, `[B, D, h, w]`.

        The trunk's last feature map before pooling goes through the same projection head at every
        location (a 1×1 convolution with the head's weights), as BioViL does; L2-normalised per location,
        so `(local * text[:, :, None, None]).sum(1)` is a cosine map. 3D volumes have no such map here:
        ground one of their slices instead.
        """
        if images.ndim != 4:
            raise ValueError(f"encode_image_local: got shape {tuple(images.shape)}, expected 2D images [B, C, H, W] "
                             "(3D volumes are not supported yet: pass one slice)")
        local = self.image.project_map(self.image.feature_map(images))
        return F.normalize(local, dim=1) if normalize else local

    def encode_volume(self, volumes: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Embed prepared volumes into `[B, D]`: `[B, 1, D, H, W]` for "3d", `[B, K, 1, H, W]` for "2.5d".

        Raises:
            ValueError: the model has no volume encoder (its config has no `volume`).
        """
        if self.volume is None:
            raise ValueError("this model has no volume encoder (its config has no model.volume); "
                             "embed the slices with encode_image instead")
        emb = self.volume(volumes)
        return F.normalize(emb, dim=-1) if normalize else emb

    def encode_text(self, texts: list[str], normalize: bool = True) -> torch.Tensor:
        """Embed texts into `[B, D]`."""
        emb = self.text(texts)
        return F.normalize(emb, dim=-1) if normalize else emb

    def region_head(self) -> tuple[tuple[str, ...], np.ndarray, np.ndarray] | None:
        """(classes, weight `[K, D]`, bias `[K]`) of a single-label multi-task head that reads the shared
        embedding, so it can classify any stored vector (its `embedding_scale` folded into the weight);
        None for other heads or none."""
        return self._embedding_head(multi_label=False)

    def finding_head(self) -> tuple[tuple[str, ...], np.ndarray, np.ndarray] | None:
        """(labels, weight `[K, D]`, bias `[K]`) of a multi-label head on the shared embedding trained on
        the findings each report states (`REPORT_FINDINGS`); None for other heads or none."""
        head = self._embedding_head(multi_label=True)
        return head if head is not None and self.config.aux_head.field == REPORT_FINDINGS else None

    def image_findings(self, vector: np.ndarray) -> dict[str, float] | None:
        """The probability per finding label (`medcm.report.context.finding_labels`) that the image whose
        shared-space vector `[D]` this is shows it; None without a finding head."""
        head = self.finding_head()
        if head is None:
            return None
        labels, weight, bias = head
        logits = weight @ np.asarray(vector, dtype=np.float32).reshape(-1) + bias
        return {label: float(p) for label, p in zip(labels, 1.0 / (1.0 + np.exp(-logits)))}

    def _embedding_head(self, multi_label: bool) -> tuple[tuple[str, ...], np.ndarray, np.ndarray] | None:
        head = self.config.aux_head
        if head is None or not head.on_embedding or head.multi_label != multi_label:
            return None
        weight = self.aux_head.weight.detach().float().cpu().numpy() * head.embedding_scale  # folded in
        return head.classes, weight, self.aux_head.bias.detach().float().cpu().numpy()

    def scale(self) -> torch.Tensor:
        """1/temperature, clamped to `MAX_LOGIT_SCALE`."""
        return self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def forward(self, images: torch.Tensor | None, texts: list[str], volumes: torch.Tensor | None = None) -> DualOutput:
        """Embed a batch: 2D images `[B2, 1, H, W]` and/or volumes `[B3, ...]`, and their B2 + B3 texts.

        The visual rows are the images' then the volumes', so one contrastive loss sees both kinds:
        each volume's negatives include 2D images and their reports, which keeps one shared space.
        """
        visual, aux, local = [], None, None
        if images is not None and len(images):
            if self.config.losses.get("local", 0) > 0:  # one trunk pass gives both the map and its pooled vector
                feature_map = self.image.feature_map(images)
                feats = feature_map.mean(dim=(2, 3))
                local = F.normalize(self.image.project_map(feature_map), dim=1)
            else:
                feats = self.image.features(images)
            visual.append(F.normalize(self.image.proj(feats), dim=-1))
            if self.aux_head is not None:
                head = self.config.aux_head
                aux = self.aux_head(visual[0] * head.embedding_scale if head.on_embedding else feats)
        if volumes is not None and len(volumes):
            visual.append(self.encode_volume(volumes))
        if not visual:
            raise ValueError("forward: got no images and no volumes; expected at least one of them")
        text = self.encode_text(texts)
        image = torch.cat(visual) if len(visual) > 1 else visual[0]
        if len(image) != len(text):
            raise ValueError(f"forward: got {len(image)} images and volumes but {len(text)} texts; expected one text each")
        return DualOutput(image=image, text=text, logit_scale=self.scale(), aux_logits=aux, local=local)


def positive_mask(group_ids: list[str]) -> torch.Tensor:
    """`[B, B]` float mask, 1 where two items share a group (e.g. the images and texts of one case).

    When one case contributes different texts to a batch (an image caption and the case findings),
    plain InfoNCE would push each image away from its own case's other text; the mask counts them
    as matches. Identical texts get identical embeddings, so for them it changes nothing.
    """
    index = {g: i for i, g in enumerate(dict.fromkeys(group_ids))}
    ids = torch.tensor([index[g] for g in group_ids])
    return (ids[:, None] == ids[None, :]).float()


def _soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    targets = targets / targets.sum(dim=1, keepdim=True)
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def _symmetric_cross_entropy(logits: torch.Tensor, positives: torch.Tensor | None) -> torch.Tensor:
    """The mean of the image→text and text→image cross-entropies of `[B, B]` logits (positives: the diagonal)."""
    if positives is None:
        positives = torch.eye(len(logits), device=logits.device)
    positives = positives.to(logits.device, logits.dtype)
    return 0.5 * (_soft_cross_entropy(logits, positives) + _soft_cross_entropy(logits.t(), positives.t()))


def infonce_loss(
    image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, positives: torch.Tensor | None = None
) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP / ConVIRT) over a batch of pairs.

    Args:
        image: `[B, D]` normalised image embeddings.
        text: `[B, D]` normalised text embeddings; row i is paired with image row i.
        logit_scale: 1/temperature.
        positives: optional `[B, B]` mask of pairs that count as matches (from `positive_mask`).

    Returns:
        Scalar: the mean of the image→text and text→image cross-entropies.
    """
    return _symmetric_cross_entropy(logit_scale * image @ text.t(), positives)


def local_infonce_loss(
    local: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, positives: torch.Tensor | None = None
) -> torch.Tensor:
    """InfoNCE on each image's best-matching locations: a text should match some place in its own image
    and no place in the others (the local term of BioViL / GLoRIA, multiple-instance style).

    An image's score for a text is a soft maximum of their cosines over its locations (log-mean-exp at
    `LOCAL_SHARPNESS`), so a finding that fills one place of the image need not raise the pooled vector.

    Args:
        local: `[B, D, h, w]` local features, L2-normalised per location.
        text: `[B, D]` normalised text embeddings; row i is paired with image i.
        logit_scale: 1/temperature.
        positives: optional `[B, B]` mask of pairs that count as matches.

    Returns:
        Scalar: the symmetric cross-entropy over the batch's local scores.
    """
    cosines = torch.einsum("bdl,kd->bkl", local.flatten(2), text)  # [B images, B texts, locations]
    pooled = (torch.logsumexp(LOCAL_SHARPNESS * cosines, dim=2) - math.log(cosines.shape[2])) / LOCAL_SHARPNESS
    return _symmetric_cross_entropy(logit_scale * pooled, positives)


def mse_loss(image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Mean squared distance between paired embeddings (sum over dimensions, mean over the batch)."""
    return (image - text).pow(2).sum(dim=-1).mean()


def kl_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric KL divergence between the image→text and text→image similarity distributions.

    Row i of softmax(S) says where image i puts its mass over the texts; row i of softmax(Sᵀ) says
    where text i puts its mass over the images. For a well-aligned pair they agree. Alone this can be
    satisfied by a symmetric similarity matrix, so use it as a regulariser beside InfoNCE.
    """
    logits = logit_scale * image @ text.t()
    log_p = F.log_softmax(logits, dim=1)
    log_q = F.log_softmax(logits.t(), dim=1)
    forward = F.kl_div(log_q, log_p, log_target=True, reduction="batchmean")
    backward = F.kl_div(log_p, log_q, log_target=True, reduction="batchmean")
    return 0.5 * (forward + backward)


@dataclass
class LossOutput:
    """The weighted total and each named part (unweighted), for logging."""

    total: torch.Tensor
    parts: dict[str, float] = field(default_factory=dict)


class AlignmentLoss(nn.Module):
    """Weighted sum of the selected alignment losses plus the optional multi-task loss.

    Args:
        weights: loss name (`infonce`, `mse`, `kl`, `local`) → weight. `local` (`local_infonce_loss`)
            needs the 2D images' local features in the output (`DualOutput.local`).
        aux_weight: weight of the multi-task head loss.
        aux_multi_label: the head is multi-label (BCE) rather than single-label (CE).
    """

    def __init__(self, weights: dict[str, float], aux_weight: float = 0.0, aux_multi_label: bool = False) -> None:
        super().__init__()
        unknown = set(weights) - set(LOSS_NAMES)
        if unknown:
            raise ValueError(f"losses: got unknown {sorted(unknown)}, expected names in {LOSS_NAMES}")
        self.weights = {k: float(v) for k, v in weights.items() if v > 0}
        self.aux_weight = aux_weight
        self.aux_multi_label = aux_multi_label

    def forward(
        self, out: DualOutput, positives: torch.Tensor | None = None, aux_targets: torch.Tensor | None = None
    ) -> LossOutput:
        # Similarities in float32 even under bf16 autocast: logits scaled by up to 100 need the precision.
        local = None if out.local is None else out.local.float()
        out = DualOutput(out.image.float(), out.text.float(), out.logit_scale.float(), out.aux_logits, local)
        parts: dict[str, torch.Tensor] = {}
        if "infonce" in self.weights:
            parts["infonce"] = infonce_loss(out.image, out.text, out.logit_scale, positives)
        if "mse" in self.weights:
            parts["mse"] = mse_loss(out.image, out.text)
        if "kl" in self.weights:
            parts["kl"] = kl_loss(out.image, out.text, out.logit_scale)
        if "local" in self.weights:
            parts["local"] = self._local_loss(out, positives)
        total = sum(self.weights[name] * value for name, value in parts.items())
        if out.aux_logits is not None and aux_targets is not None and self.aux_weight > 0:
            parts["aux"] = self._aux_loss(out.aux_logits, aux_targets)
            total = total + self.aux_weight * parts["aux"]
        return LossOutput(total=total, parts={k: float(v.detach()) for k, v in parts.items()})

    def _local_loss(self, out: DualOutput, positives: torch.Tensor | None) -> torch.Tensor:
        if out.local is None:
            raise ValueError("loss 'local': got no local features (DualOutput.local); expected a forward pass of "
                             "DualEncoder with model.losses['local'] > 0, without accum_steps > 1 or torchrun")
        n = len(out.local)  # the 2D images are the first rows; volumes have no local map
        return local_infonce_loss(out.local, out.text[:n], out.logit_scale,
                                  None if positives is None else positives[:n, :n])

    def _aux_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.aux_multi_label:
            return F.binary_cross_entropy_with_logits(logits.float(), targets.float())
        labelled = targets >= 0  # -1 marks a record without a label
        if not labelled.any():
            return logits.sum() * 0.0
        return F.cross_entropy(logits[labelled].float(), targets[labelled])
