"""Sentence grounding: where in an image a sentence is seen, as a heatmap scaled to 0..1 over the image.

Four maps (`GroundingConfig.method`); the default is the one that points best at the drawn findings of
the demo's held-out studies (scripts/bench_grounding.py; BENCHMARKS.md: 0.86 ± 0.02 over 3 seeds against
0.67 ± 0.08 for integrated gradients):

- "occlusion" (`medcm.model.occlusion`, the default): each pixel's mean drop of the cosine when a black
  patch (1/6 of the side) hides it, on a grid with a step of 1/12 of the side. A whole region goes at
  once, so large findings (effusions) and dark ones (a pneumothorax) are found as well as small ones.
- "integrated_gradients" (Sundararajan et al., 2017): each pixel's share of the cosine between the image
  embedding and the sentence, integrated along the straight path from a black image (no signal: air and
  padding are black) to the image. The shares add up to the cosine's change along that path. It reads
  what the pooled embedding, which contrastive training shapes, uses; any image tower can be grounded.
- "cosine": BioViL's local features. The tower's last feature map goes through the projection head at
  every location (`DualEncoder.encode_image_local`) and is compared with the sentence.
- "cam": each location's first-order share of the pooled embedding's cosine with the sentence, `<g, f(l)>`
  with `g` its gradient with respect to the pooled trunk features (Grad-CAM on the global average pool;
  for a linear head the class activation map).

A sentence is grounded along a direction in the shared space (`sentence_direction`): with a finding head
(`medcm.model.finding_head`) and a sentence stating a finding the head knows, the head's weights of that
finding, a direction trained on images that show the finding; else the sentence's embedding. On the demo
build the pointing game is 0.75 that way against 0.65 along the sentence (BENCHMARKS.md).

A trunk that strides 32 pixels leaves a 128-px image 4 × 4 locations, each of which sees most of the
image. `GroundingConfig.shifts` > 1 makes those two maps denser by shift-and-stitch (OverFeat, FCN):
the image is also run shifted by fractions of the stride and the maps interleaved, which is the map the
same network gives at a finer stride; each location is put at its receptive field's centre. On the demo
neither localises much better than chance, also after training with the local loss
(`medcm.model.align.local_infonce_loss`): contrastive training with a pooled embedding does not make
the 4 × 4 features local. 3D volumes are not grounded yet: ground one of their slices (the frame the 2D
tower reads, `medcm.model.preprocess.prepare_image`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from medcm.config import PreprocessConfig
from medcm.model.align import DualEncoder
from medcm.model.occlusion import occlusion_maps
from medcm.model.preprocess import prepare_image, select_frame
from medcm.report.context import sentence_claims

__all__ = ["GROUNDING_METHODS", "GroundingConfig", "heatmap_peak", "image_heatmap", "integrated_gradients", "local_maps",
           "sentence_direction", "sentence_heatmaps", "to_image_grid"]

GROUNDING_METHODS = ("occlusion", "integrated_gradients", "cosine", "cam")


@dataclass(frozen=True)
class GroundingConfig:
    """How a sentence heatmap is made.

    Attributes:
        method: one of `GROUNDING_METHODS` (see the module docstring).
        steps: points on the integration path ("integrated_gradients"): that many forward and backward passes.
        smooth: Gaussian smoothing of the map ("integrated_gradients", "occlusion"), its sigma as a share of
            the image side (1/32: 4 px at 128 px); a pixel's gradient alone is noisy.
        shifts: shift-and-stitch factor per axis ("cosine", "cam"): the map's step is the trunk's stride /
            `shifts`, at the cost of `shifts`² forward passes. 1 is the plain map; it must divide the stride.
        patch: the occluding patch's side as a share of the image side ("occlusion").
        stride: the step between occluding patches as a share of the image side ("occlusion"; at most `patch`).
    """

    method: str = "occlusion"
    steps: int = 32
    smooth: float = 1 / 32
    shifts: int = 1
    patch: float = 1 / 6
    stride: float = 1 / 12

    def __post_init__(self) -> None:
        if self.method not in GROUNDING_METHODS:
            raise ValueError(f"grounding method: got {self.method!r}, expected one of {GROUNDING_METHODS}")
        for name in ("shifts", "steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"grounding {name}: got {value!r}, expected an integer >= 1")
        if not 0.0 <= self.smooth < 0.5:
            raise ValueError(f"grounding smooth: got {self.smooth!r}, expected a share of the side in [0, 0.5)")
        if not 0.0 < self.stride <= self.patch <= 1.0:
            raise ValueError(f"grounding occlusion: got patch {self.patch!r} and stride {self.stride!r}, "
                             "expected shares of the side with 0 < stride <= patch <= 1")


def _check_inputs(images: torch.Tensor, texts: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"grounding: got images of shape {tuple(images.shape)}, expected square 2D images "
                         "[B, C, S, S] (3D volumes are not supported yet: ground one slice)")
    if texts.ndim != 2:
        raise ValueError(f"grounding: got text embeddings of shape {tuple(texts.shape)}, expected [K, D]")


def _dense_feature_map(model: DualEncoder, images: torch.Tensor, shifts: int,
                       background: float) -> tuple[torch.Tensor, float, float]:
    """The trunk's feature map `[B, F, h·shifts, w·shifts]` by shift-and-stitch, its step and the trunk's stride.

    Shifting the content up-left by `d` pixels moves every location's receptive field centre `d` pixels
    down-right in the original image; the shifted maps interleave into one map with step stride / shifts.
    """
    side = images.shape[-1]
    plain = model.image.feature_map(images)
    stride = side / plain.shape[-1]
    if shifts == 1:
        return plain, stride, stride
    step = stride / shifts
    if step != int(step):
        raise ValueError(f"grounding shifts: got {shifts} for a trunk stride of {stride:g} px, "
                         "expected a divisor of the stride")
    step = int(step)
    dense = plain.new_zeros(plain.shape[0], plain.shape[1], plain.shape[2] * shifts, plain.shape[3] * shifts)
    for a in range(shifts):
        for b in range(shifts):
            if a == 0 and b == 0:
                fmap = plain
            else:  # content moves up by a·step and left by b·step; the emptied border is background
                padded = F.pad(images, (0, b * step, 0, a * step), value=background)
                fmap = model.image.feature_map(padded[..., a * step :, b * step :])
            dense[:, :, a::shifts, b::shifts] = fmap
    return dense, float(step), stride


def _cam_weights(model: DualEncoder, pooled: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
    """`[B, K, F]`: the gradient of cos(projected pooled feature, text k) with respect to the pooled features."""
    weights = []
    with torch.enable_grad():
        for row in pooled:
            x = row.detach().clone().requires_grad_(True)
            emb = F.normalize(model.image.proj(x[None]), dim=-1)[0]
            grads = [torch.autograd.grad(emb @ t, x, retain_graph=True)[0] for t in texts]
            weights.append(torch.stack(grads))
    return torch.stack(weights)


@torch.no_grad()
def local_maps(model: DualEncoder, images: torch.Tensor, texts: torch.Tensor,
               config: GroundingConfig = GroundingConfig("cosine"),
               background: float = 0.0) -> tuple[torch.Tensor, float, float]:
    """Raw sentence maps on the trunk's grid (made denser by `config.shifts`).

    Args:
        model: the dual encoder (in eval mode); only `model.image` is used.
        images: `[B, 1, S, S]` preprocessed images (`prepare_image`).
        texts: `[K, D]` L2-normalised text embeddings (`encode_text`).
        config: method ("cosine" or "cam") and density.
        background: the preprocessed value of the padding (black), shown where shifting empties the border.

    Returns:
        `[B, K, h', w']` maps (higher: more like the sentence), their step and the trunk's stride in input pixels.
    """
    _check_inputs(images, texts)
    if config.method not in ("cosine", "cam"):
        raise ValueError(f"local_maps: got method {config.method!r}, expected 'cosine' or 'cam' "
                         "(the maps on the trunk's grid)")
    texts = texts.to(images.device, torch.float32)
    dense, step, stride = _dense_feature_map(model, images, config.shifts, background)
    dense = dense.float()
    if config.method == "cosine":
        local = F.normalize(model.image.project_map(dense), dim=1)
        return torch.einsum("bdhw,kd->bkhw", local, texts), step, stride
    pooled = dense[:, :, :: config.shifts, :: config.shifts].mean(dim=(2, 3))  # the unshifted image's pooled features
    weights = _cam_weights(model, pooled, texts)
    return torch.einsum("bkf,bfhw->bkhw", weights, dense), step, stride


def _resample(maps: torch.Tensor, step: float, stride: float, side: int) -> torch.Tensor:
    """Maps `[B, K, n, n]` → `[B, K, side, side]`, bilinear between location centres.

    Location u is centred at pixel coordinate u·step + stride/2 (pixel p spans [p, p + 1)): location 0's
    receptive field is centred half a trunk stride into the image, and shift-and-stitch adds one step per
    location. With one shift this is `F.interpolate(..., align_corners=False)`.
    """
    n = maps.shape[-1]
    centres = (torch.arange(side, dtype=torch.float32, device=maps.device) + 0.5 - stride / 2) / step
    coords = 2 * centres / max(n - 1, 1) - 1  # grid_sample's [-1, 1] with align_corners=True: index u at 2u/(n-1) - 1
    grid_y, grid_x = torch.meshgrid(coords, coords, indexing="ij")
    grid = torch.stack((grid_x, grid_y), dim=-1)[None].expand(maps.shape[0] * maps.shape[1], -1, -1, -1)
    out = F.grid_sample(maps.reshape(-1, 1, n, n).float(), grid, mode="bilinear", padding_mode="border",
                        align_corners=True)
    return out.reshape(*maps.shape[:2], side, side)


def _unit_range(maps: torch.Tensor) -> torch.Tensor:
    """Each map `[..., H, W]` scaled to 0..1 (a flat map becomes all zeros)."""
    low = maps.amin(dim=(-2, -1), keepdim=True)
    span = maps.amax(dim=(-2, -1), keepdim=True) - low
    return torch.where(span > 0, (maps - low) / span.clamp_min(1e-12), torch.zeros_like(maps))


def integrated_gradients(model: DualEncoder, images: torch.Tensor, texts: torch.Tensor, steps: int = 32,
                         baseline: float = 0.0) -> torch.Tensor:
    """Each pixel's integrated gradient of the cosine between the image embedding and each text.

    The path from a constant `baseline` image to the image is sampled at `steps` midpoints (the Riemann
    midpoint rule), so the attributions of an image add up to cos(image, text) − cos(baseline, text)
    up to the rule's error.

    Args:
        model: the dual encoder (in eval mode); only `model.image` is used.
        images: `[B, C, S, S]` preprocessed images.
        texts: `[K, D]` L2-normalised text embeddings.
        steps: points on the path.
        baseline: the preprocessed value of the image the path starts from (black: `(0 - mean) / std`).

    Returns:
        `[B, K, S, S]` attributions (summed over channels); positive where the pixel raises the cosine.
    """
    _check_inputs(images, texts)
    texts = texts.to(images.device, torch.float32)
    alphas = ((torch.arange(steps, device=images.device, dtype=torch.float32) + 0.5) / steps)[:, None, None, None]
    maps = []
    with torch.enable_grad():
        for image in images:
            start = torch.full_like(image, baseline)
            path = (start + alphas * (image - start)).requires_grad_(True)  # [steps, C, S, S]
            cosines = F.normalize(model.image(path).float(), dim=-1) @ texts.t()  # [steps, K]
            grads = [torch.autograd.grad(cosines[:, k].sum(), path, retain_graph=k < len(texts) - 1)[0]
                     for k in range(len(texts))]
            mean_grads = torch.stack(grads).mean(dim=1)  # [K, C, S, S]
            maps.append(((image - start)[None] * mean_grads).sum(dim=1).detach())
    return torch.stack(maps)


def _gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of `[..., H, W]` maps (sigma in pixels), edges replicated."""
    if sigma <= 0:
        return maps
    radius = max(1, int(3 * sigma + 0.5))
    kernel = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float32) / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(maps.device)
    flat = maps.reshape(-1, 1, *maps.shape[-2:]).float()
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="replicate"), kernel[None, None, None, :])
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="replicate"), kernel[None, None, :, None])
    return flat.reshape(maps.shape)


