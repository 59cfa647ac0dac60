"""Volume encoders that land in the image tower's shared space, and the study embedding over series.

Two kinds, chosen by `VolumeEncoderConfig.kind`:

- "2.5d" (`SliceAttentionEncoder`): the 2D image tower's trunk, with shared weights, over K evenly
  sampled slices; gated attention pooling (Ilse et al. 2018) over the slice features; then the 2D
  tower's own projection. A one-slice volume embeds exactly like that slice as a 2D image, so single
  images and volumes share one space by construction.
- "3d" (`VolumeEncoder3D`): a MONAI 3D ResNet (`spatial_dims=3`) on a resampled volume, with its own
  projection into the shared space; the contrastive loss has to pull it into the same space.

`prepare_volume` turns rescaled voxels (HU for CT) into either kind's input in [0, 1]; like
`medcm.model.preprocess.prepare_image`, the encoder input is then `medcm.model.preprocess.normalize(x, preprocess)`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medcm.config import VOLUME_ARCHS, VOLUME_KINDS, PreprocessConfig, VolumeEncoderConfig
from medcm.model.encoders.image import ImageEncoder, build_trunk_3d, projection_head
from medcm.model.preprocess import normalize

if TYPE_CHECKING:
    from medcm.dicom.volume import Volume

__all__ = ["VOLUME_ARCHS", "VOLUME_KINDS", "VolumeEncoderConfig", "GatedAttentionPool", "SliceAttentionEncoder",
           "VolumeEncoder3D", "build_volume_encoder", "prepare_volume", "sample_slice_indices", "study_embedding",
           "volume_input"]

def sample_slice_indices(n_total: int, n_samples: int) -> list[int]:
    """`n_samples` evenly spaced slice indices in `[0, n_total)`, including the first and the last.

    With fewer slices than samples, slices repeat (each about equally often), so every volume gives
    the same number of slices; attention pooling over repeats of one slice returns that slice.
    """
    if n_total < 1 or n_samples < 1:
        raise ValueError(f"slice sampling: got n_total={n_total}, n_samples={n_samples}, expected >= 1 each")
    return [int(i) for i in np.linspace(0, n_total - 1, n_samples).round()]


_HEAD_PARTS = frozenset({"HEAD", "BRAIN", "SKULL"})  # as medcm.dicom.display.default_window


def _value_range(voxels: np.ndarray, modality: str, body_part: str, config: VolumeEncoderConfig) -> tuple[float, float]:
    """The values mapped to 0 and 1: the CT window's edges, or the volume's percentiles otherwise."""
    if modality.strip().upper() == "CT":
        center, width = config.head_ct_window if body_part.strip().upper() in _HEAD_PARTS else config.ct_window
        # DICOM LINEAR: y = ((x - (c - 0.5)) / (w - 1) + 0.5), clipped; 0 at c - w/2, 1 at c + w/2 - 1.
        return center - width / 2, center + width / 2 - 1
    low, high = (float(v) for v in np.percentile(voxels, config.mr_percentiles))
    if high <= low:  # mostly flat volume: fall back to the full range, as medcm.dicom.read does for images
        low, high = float(voxels.min()), float(voxels.max())
    return low, high


def _scale(voxels: np.ndarray, low: float, high: float) -> torch.Tensor:
    """Linearly map `[low, high]` to [0, 1] and clip; a flat range gives zeros."""
    tensor = torch.from_numpy(np.ascontiguousarray(voxels, dtype=np.float32))
    if high <= low:
        return torch.zeros_like(tensor)
    return ((tensor - low) / (high - low)).clamp_(0.0, 1.0)


def _inplane_resize_and_pad(slices: torch.Tensor, size: int, row_over_col: float) -> torch.Tensor:
    """`[N, H, W]` → `[N, 1, size, size]`: resize so the longer physical side is `size`, centre, zero-pad.

    With square pixels this is `medcm.model.preprocess.resize_and_pad` applied to each slice, operation for
    operation, so a "2.5d" slice is exactly what the 2D tower sees.
    """
    height, width = slices.shape[1] * row_over_col, slices.shape[2]
    scale = size / max(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    resized = F.interpolate(slices[:, None], size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    padded = torch.zeros(slices.shape[0], 1, size, size)
    padded[..., top : top + new_h, left : left + new_w] = resized
    return padded.clamp_(0.0, 1.0)


def _resample_depth(volume: torch.Tensor, depth: int) -> torch.Tensor:
    """`[D, H, W]` → `[depth, H, W]` by linear interpolation along D, antialiased when it shrinks.

    Seen as a `[D, H*W]` image, an antialiased bilinear resize to `(depth, H*W)` filters along D only.
    """
    n, height, width = volume.shape
    flat = volume.reshape(1, 1, n, height * width)
    out = F.interpolate(flat, size=(depth, height * width), mode="bilinear", align_corners=False, antialias=True)
    return out.reshape(depth, height, width)


def _check_volume(voxels: np.ndarray, spacing: tuple[float, float, float]) -> None:
    shape = getattr(voxels, "shape", None)
    if not isinstance(voxels, np.ndarray) or voxels.ndim != 3 or min(voxels.shape) < 1:
        raise ValueError(f"voxels: got {type(voxels).__name__} of shape {shape}, expected a non-empty [D, H, W] array")
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing: got {tuple(spacing)}, expected three positive (slice, row, column) sizes in mm")


def prepare_volume(
    voxels: np.ndarray, spacing: tuple[float, float, float], modality: str, config: VolumeEncoderConfig,
    body_part: str = "",
) -> torch.Tensor:
    """Turn one series' voxels into a volume encoder's input in [0, 1].

    Intensities: CT is windowed with `config.ct_window` (`config.head_ct_window` for a head); every
    other modality (MR, PT, ...) is scaled by the volume's `config.mr_percentiles`. In-plane, the
    longer physical side (pixel spacing applied) is resized to `config.size` with antialiased
    bilinear interpolation and the other is zero-padded, never stretched. Apply
    `medcm.model.preprocess.normalize` to the result before encoding (`volume_input` does both), as
    `prepare_image` does for 2D images.

    Args:
        voxels: `[D, H, W]` rescaled values (HU for CT), slices in acquisition order.
        spacing: (slice spacing, row spacing, column spacing) in mm, matching `[D, H, W]`.
        modality: the DICOM Modality, e.g. "CT" or "MR".
        config: the volume settings.
        body_part: the DICOM BodyPartExamined; HEAD, BRAIN or SKULL picks the head CT window.

    Returns:
        "3d": `[1, depth, size, size]` float32, the depth axis linearly resampled (trilinear overall,
        antialiased when shrinking). "2.5d": `[n_slices, 1, size, size]` float32, evenly spaced
        slices including the first and last (`sample_slice_indices`).

    Raises:
        ValueError: not a non-empty 3D array, or a spacing that is not three positive numbers.
    """
    _check_volume(voxels, spacing)
    low, high = _value_range(voxels, modality, body_part, config)
    row_over_col = 1.0 if spacing[1] == spacing[2] else spacing[1] / spacing[2]
    if config.kind == "2.5d":
        picked = voxels[sample_slice_indices(voxels.shape[0], config.n_slices)]
        return _inplane_resize_and_pad(_scale(picked, low, high), config.size, row_over_col)
    slices = _inplane_resize_and_pad(_scale(voxels, low, high), config.size, row_over_col)
    return _resample_depth(slices[:, 0], config.depth).clamp_(0.0, 1.0)[None]


def volume_input(volume: Volume, config: VolumeEncoderConfig, preprocess: PreprocessConfig) -> torch.Tensor:
    """The encoder input of an assembled series: `prepare_volume`, then `medcm.model.preprocess.normalize`.

    Training, evaluation and the engine all call this, so a volume is prepared one way everywhere.

    Args:
        volume: an assembled series (`medcm.dicom.volume.Volume`).
        config: the checkpoint's volume settings.
        preprocess: the checkpoint's preprocessing (its mean and std).

    Returns:
        `[1, depth, size, size]` ("3d") or `[n_slices, 1, size, size]` ("2.5d") float32.
    """
    prepared = prepare_volume(volume.voxels, volume.spacing, volume.modality, config, volume.body_part)
    return normalize(prepared, preprocess)


class GatedAttentionPool(nn.Module):
    """Gated attention-MIL pooling (Ilse et al. 2018): a learned convex combination of slice features.

    `a_k = softmax_k(w · (tanh(V h_k) ⊙ sigmoid(U h_k)))`, pooled `= Σ_k a_k h_k`. Equivariant to the
    slice order (the pooled vector is invariant), and masked (padded) slices get weight 0.

    Args:
        in_dim: feature size `F`.
        attention_dim: hidden size of the attention branches.
    """

    def __init__(self, in_dim: int, attention_dim: int = 128) -> None:
        super().__init__()
        self.attention_v = nn.Linear(in_dim, attention_dim)
        self.attention_u = nn.Linear(in_dim, attention_dim)
        self.attention_w = nn.Linear(attention_dim, 1)

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool slice features.

        Args:
            features: `[B, K, F]`.
            mask: optional `[B, K]` bool, True for real slices; each row needs at least one.

        Returns:
            pooled `[B, F]` and weights `[B, K]` (summing to 1 over the unmasked slices).
        """
        if features.ndim != 3:
            raise ValueError(f"features: got shape {tuple(features.shape)}, expected [B, K, F]")
        if mask is not None:
            mask = _check_mask(mask, features.shape[:2])
            features = features.masked_fill(~mask[..., None], 0.0)
        gated = torch.tanh(self.attention_v(features)) * torch.sigmoid(self.attention_u(features))
        logits = self.attention_w(gated).squeeze(-1)
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(logits.float(), dim=1).to(features.dtype)
        return torch.einsum("bk,bkf->bf", weights, features), weights


