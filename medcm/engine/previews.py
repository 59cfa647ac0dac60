"""The PNG thumbnails stored with each instance: the middle frame, longer side `PREVIEW_SIZE` px.

Rendered with PIL on 8-bit pixels (no torch): ingest makes one per new file, so it must cost well
under a millisecond for a typical image. PIL's bilinear resize widens its kernel when shrinking
(antialiased, as `medcm.model.preprocess.resize_and_pad` does with torch), and `reducing_gap` first
box-reduces very large images (a 3000 px radiograph) by an integer factor, which is exact enough
for a thumbnail and several times faster. The PNG is written with zlib level 1: about as small as
the default level on grey-scale images, at a fraction of the time.
"""

from __future__ import annotations

import io

import numpy as np

from medcm.model.preprocess import select_frame

__all__ = ["PNG_COMPRESS_LEVEL", "PREVIEW_SIZE", "preview_shape", "render_preview"]

PREVIEW_SIZE = 256
PNG_COMPRESS_LEVEL = 1  # zlib level: 1 is several times faster than PIL's default 6


def preview_shape(height: int, width: int, size: int = PREVIEW_SIZE) -> tuple[int, int]:
    """(height, width) of the thumbnail of a `height` × `width` image: longer side `size`, aspect kept."""
    if height < 1 or width < 1 or size < 1:
        raise ValueError(f"preview of a {height} x {width} image at size {size}: expected positive sizes")
    scale = size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def render_preview(pixels: np.ndarray, size: int = PREVIEW_SIZE) -> bytes:
    """A PNG thumbnail of the middle frame (longer side `size` px, aspect kept, no padding).

    Args:
        pixels: display pixels `[F, H, W]` (or `[H, W]`) in [0, 1] (`DicomImage.pixels`).
        size: the longer side of the thumbnail in pixels.

    Returns:
        The PNG bytes of an 8-bit grey-scale ("L") image.

    Raises:
        ValueError: `pixels` is not `[F, H, W]` or `[H, W]`, or is empty.
    """
    from PIL import Image

    frame = select_frame(pixels, "middle")
    if frame.ndim != 2 or min(frame.shape) < 1:
        raise ValueError(f"pixels: expected a non-empty [F, H, W] or [H, W] array, got shape {pixels.shape}")
    height, width = preview_shape(*frame.shape, size)
    # 8 bits before resizing: PIL's "L" resize is several times faster than its float ("F") one.
    grey = (np.clip(frame, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    image = Image.fromarray(grey)
    if (height, width) != frame.shape:
        image = image.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=3.0)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()
