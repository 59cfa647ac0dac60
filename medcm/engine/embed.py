"""What a study shows, embedded: 2D images one by one, CT/MR/PT series as one volume when the
checkpoint has a volume encoder.

Without a volume encoder (`checkpoint.model.volume is None`) every image, each slice of a CT
series included, goes through the 2D tower (`prepare_image`, then `DualEncoder.encode_image`).
With one, the images are grouped by series; a series that `medcm.dicom.series.group_series` calls a
volume is read again from its files (`read_volume`), prepared with
`medcm.model.encoders.volume.volume_input` and embedded once with `DualEncoder.encode_volume`. Its
vector is stored under the SOPInstanceUID of its middle slice (`volume_key`), a stored instance,
so the store's embedding → instance join still gives the study, modality and body part. A series
that does not make a trustworthy volume (a missing slice, an unreadable file ...) is embedded
slice by slice as before, with a one-line warning naming it: never a silently wrong volume.

The engine (ingest and queries) and `medcm eval` embed through this module, so a volume is
embedded one way everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from medcm.model.align import DualEncoder
from medcm.checkpoint import Checkpoint
from medcm.dicom.read import DicomImage, DicomReadError
from medcm.model.encoders.volume import study_embedding, volume_input
from medcm.model.preprocess import prepare_image
from medcm.dicom.volume import VOLUME_MODALITIES, Volume
from medcm.dicom.series import SeriesFiles, group_series, read_volume

__all__ = ["PreparedVolume", "VisualVector", "embed_images_2d", "embed_visual", "encode_inputs",
           "has_volume_encoder", "prepare_series", "series_study_vector", "study_vector", "try_prepare_series",
           "volume_key"]

VOLUME_BATCH = 8  # volumes per forward pass: a "3d" input is depth × size² voxels


@dataclass(frozen=True, eq=False)
class VisualVector:
    """One embedded image or volume.

    Attributes:
        key: the SOPInstanceUID the vector is stored under: the image's own, or for a volume the
            middle slice's in position order (`volume_key`).
        series_uid: SeriesInstanceUID of the image or volume.
        vector: `[D]` float32, L2-normalised.
        is_volume: embedded by the volume encoder (True) or the 2D tower (False).
        slices: slices the vector stands for (1 for a 2D image).
    """

    key: str
    series_uid: str
    vector: np.ndarray
    is_volume: bool
    slices: int


@dataclass(frozen=True, eq=False)
class PreparedVolume:
    """A series read and prepared for the volume encoder.

    Attributes:
        series_uid: SeriesInstanceUID.
        key: `volume_key` of the volume.
        slices: slices in the assembled volume.
        input: `volume_input`: `[1, depth, size, size]` ("3d") or `[K, 1, size, size]` ("2.5d").
        warnings: the volume's own warnings (one line each, naming the series).
    """

    series_uid: str
    key: str
    slices: int
    input: torch.Tensor
    warnings: tuple[str, ...]


def has_volume_encoder(checkpoint: Checkpoint) -> bool:
    """Whether the checkpoint's model embeds volumes (its config has `model.volume`)."""
    return checkpoint.model.volume is not None and checkpoint.config.model.volume is not None