def _check_mask(mask: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"mask: got shape {tuple(mask.shape)}, expected [B, K] = {tuple(shape)}")
    mask = mask.to(torch.bool)
    if not bool(mask.any(dim=1).all()):
        raise ValueError("mask: got a volume with every slice masked, expected at least one real slice per volume")
    return mask


class SliceAttentionEncoder(nn.Module):
    """2.5D: the 2D tower's trunk over K slices, gated attention pooling, then the 2D tower's projection.

    The trunk and projection are the given `ImageEncoder`'s own modules (shared weights, not copies),
    so a volume and a 2D image land in one space, and a one-slice volume embeds exactly like that
    slice through `image_encoder`. Only the attention pooling is new.

    Attributes:
        image: the shared 2D image tower.
        pool: the gated attention pooling over slice features.
    """

    def __init__(self, image_encoder: ImageEncoder, attention_dim: int = 128) -> None:
        super().__init__()
        self.image = image_encoder
        self.pool = GatedAttentionPool(image_encoder.feature_dim, attention_dim)

    def slice_features(self, slices: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Trunk features `[B, K, F]` of slices `[B, K, C, H, W]`; masked slices are skipped and get zeros.

        Skipping padded slices saves their compute and keeps them out of BatchNorm's batch statistics.
        """
        if slices.ndim != 5:
            raise ValueError(f"slices: got shape {tuple(slices.shape)}, expected [B, K, C, H, W]")
        batch, count = slices.shape[:2]
        flat = slices.flatten(0, 1)
        if mask is None:
            return self.image.features(flat).reshape(batch, count, -1)
        keep = _check_mask(mask, slices.shape[:2]).flatten().nonzero(as_tuple=True)[0]
        kept = self.image.features(flat[keep])
        feats = torch.zeros(batch * count, kept.shape[-1], dtype=kept.dtype, device=kept.device)
        return feats.index_put((keep,), kept).reshape(batch, count, -1)

    def embed_with_weights(
        self, slices: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings `[B, E]` (not normalised) and attention weights `[B, K]` (which slices drove them)."""
        pooled, weights = self.pool(self.slice_features(slices, mask), mask)
        return self.image.proj(pooled), weights

    def forward(self, slices: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Embed volumes given as slices `[B, K, C, H, W]` (+ optional `[B, K]` mask) into `[B, E]`."""
        return self.embed_with_weights(slices, mask)[0]


class VolumeEncoder3D(nn.Module):
    """3D: a MONAI 3D ResNet trunk and its own projection head into the shared space.

    Attributes:
        trunk: the MONAI 3D feature extractor (`build_trunk_3d`).
        feature_dim: size of the trunk's pooled features.
        proj: the projection head (give it the 2D tower's `embed_dim` and projection kind).
    """

    def __init__(self, arch: str, embed_dim: int, projection: str) -> None:
        super().__init__()
        self.trunk, self.feature_dim = build_trunk_3d(arch, in_channels=1)
        self.proj = projection_head(self.feature_dim, embed_dim, projection)

    def features(self, volumes: torch.Tensor) -> torch.Tensor:
        """Pooled trunk features `[B, feature_dim]` of volumes `[B, 1, D, H, W]`."""
        if volumes.ndim != 5:
            raise ValueError(f"volumes: got shape {tuple(volumes.shape)}, expected [B, 1, D, H, W]")
        return self.trunk(volumes)

    def forward(self, volumes: torch.Tensor) -> torch.Tensor:
        """Embed volumes `[B, 1, D, H, W]` into `[B, E]` (not normalised)."""
        return self.proj(self.features(volumes))


def build_volume_encoder(
    config: VolumeEncoderConfig, image_encoder: ImageEncoder, embed_dim: int, projection: str
) -> nn.Module:
    """The volume encoder `config.kind` names.

    Args:
        config: the volume settings.
        image_encoder: the 2D tower ("2.5d" shares its trunk and projection).
        embed_dim: size of the shared space (used by "3d").
        projection: projection kind of the 2D tower, "mlp" or "linear" (used by "3d").
    """
    if config.kind == "2.5d":
        return SliceAttentionEncoder(image_encoder, config.attention_dim)
    return VolumeEncoder3D(config.arch_3d, embed_dim, projection)


def study_embedding(series_embeddings: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Aggregate a study's series: the (weighted) mean of their normalised embeddings, re-normalised.

    Args:
        series_embeddings: `[S, E]` series embeddings (normalised here again, so raw ones work too).
        weights: optional `[S]` non-negative weights, e.g. slice counts; None weighs series equally.

    Returns:
        `[E]` L2-normalised study embedding.
    """
    if series_embeddings.ndim != 2 or series_embeddings.shape[0] < 1:
        raise ValueError(f"series_embeddings: got shape {tuple(series_embeddings.shape)}, expected [S, E] with S >= 1")
    unit = F.normalize(series_embeddings, dim=-1)
    if weights is None:
        return F.normalize(unit.mean(dim=0), dim=0)
    weights = weights.to(unit)
    if tuple(weights.shape) != (unit.shape[0],) or bool((weights < 0).any()) or not bool(weights.sum() > 0):
        raise ValueError(f"weights: got {weights.tolist()}, expected {unit.shape[0]} non-negative values, not all zero")
    return F.normalize((weights[:, None] * unit).sum(dim=0), dim=0)
