"""The PNG thumbnails stored with each instance: the middle frame, longer side `PREVIEW_SIZE` px.

Ingest renders one per new file, so it has to cost about what reading the file costs. The frame is
resized with PIL's bilinear filter on its float pixels. When shrinking, that filter widens its
kernel (antialiased, like `medcm.model.preprocess.resize_and_pad`), and it box-reduces a very large
image by an integer factor first (`reducing_gap`). The result is made 8-bit and written by
`encode_png`, which is 4 to 8 times faster than PIL's default PNG (adaptive filters, deflate level 6);
its files are 0-25% larger on CT, MR and radiographs. Neither step holds the GIL for long, so ingest
renders previews on a worker thread while it reads the next files.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Hashable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from medcm.model.preprocess import select_frame

__all__ = ["PREVIEW_SIZE", "PreviewRenderer", "encode_png", "preview_shape", "render_preview"]

PREVIEW_SIZE = 256
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_FILTER_UP = 2  # PNG filter type: each byte minus the byte above it (the row above the first is zeros)


def preview_shape(height: int, width: int, size: int = PREVIEW_SIZE) -> tuple[int, int]:
    """(height, width) of the thumbnail of a `height` × `width` image: longer side `size`, aspect kept.

    Raises:
        ValueError: a size below 1.
    """
    if height < 1 or width < 1 or size < 1:
        raise ValueError(f"preview of a {height} x {width} image at size {size}: expected sizes of at least 1")
    scale = size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def encode_png(grey: np.ndarray) -> bytes:
    """An 8-bit grey-scale PNG of `grey` (lossless; any PNG reader opens it as mode "L").

    Rows are "Up"-filtered (each minus the one above: small values where the image is smooth) and
    deflated with zlib's run-length strategy. On such rows that compresses almost as well as a full
    match search, and it takes about half the time of deflate level 1 on noisy images.

    Args:
        grey: `[H, W]` uint8.

    Raises:
        ValueError: `grey` is not a non-empty 2-D uint8 array.
    """
    if grey.dtype != np.uint8 or grey.ndim != 2 or min(grey.shape) < 1:
        raise ValueError(f"encode_png: got a {grey.dtype} array of shape {grey.shape}; "
                         "expected a non-empty [H, W] uint8 array")
    height, width = grey.shape
    rows = np.empty((height, width + 1), dtype=np.uint8)
    rows[:, 0] = _FILTER_UP
    rows[0, 1:] = grey[0]
    np.subtract(grey[1:], grey[:-1], out=rows[1:, 1:])  # uint8 arithmetic wraps modulo 256, as PNG requires
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8 bits, grey, deflate, no interlace
    deflate = zlib.compressobj(1, zlib.DEFLATED, zlib.MAX_WBITS, 9, zlib.Z_RLE)
    data = deflate.compress(rows.data) + deflate.flush()
    return b"".join((_PNG_SIGNATURE, _chunk(b"IHDR", header), _chunk(b"IDAT", data), _chunk(b"IEND", b"")))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def render_preview(pixels: np.ndarray, size: int = PREVIEW_SIZE) -> bytes:
    """A PNG thumbnail of the middle frame (longer side `size` px, aspect kept, no padding).

    Args:
        pixels: display pixels `[F, H, W]` (or `[H, W]`) in [0, 1] (`DicomImage.pixels`).
        size: the longer side of the thumbnail in pixels.

    Returns:
        The bytes of an 8-bit grey-scale PNG.

    Raises:
        ValueError: `pixels` is not a non-empty `[F, H, W]` or `[H, W]` array.
    """
    from PIL import Image

    frame = select_frame(pixels, "middle")
    if min(frame.shape) < 1:
        raise ValueError(f"pixels: got shape {pixels.shape}; expected a non-empty [F, H, W] or [H, W] array")
    height, width = preview_shape(*frame.shape, size)
    if (height, width) != frame.shape:  # resize the floats, then convert only the small result
        frame = np.ascontiguousarray(frame, dtype=np.float32)
        image = Image.frombuffer("F", (frame.shape[1], frame.shape[0]), frame, "raw", "F", 0, 1)  # no copy
        frame = np.asarray(image.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=3.0))
    return encode_png((np.clip(frame, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))


class PreviewRenderer:
    """Renders previews on one worker thread, so the caller reads or embeds the next images meanwhile.

    A context manager: leaving it drops the previews not started yet. `start` queues a preview,
    `take` waits for it (rendering it on the spot if it was never started) and forgets it. An
    exception raised while rendering is raised again by `take`.
    """

    def __init__(self, size: int = PREVIEW_SIZE) -> None:
        self.size = size
        self._pool: ThreadPoolExecutor | None = None
        self._futures: dict[Hashable, Future[bytes]] = {}

    def __enter__(self) -> PreviewRenderer:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medcm-previews")
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._futures.clear()

    def start(self, key: Hashable, pixels: np.ndarray) -> None:
        """Queue the preview of `pixels` under `key` (e.g. the image), unless it is queued already."""
        if self._pool is None:
            raise RuntimeError("PreviewRenderer.start: use it inside a `with` block")
        if key not in self._futures:
            self._futures[key] = self._pool.submit(render_preview, pixels, self.size)

    def take(self, key: Hashable, pixels: np.ndarray) -> bytes:
        """The preview queued under `key`, or, if none was, that of `pixels` rendered now."""
        future = self._futures.pop(key, None)
        return render_preview(pixels, self.size) if future is None else future.result()