@torch.no_grad()
def sentence_heatmaps(model: DualEncoder, images: torch.Tensor, texts: torch.Tensor,
                      config: GroundingConfig = GroundingConfig(),
                      preprocess: PreprocessConfig | None = None) -> torch.Tensor:
    """Heatmaps of K sentences over B preprocessed images, on the images' pixels, each scaled to 0..1.

    Args:
        model: the dual encoder (in eval mode); only `model.image` is used.
        images: `[B, 1, S, S]` preprocessed images (`medcm.model.preprocess.prepare_image`).
        texts: `[K, D]` L2-normalised text embeddings (`DualEncoder.encode_text`).
        config: method and its settings.
        preprocess: the checkpoint's preprocessing, whose black starts the integration path and fills what
            shifting empties; None: 0.

    Returns:
        `[B, K, S, S]` float32 in [0, 1]; 1 where the sentence is most seen.
    """
    background = 0.0 if preprocess is None else (0.0 - preprocess.mean) / preprocess.std
    side = images.shape[-1]
    if config.method == "integrated_gradients":
        maps = integrated_gradients(model, images, texts, config.steps, background)
        return _unit_range(_gaussian_blur(maps, config.smooth * side))
    if config.method == "occlusion":
        _check_inputs(images, texts)
        maps = occlusion_maps(model, images, texts, config.patch, config.stride, background)
        return _unit_range(_gaussian_blur(maps, config.smooth * side))
    maps, step, stride = local_maps(model, images, texts, config, background)
    return _unit_range(_resample(maps, step, stride, side))


