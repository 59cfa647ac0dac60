"""The ingest pipeline's fast paths: PIL previews checked against the torch reference they replaced,
the PNG writer against PIL's reader, previews rendered once per new file on a worker thread, and the
store asked in batches rather than per file or per study."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
from PIL import Image

import medcm.engine.previews as previews
from db.store import CaseStore
from medcm.engine.facade import Engine
from medcm.engine.previews import PreviewRenderer, encode_png, preview_shape, render_preview
from medcm.model.preprocess import resize_and_pad


def _torch_preview(frame: np.ndarray, size: int) -> np.ndarray:
    """The preview as it was rendered before: torch's antialiased resize into a padded square, cropped."""
    square = resize_and_pad(frame, size)[0].numpy()
    height, width = preview_shape(*frame.shape, size)
    top, left = (size - height) // 2, (size - width) // 2
    return (square[top : top + height, left : left + width] * 255).round().astype(np.uint8)


def _decoded(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


@pytest.mark.parametrize(("shape", "size", "expected"), [
    ((1, 100, 200), 64, (64, 32)),  # (width, height) as PIL gives it
    ((3, 300, 150), 256, (128, 256)),
    ((1, 256, 256), 256, (256, 256)),
    ((1, 40, 30), 256, (192, 256)),  # enlarged: the longer side is always `size`
    ((1, 1, 500), 256, (256, 1)),
    ((120, 90), 256, (192, 256)),  # [H, W] as well as [F, H, W]
])
def test_preview_sizes_and_format(shape, size, expected):
    image = _decoded(render_preview(np.random.default_rng(0).random(shape, dtype=np.float32), size))
    assert (image.format, image.mode, image.size) == ("PNG", "L", expected)


@pytest.mark.parametrize("shape", [(64, 64), (100, 200), (300, 150), (853, 1024), (2000, 1600), (40, 30)])
def test_preview_matches_the_torch_resize_it_replaced(shape):
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    smooth = 0.5 + 0.3 * np.sin(xx / (shape[1] / 7)) * np.cos(yy / (shape[0] / 5))
    frame = np.clip(smooth + rng.normal(0, 0.05, shape), 0, 1).astype(np.float32)
    got = np.asarray(_decoded(render_preview(frame[None], 256))).astype(int)
    expected = _torch_preview(frame, 256).astype(int)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1 and np.abs(got - expected).mean() < 0.25  # a grey level at most


def test_preview_takes_the_middle_frame_and_clips():
    pixels = np.stack([np.zeros((8, 8)), np.full((8, 8), 2.0), np.ones((8, 8))]).astype(np.float32)
    assert np.all(np.asarray(_decoded(render_preview(pixels, 8))) == 255)
    with pytest.raises(ValueError, match="shape"):
        render_preview(np.zeros((1, 0, 4), np.float32))


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (5, 1), (33, 17), (256, 256)])
def test_encode_png_is_lossless_for_any_reader(shape):
    grey = np.random.default_rng(2).integers(0, 256, shape, dtype=np.uint8)
    grey[: shape[0] // 2] = 7  # runs as well as noise
    image = _decoded(encode_png(grey))
    assert image.mode == "L" and np.array_equal(np.asarray(image), grey)
    with pytest.raises(ValueError, match="uint8"):
        encode_png(grey.astype(np.float32))


def test_preview_renderer_renders_on_its_thread_and_raises_what_rendering_raised():
    pixels = np.random.default_rng(3).random((1, 50, 40), dtype=np.float32)
    with PreviewRenderer() as renderer:
        renderer.start("a", pixels)
        renderer.start("bad", np.zeros((1, 0, 3), np.float32))
        assert renderer.take("a", pixels) == render_preview(pixels)
        assert renderer.take("never-started", pixels) == render_preview(pixels)
        with pytest.raises(ValueError, match="shape"):
            renderer.take("bad", pixels)
    with pytest.raises(RuntimeError, match="with"):
        renderer.start("late", pixels)


class _CountingStore(CaseStore):
    """A CaseStore that counts the look-ups ingest makes."""

    calls: dict[str, int]

    def instance_hashes(self, sop_instance_uids):
        self.calls["instance_hashes"] += 1
        return super().instance_hashes(sop_instance_uids)

    def report_texts(self, study_uids):
        self.calls["report_texts"] += 1
        return super().report_texts(study_uids)


def test_ingest_renders_each_new_preview_once_and_asks_the_store_once_per_chunk(synthetic_manifest, tmp_path,
                                                                                 monkeypatch):
    n = 70
    for i in range(n):
        shutil.copytree(synthetic_manifest.parent / "cases" / f"train-{i:05d}", tmp_path / "in" / f"c{i:03d}")
    rendered = []
    render = previews.render_preview
    monkeypatch.setattr(previews, "render_preview", lambda pixels, size: rendered.append(1) or render(pixels, size))
    store = _CountingStore(f"sqlite:///{tmp_path / 'cases.db'}")
    store.calls = {"instance_hashes": 0, "report_texts": 0}
    engine = Engine(store)
    monkeypatch.setattr("medcm.engine.facade.INGEST_CHUNK_IMAGES", 32)  # three transactions
    first = engine.ingest([tmp_path / "in"])
    assert (first.added_instances, first.added_reports, first.skipped_instances) == (n, n, 0)
    assert len(rendered) == n and store.calls == {"instance_hashes": 3, "report_texts": 3}
    stored = store.get_study(first.studies[5]).instances[0]
    assert _decoded(store.preview(stored.sop_instance_uid)).size == (256, 256)  # 64 px cases, enlarged

    again = engine.ingest([tmp_path / "in"])
    assert (again.added_instances, again.added_reports, again.skipped_instances) == (0, 0, n)
    assert len(rendered) == n  # nothing new: no preview rendered
    assert store.calls == {"instance_hashes": 6, "report_texts": 6}
