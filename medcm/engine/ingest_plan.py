"""Plan an ingest before decoding anything: each file's study, series and size from its header, in chunks.

Ingest used to decode every image of an upload before storing the first: memory grew with the
upload. Now a header pass (`plan_files`, no pixel data read) groups the files, `planned_chunks` cuts
them into chunks of whole series (a study's series together), and ingest decodes, de-identifies and
stores one chunk at a time (`read_planned`), so an upload holds at most one chunk's pixels, or its
largest series when that is bigger: a series stays whole because a volume is embedded whole.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom

from medcm.dicom.read import DicomImage, DicomReadError, read_dataset, read_instance
from medcm.dicom.walk import iter_sources

__all__ = ["CHUNK_SAMPLES", "PlannedFile", "plan_files", "planned_chunks", "read_planned"]

# Decoded samples per chunk: 2^26 samples are 256 MiB as float32 pixels (the reader's output). With
# the per-file limit (`medcm.dicom.read.MAX_IMAGE_PIXELS`, 2^27) a chunk holds at most one file more.
CHUNK_SAMPLES = 2**26


@dataclass(frozen=True)
class PlannedFile:
    """One candidate file, known from its header only.

    Attributes:
        label: its path, or "archive.zip:member" (what `read_instance` reads again).
        folder: where a file without study/series UIDs is grouped (as `InstanceMeta` does).
        study: its StudyInstanceUID, or "unknown-study:<folder>".
        series: its SeriesInstanceUID, or "unknown-series:<folder>".
        samples: rows × columns × frames × samples per pixel as the header states (0 when it does not).
    """

    label: str
    folder: str
    study: str
    series: str
    samples: int


def _header_samples(ds: pydicom.Dataset) -> int:
    try:
        rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
        frames = int(ds.get("NumberOfFrames") or 1)
        per_pixel = int(ds.get("SamplesPerPixel") or 1)
    except (TypeError, ValueError):
        return 0  # the decode pass names the bad attribute
    return max(rows, 0) * max(columns, 0) * max(frames, 1) * max(per_pixel, 1)


def plan_files(paths: Iterable[str | os.PathLike]) -> tuple[list[PlannedFile], list[DicomReadError]]:
    """Every candidate DICOM file under `paths` (files, folders, zips), from its header, and an error per
    file that cannot be parsed at all; no pixel data is read.

    Raises:
        FileNotFoundError: a path does not exist.
    """
    planned, errors = [], []
    for path in paths:
        if not Path(path).exists():
            raise FileNotFoundError(f"{path}: no such file or folder; expected a DICOM file, folder or .zip")
        for item in iter_sources(path):
            if isinstance(item, DicomReadError):
                errors.append(item)
                continue
            label, folder, source = item
            try:
                ds = read_dataset(source, label, headers_only=True)
            except DicomReadError as err:
                errors.append(err)
                continue
            study = str(ds.get("StudyInstanceUID") or "").strip() or f"unknown-study:{folder}"
            series = str(ds.get("SeriesInstanceUID") or "").strip() or f"unknown-series:{folder}"
            planned.append(PlannedFile(label, folder, study, series, _header_samples(ds)))
    return planned, errors


def planned_chunks(files: list[PlannedFile], max_images: int,
                   max_samples: int | None = None) -> Iterator[list[PlannedFile]]:
    """`files` in chunks of whole series, a study's series next to each other, each chunk of about
    `max_images` files and `max_samples` samples (default `CHUNK_SAMPLES`); a larger series is a chunk
    of its own."""
    max_samples = CHUNK_SAMPLES if max_samples is None else max_samples
    series: dict[tuple[str, str], list[PlannedFile]] = {}
    first_seen = {}
    for file in files:
        first_seen.setdefault(file.study, len(first_seen))
        series.setdefault((file.study, file.series), []).append(file)
    chunk: list[PlannedFile] = []
    samples = 0
    for key in sorted(series, key=lambda k: first_seen[k[0]]):  # stable: series keep their order in a study
        members = series[key]
        size = sum(file.samples for file in members)
        if chunk and (len(chunk) + len(members) > max_images or samples + size > max_samples):
            yield chunk
            chunk, samples = [], 0
        chunk.extend(members)
        samples += size
    if chunk:
        yield chunk


def read_planned(files: list[PlannedFile]) -> tuple[list[DicomImage], list[DicomReadError]]:
    """Decode the planned files (read again from disk or their zip) and an error per unreadable one."""
    images, errors = [], []
    for file in files:
        try:
            images.append(read_instance(file.label, file.label, folder=file.folder))
        except DicomReadError as err:
            errors.append(err)
    return images, errors