@torch.no_grad()
def image_heatmap(model: DualEncoder, pixels: np.ndarray, sentence: str, preprocess: PreprocessConfig,
                  config: GroundingConfig = GroundingConfig(),
                  device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """One sentence's heatmap over one display image, on the pixels of the frame the encoder reads.

    Args:
        model: the dual encoder (in eval mode, on `device`).
        pixels: `[F, H, W]` or `[H, W]` display pixels in [0, 1] (`medcm.dicom.read`, `load_image`).
        sentence: the sentence to ground.
        preprocess: the checkpoint's preprocessing (frame choice, size, normalisation).
        config: method and its settings.
        device: where the model runs.

    Returns:
        The frame `[H, W]` (`select_frame`) and the heatmap over it `[H, W]` float32 in [0, 1].
    """
    frame = select_frame(pixels, preprocess.frame)
    image = prepare_image(frame, preprocess)[None].to(device)
    text = sentence_direction(model, sentence).to(device)
    square = sentence_heatmaps(model, image, text, config, preprocess)[0, 0].cpu().numpy()
    return frame, to_image_grid(square, frame.shape)


def sentence_direction(model: DualEncoder, sentence: str) -> torch.Tensor:
    """`[1, D]` the unit shared-space direction a sentence is grounded along.

    With a finding head (`DualEncoder.finding_head`) and a sentence stating a finding it knows, the head's
    weight row of that finding: a direction trained on images that show the finding, not on how a report
    words it. (The sided rows point less well: on the demo, 0.65 with them against 0.75 without;
    `BENCHMARKS.md`.) Otherwise the sentence's own embedding.
    """
    head = model.finding_head()
    if head is not None:
        labels, weight, _ = head
        row = {label: i for i, label in enumerate(labels)}
        for claim in sentence_claims(sentence):
            if claim.status == "present" and claim.finding in row:
                return F.normalize(torch.from_numpy(weight[row[claim.finding]])[None].float(), dim=-1)
    return model.encode_text([sentence]).float()


def to_image_grid(heatmap: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A heatmap over the square encoder input `[S, S]` moved onto the original image's pixels `[H, W]`.

    Undoes `medcm.model.preprocess.resize_and_pad`: the padding is cut off and the rest resized.
    """
    side = heatmap.shape[-1]
    height, width = shape
    scale = side / max(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    top, left = (side - new_h) // 2, (side - new_w) // 2
    crop = torch.from_numpy(np.ascontiguousarray(heatmap[top : top + new_h, left : left + new_w], dtype=np.float32))
    if (new_h, new_w) == (height, width):
        return crop.numpy()
    return F.interpolate(crop[None, None], size=(height, width), mode="bilinear", align_corners=False)[0, 0].numpy()


def heatmap_peak(heatmap: np.ndarray) -> tuple[int, int]:
    """`(row, column)` of a heatmap's maximum (the first one in row-major order on ties)."""
    row, col = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return int(row), int(col)
