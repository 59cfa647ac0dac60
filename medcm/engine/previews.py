"""The PNG thumbnails stored with each instance: the middle frame, longer side `PREVIEW_SIZE` px."""

from __future__ import annotations

import io

import numpy as np

from medcm.model.preprocess import resize_and_pad, select_frame

__all__ = ["PREVIEW_SIZE", "render_preview"]

PREVIEW_SIZE = 256


def render_preview(pixels: np.ndarray, size: int = PREVIEW_SIZE) -> bytes:
    """A PNG thumbnail of the middle frame (longer side `size` px, aspect kept, no padding).

    Args:
        pixels: display pixels `[F, H, W]` in [0, 1] (`DicomImage.pixels`).
        size: the longer side of the thumbnail in pixels.
    """
    from PIL import Image

    frame = select_frame(pixels, "middle")
    square = resize_and_pad(frame, size)[0].numpy()
    height, width = frame.shape
    scale = size / max(height, width)
    h, w = max(1, round(height * scale)), max(1, round(width * scale))
    top, left = (size - h) // 2, (size - w) // 2
    crop = (square[top : top + h, left : left + w] * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(crop).save(buffer, format="PNG")
    return buffer.getvalue()
