"""Turn a display-ready greyscale image into an encoder input, the same way at training and query time.

The settings live in `PreprocessConfig`, which every checkpoint stores, so indexing and querying
always use the transforms the model was trained with.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from medcm.config import PreprocessConfig


def select_frame(pixels: np.ndarray, frame: str) -> np.ndarray:
    """Pick the frame a 2D encoder sees.

    Args:
        pixels: `[F, H, W]` or `[H, W]` greyscale in [0, 1].
        frame: "middle" or "first".

    Returns:
        `[H, W]` float32.
    """
    if pixels.ndim == 2:
        return pixels.astype(np.float32, copy=False)
    if pixels.ndim != 3 or pixels.shape[0] == 0:
        raise ValueError(f"pixels: expected [F, H, W] or [H, W], got shape {pixels.shape}")
    index = pixels.shape[0] // 2 if frame == "middle" else 0
    return pixels[index].astype(np.float32, copy=False)


def resize_and_pad(image: np.ndarray, size: int) -> torch.Tensor:
    """Resize keeping the aspect ratio so the longer side is `size`, then zero-pad to a centred square.

    Padding rather than stretching keeps anatomy proportions, which matter for reading a study.

    Args:
        image: `[H, W]` in [0, 1].
        size: output side.

    Returns:
        `[1, size, size]` float32 in [0, 1].
    """
    if image.ndim != 2 or min(image.shape) < 1:
        raise ValueError(f"image: expected a non-empty [H, W] array, got shape {image.shape}")
    height, width = image.shape
    scale = size / max(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    tensor = F.interpolate(tensor, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    padded = torch.zeros(1, 1, size, size)
    padded[..., top : top + new_h, left : left + new_w] = tensor
    return padded[0].clamp_(0.0, 1.0)


def normalize(images: torch.Tensor, config: PreprocessConfig) -> torch.Tensor:
    """Shift and scale images in [0, 1] by the config's mean and std (any shape)."""
    return (images - config.mean) / config.std


def prepare_image(pixels: np.ndarray, config: PreprocessConfig) -> torch.Tensor:
    """Full query-time preprocessing: frame choice, resize and pad, normalise.

    Args:
        pixels: `[F, H, W]` or `[H, W]` display-ready greyscale in [0, 1] (from `medcm.dicom.read`).
        config: the checkpoint's preprocessing.

    Returns:
        `[1, S, S]` float32 encoder input.
    """
    return normalize(resize_and_pad(select_frame(pixels, config.frame), config.image_size), config)


def augment_volumes(volumes: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """`augment_batch` for volumes `[B, 1, D, H, W]` ("3d") or `[B, K, 1, H, W]` ("2.5d"): the same
    in-plane zoom/shift and contrast for every slice of a volume, a different draw per volume."""
    flat = volumes.reshape(volumes.shape[0], -1, *volumes.shape[-2:])
    return augment_batch(flat, generator).reshape(volumes.shape)


def augment_batch(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Light training augmentation on a batch in [0, 1]: random zoom/shift and contrast/brightness.

    No flips: laterality is part of what a report says ("left lower lobe").

    Args:
        images: `[B, C, H, W]` in [0, 1], on any device; the C channels (e.g. the slices of a
            volume) get the same warp and contrast.
        generator: a CPU generator for reproducibility.

    Returns:
        `[B, C, H, W]` in [0, 1].
    """
    batch = images.shape[0]
    rand = torch.rand(batch, 5, generator=generator).to(images.device, images.dtype)
    scale = 0.9 + 0.2 * rand[:, 0]
    shift = (rand[:, 1:3] - 0.5) * 0.1
    theta = torch.zeros(batch, 2, 3, device=images.device, dtype=images.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    contrast = (0.85 + 0.3 * rand[:, 3]).view(-1, 1, 1, 1)
    brightness = ((rand[:, 4] - 0.5) * 0.1).view(-1, 1, 1, 1)
    return (warped * contrast + brightness).clamp(0.0, 1.0)
