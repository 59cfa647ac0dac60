"""What the store already holds, read back: a stored instance's file, and a study's query vector
built from the image vectors ingest stored, so a search or a draft right after an upload embeds nothing again.

A study's stored vectors stand for it exactly when they are what `medcm.engine.embed.embed_visual`
gave at ingest: every series has at least one, and with a 2D-only checkpoint every image has one
(with a volume encoder, a CT/MR/PT series may be one vector under its middle slice). Otherwise
(e.g. a study stored without a checkpoint, or with another one) the caller embeds the images.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from medcm.dicom.read import DicomImage, DicomReadError, read_instance
from medcm.dicom.volume import VOLUME_MODALITIES
from medcm.engine.embed import series_study_vector

__all__ = ["StoredInstanceLike", "StudyVectorStoreLike", "read_stored", "read_stored_study", "stored_study_vector"]

log = logging.getLogger(__name__)


class StoredInstanceLike(Protocol):
    """`db.records.InstanceView` (or `PendingStudy.instances`): where a stored instance's file is."""

    sop_instance_uid: str
    path: str
    content_sha256: str


class StudyVectorStoreLike(Protocol):
    """The part of `db.store.CaseStore` a stored study vector reads."""

    def image_embeddings(self, sop_instance_uids: list[str], model_id: str) -> dict[str, np.ndarray]: ...


def read_stored(instance: StoredInstanceLike) -> DicomImage:
    """A stored instance's image, read again from its file (or "archive.zip:member").

    Raises:
        DicomReadError: the file is gone or unreadable, or is no longer the file that was stored
            (another SOPInstanceUID or another content hash); the message names the file.
    """
    image = read_instance(instance.path)
    if image.meta.sop_instance_uid != instance.sop_instance_uid or (
            instance.content_sha256 and image.meta.content_sha256 != instance.content_sha256):
        raise DicomReadError(instance.path, f"changed since it was stored (SOPInstanceUID "
                                            f"{instance.sop_instance_uid}); expected the stored file")
    return image


def read_stored_study(study_uid: str, instances: Sequence[StoredInstanceLike]) -> list[DicomImage]:
    """A stored study's images read again (`read_stored`); unreadable ones are skipped with one warning.

    Raises:
        ValueError: none of them can be read (the message names the first failure).
    """
    images, failed = [], []
    for instance in instances:
        try:
            images.append(read_stored(instance))
        except DicomReadError as err:
            failed.append(" ".join(str(err).split()))
    if failed:
        log.warning("study %s: %d image(s) could not be read again, e.g. %s", study_uid, len(failed), failed[0])
    if not images:
        raise ValueError(f"study {study_uid}: no stored image can be read to search with "
                         f"({failed[0] if failed else 'none stored'})")
    return images


def stored_study_vector(store: StudyVectorStoreLike, instances: Sequence[Any], model_id: str,
                        volumes: bool) -> np.ndarray | None:
    """The study's query vector `[D]` from its stored image vectors, as `study_vector` gives at ingest.

    Args:
        store: the case store.
        instances: the study's stored instances (`StudyView.instances`: `sop_instance_uid`,
            `series_uid`, `modality`).
        model_id: the checkpoint's model id the vectors were stored under.
        volumes: the checkpoint has a volume encoder (a volume series may hold one vector).

    Returns:
        The vector, or None when the stored vectors do not cover the study (see the module docstring).
    """
    if not instances:
        return None
    vectors = store.image_embeddings([view.sop_instance_uid for view in instances], model_id)
    series: dict[str, list[Any]] = {}
    for view in instances:
        series.setdefault(view.series_uid, []).append(view)
    if not all(_covered(members, vectors, volumes) for members in series.values()):
        return None
    return series_study_vector([(view.series_uid, vectors[view.sop_instance_uid])
                                for view in instances if view.sop_instance_uid in vectors])


def _covered(members: Sequence[Any], vectors: Mapping[str, np.ndarray], volumes: bool) -> bool:
    """Whether a series' stored vectors are what ingest embedded: all its images, or its volume(s)."""
    stored = sum(view.sop_instance_uid in vectors for view in members)
    if stored == len(members):
        return True
    volume_series = (members[0].modality or "").strip().upper() in VOLUME_MODALITIES
    return volumes and volume_series and stored > 0