def volume_key(volume: Volume) -> str:
    """The SOPInstanceUID of the volume's middle slice in position order (a `#frame` suffix dropped)."""
    if not volume.sop_instance_uids:
        raise ValueError(f"series {volume.series_uid}: the volume has no slices; expected at least one")
    return volume.sop_instance_uids[len(volume.sop_instance_uids) // 2].split("#", 1)[0]


def prepare_series(checkpoint: Checkpoint, files: Sequence[str], series_uid: str = "",
                   label: str = "") -> PreparedVolume:
    """Read one series from its files and prepare it for the checkpoint's volume encoder.

    Args:
        checkpoint: a checkpoint with a volume encoder (`has_volume_encoder`).
        files: the series' files, paths or ``"archive.zip:member"`` names, in any order.
        series_uid: the series, for messages (the volume's own UID is used when it has one).
        label: where the series came from, for messages (default: the first file's folder).

    Raises:
        DicomReadError: a file cannot be read (the message names it).
        VolumeError: the files do not make a trustworthy volume (the message names the series).
        ValueError: the checkpoint has no volume encoder.
    """
    config = checkpoint.config.model.volume
    if config is None:
        raise ValueError("this checkpoint has no volume encoder (its config has no model.volume)")
    where = label or (os.path.dirname(files[0]) if files else "")
    volume = read_volume(list(files), label=where)
    prepared = volume_input(volume, config, checkpoint.config.preprocess)
    return PreparedVolume(series_uid=volume.series_uid or series_uid, key=volume_key(volume),
                          slices=int(volume.voxels.shape[0]), input=prepared, warnings=volume.warnings)


def try_prepare_series(checkpoint: Checkpoint, group: SeriesFiles, label: str = "") -> PreparedVolume | str:
    """`prepare_series`, or, when the series cannot be a volume, a one-line warning naming it."""
    try:
        return prepare_series(checkpoint, group.files, group.series_uid, label)
    except (DicomReadError, ValueError) as err:  # VolumeError is a ValueError
        reason = " ".join(str(err).split())
        return f"{reason}; so its {len(group.files)} images are embedded one by one, not as one volume"


@torch.no_grad()
def encode_inputs(model: DualEncoder, images: Sequence[torch.Tensor], volumes: Sequence[torch.Tensor],
                  device: torch.device | str, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Embed prepared 2D images and prepared volumes in batches.

    Args:
        model: the dual encoder (in eval mode).
        images: `prepare_image` outputs, each `[1, H, W]`.
        volumes: `volume_input` outputs, each `[1, depth, size, size]` or `[K, 1, size, size]`.
        device: where the model runs.
        batch_size: images per forward pass (volumes go `VOLUME_BATCH` at a time).

    Returns:
        L2-normalised float32 `[len(images), D]` and `[len(volumes), D]`.
    """
    dim = model.config.embed_dim

    def run(encode, inputs: Sequence[torch.Tensor], size: int) -> np.ndarray:
        out = [encode(torch.stack(list(inputs[s : s + size])).to(device)).float().cpu() for s in range(0, len(inputs), size)]
        return torch.cat(out).numpy() if out else np.zeros((0, dim), np.float32)

    return run(model.encode_image, images, batch_size), run(model.encode_volume, volumes, min(batch_size, VOLUME_BATCH))


@torch.no_grad()
def embed_images_2d(checkpoint: Checkpoint, images: Sequence[DicomImage], device: torch.device | str,
                    batch_size: int = 32) -> np.ndarray:
    """L2-normalised 2D embeddings `[N, D]` of `images`, preprocessed as the checkpoint was trained.

    Images are prepared a batch at a time, so a long list never holds every input in memory.
    """
    out, preprocess = [], checkpoint.config.preprocess
    for start in range(0, len(images), batch_size):
        batch = torch.stack([prepare_image(im.pixels, preprocess) for im in images[start : start + batch_size]])
        out.append(checkpoint.model.encode_image(batch.to(device)).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, checkpoint.config.model.embed_dim), np.float32)


def embed_visual(checkpoint: Checkpoint, images: Sequence[DicomImage], device: torch.device | str,
                 batch_size: int = 32) -> tuple[list[VisualVector], list[str]]:
    """Embed what `images` show: volumes as volumes (given a volume encoder), other images one by one.

    Args:
        checkpoint: the model and its preprocessing.
        images: read images (e.g. `medcm.engine.ingest.read_images`); a volume's files are read again
            from each image's `meta.path`.
        device: where the model runs.
        batch_size: 2D images per forward pass.

    Returns:
        The vectors, in order of first appearance (a volume where its first image was), and one
        warning line per series embedded slice by slice instead of as a volume, plus the volumes'
        own warnings (each names its series).
    """
    if not has_volume_encoder(checkpoint):
        vectors = embed_images_2d(checkpoint, images, device, batch_size)
        return [_image_vector(image, vector) for image, vector in zip(images, vectors)], []
    units, warnings = _plan(checkpoint, images)
    flat = [unit for unit in units if isinstance(unit, DicomImage)]
    volumes = [unit for unit in units if isinstance(unit, PreparedVolume)]
    image_vectors, volume_vectors = encode_inputs(
        checkpoint.model, [prepare_image(im.pixels, checkpoint.config.preprocess) for im in flat],
        [volume.input for volume in volumes], device, batch_size)
    next_image, next_volume = iter(image_vectors), iter(volume_vectors)
    vectors = [VisualVector(unit.key, unit.series_uid, next(next_volume), True, unit.slices)
               if isinstance(unit, PreparedVolume) else _image_vector(unit, next(next_image)) for unit in units]
    return vectors, warnings


def _plan(checkpoint: Checkpoint, images: Sequence[DicomImage]) -> tuple[list[DicomImage | PreparedVolume], list[str]]:
    """Each series' images as one prepared volume (when it is one and reads as one) or image by image."""
    series: dict[str, list[DicomImage]] = {}
    for image in images:
        series.setdefault(image.meta.series_uid, []).append(image)
    units: list[DicomImage | PreparedVolume] = []
    warnings: list[str] = []
    for members in series.values():
        if not _may_be_volume(members):  # e.g. a radiograph: no need to read its header again
            units.extend(members)
            continue
        by_path: dict[str, list[DicomImage]] = {}
        for image in members:
            by_path.setdefault(image.meta.path, []).append(image)
        for group in group_series([image.meta.path for image in members]):
            own = [by_path[name].pop(0) for name in group.files]
            prepared = try_prepare_series(checkpoint, group) if group.is_volume else None
            if isinstance(prepared, PreparedVolume):
                units.append(prepared)
                warnings.extend(prepared.warnings)
            else:
                units.extend(own)
                if prepared is not None:
                    warnings.append(prepared)
    return units, warnings


def _may_be_volume(members: Sequence[DicomImage]) -> bool:
    """From the metadata already read: CT/MR/PT with at least 3 slices (frames count), as `group_series` requires."""
    return (members[0].meta.modality.strip().upper() in VOLUME_MODALITIES
            and sum(max(1, image.meta.frames) for image in members) >= 3)


def _image_vector(image: DicomImage, vector: np.ndarray) -> VisualVector:
    return VisualVector(image.meta.sop_instance_uid, image.meta.series_uid, vector, False, 1)


def study_vector(vectors: Sequence[VisualVector]) -> np.ndarray:
    """One vector `[D]` for a study: per series, its volume's vector or the mean of its images'; then
    `medcm.model.encoders.volume.study_embedding` across series (each weighs the same).

    Raises:
        ValueError: no vectors.
    """
    return series_study_vector([(item.series_uid, item.vector) for item in vectors])


def series_study_vector(rows: Sequence[tuple[str, np.ndarray]]) -> np.ndarray:
    """`study_vector` of (SeriesInstanceUID, `[D]` vector) rows, e.g. the vectors ingest stored.

    Raises:
        ValueError: no rows.
    """
    if not rows:
        raise ValueError("no readable DICOM image to search with")
    per_series: dict[str, list[np.ndarray]] = {}
    for series_uid, vector in rows:
        per_series.setdefault(series_uid, []).append(vector)
    means = torch.stack([torch.from_numpy(np.stack(rows)).mean(dim=0) for rows in per_series.values()])
    return study_embedding(means).numpy()  # normalises each series, then the mean
