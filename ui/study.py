"""Uploads and the study under review: content-addressed copies, ingest, and re-reading stored images.

An upload is copied into the app's upload folder as `<sha256>.dcm` (or `<sha256>.zip` for an
archive) before it is ingested, so the file locations the store records stay valid after Gradio
cleans its own temporary files, and the same file uploaded twice is one file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import shutil
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
from gradio import utils as gradio_utils

from db.store import CaseStore, InstanceView
from medcm.dicom.display import WINDOW_PRESETS
from medcm.dicom.limits import UploadLimits, UploadRejected, check_upload
from medcm.dicom.read import DicomImage, DicomReadError, read_instance
from medcm.dicom.series import StoredFile, is_stored_volume, slice_order
from medcm.engine.facade import Engine, IngestResult
from ui.auth import Login, require
from ui.errors import one_line, user_error

DEFAULT_PRESET = "default"
PRESETS: tuple[str, ...] = (DEFAULT_PRESET, *WINDOW_PRESETS)
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ImageRef:
    """One stored instance of the study under review, as the viewer needs it."""

    path: str  # a file, or "archive.zip:member"
    sop_instance_uid: str
    series_uid: str
    label: str  # shown in the series/instance selector
    frames: int  # frames of the file, or slices of a volume series
    slices: tuple[str, ...] = ()  # a CT/MR/PT series scrolled as one volume: its slice files, in position order
    modality: str = ""
    slice_mm: float | None = None  # a volume's distance between neighbouring slices, when their positions are known


@dataclass(frozen=True)
class ReviewStudy:
    """The study under review (kept per session in `gr.State`): its UID and its stored images."""

    study_uid: str
    images: tuple[ImageRef, ...]
    warnings: tuple[str, ...] = ()  # e.g. a volume series with a missing slice, naming the series


def content_address(source: str | Path, upload_dir: Path) -> Path:
    """Copy `source` into `upload_dir` as `<sha256>.dcm` / `<sha256>.zip` (once) and return the copy."""
    digest = hashlib.sha256()
    with open(source, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    suffix = ".zip" if zipfile.is_zipfile(source) else ".dcm"
    target = upload_dir / f"{digest.hexdigest()}{suffix}"
    if not target.is_file():
        upload_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=upload_dir, prefix=".upload-")
        os.close(fd)
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)  # atomic: a reader never sees half a file
    return target


def save_uploads(files: Sequence[str | Path] | str | Path | None, upload_dir: Path) -> dict[str, str]:
    """Content-addressed copies of the uploaded files: stored path → the name the user gave the file.

    Raises:
        gr.Error: nothing was uploaded.
    """
    return {str(content_address(path, upload_dir)): Path(path).name for path in upload_paths(files)}


def upload_paths(files: Sequence[str | Path] | str | Path | None) -> list[str]:
    """The uploaded files as a list of paths.

    Raises:
        gr.Error: nothing was uploaded.
    """
    if files is None or (not isinstance(files, (str, Path)) and not files):
        raise user_error("no file uploaded: choose one or more DICOM files or a .zip of a study")
    return [str(files)] if isinstance(files, (str, Path)) else [str(path) for path in files]


def ingest_upload(engine: Engine, files: Sequence[str | Path] | str | Path | None, upload_dir: Path,
                  user: str, limits: UploadLimits = UploadLimits()) -> tuple[str, list[str]]:
    """Check, save and ingest an upload; its first study joins the worklist ("new" until drafted or signed).

    The whole upload is refused, and nothing stored, when it breaks `limits` (size, file count, zip
    bombs, paths leaving the archive, links). With de-identification on (`engine.deid`), only the
    engine's de-identified copies are kept; otherwise content-addressed copies in `upload_dir`.
    Either way Gradio's temporary copies of the upload are deleted once it is ingested or refused.

    Returns:
        The first study's UID (as stored) and one warning line per unreadable file or extra study.

    Raises:
        gr.Error: the upload breaks a limit, or holds no readable DICOM image.
    """
    paths = upload_paths(files)
    try:
        names = {path: Path(path).name for path in paths}
        try:
            check_upload(paths, limits, names)
        except UploadRejected as err:
            raise user_error(f"upload refused, nothing stored: {err}") from None
        if engine.deid is None:
            names = save_uploads(paths, upload_dir)
        result: IngestResult = engine.ingest(list(names), user=user.strip() or "clinician")
    finally:
        remove_upload_copies(paths)
    notes = [_error_line(err, names) for err in result.errors] + list(result.warnings)
    if result.burned_in:
        notes.append(f"{len(result.burned_in)} image(s) declare burned-in annotation: check them for names "
                     "before using this study")
    if not result.studies:
        detail = f": {notes[0]}" if notes else ""
        raise user_error(f"no readable DICOM image in the upload{detail}")
    if len(result.studies) > 1:
        notes.append(f"the upload holds {len(result.studies)} studies; showing the first, all are in the worklist")
    return result.studies[0], notes


class UploadSlots:
    """At most `per_user` uploads of one account waiting or running at a time, so one person cannot fill
    the engine's queue ahead of everyone else. A slot claimed for an upload that never ran (the page
    was closed in between) frees itself after `expire_s` seconds.

    Args:
        per_user: uploads per account in flight.
        expire_s: seconds after which an unreleased slot is free again.
        clock: seconds, monotonic (injectable for tests).
    """

    def __init__(self, per_user: int = 1, expire_s: float = 900.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_user, self.expire_s, self.clock = per_user, expire_s, clock
        self._claimed: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def claim(self, user: str) -> None:
        """Take a slot for `user`.

        Raises:
            gr.Error: `user` already has `per_user` uploads in flight.
        """
        now = self.clock()
        with self._lock:
            live = [t for t in self._claimed.get(user, []) if now - t < self.expire_s]
            if len(live) >= self.per_user:
                raise user_error(f"you already have {len(live)} upload(s) being stored: wait for it to finish "
                                 f"(at most {self.per_user} per account at a time)")
            self._claimed[user] = [*live, now]

    def release(self, user: str) -> None:
        """Give back `user`'s oldest slot (nothing when none is held)."""
        with self._lock:
            held = self._claimed.get(user, [])
            if held:
                held.pop(0)


def check_upload_request(store: CaseStore, request: object, files: Sequence[str | Path] | str | Path | None,
                         slots: UploadSlots, limits: UploadLimits = UploadLimits()) -> Login:
    """The cheap checks of an upload, before it waits for the engine: the role may upload, the upload is
    within `limits` (size, files, zip bombs; refused in well under a second), and the account has a free
    slot, which it then holds until `UploadSlots.release`. A refused upload's copies are deleted.

    Raises:
        gr.Error: not logged in or not allowed, no file, a limit broken, or no free slot.
    """
    login = require_for_upload(store, request, "ingest", files)
    paths = upload_paths(files)
    try:
        check_upload(paths, limits, {path: Path(path).name for path in paths})
        slots.claim(login.name)
    except UploadRejected as err:
        remove_upload_copies(paths)
        raise user_error(f"upload refused, nothing stored: {err}") from None
    except Exception:
        remove_upload_copies(paths)
        raise
    return login


def require_for_upload(store: CaseStore, request: object, action: str,
                       files: Sequence[str | Path] | str | Path | None) -> Login:
    """`ui.auth.require` for a request that carries an upload: when the role may not, Gradio's copies of
    the upload are deleted before the refusal, so no identifiable original stays on the server."""
    try:
        return require(store, request, action)
    except Exception:
        with contextlib.suppress(gr.Error):  # nothing uploaded: nothing to delete
            remove_upload_copies(upload_paths(files))
        raise


def remove_upload_copies(paths: Sequence[str]) -> None:
    """Delete Gradio's temporary copies of uploaded files (they hold patient data); other paths are kept."""
    cache = Path(gradio_utils.get_upload_folder()).resolve()
    for path in paths:
        file = Path(path).resolve()
        if cache not in file.parents:
            continue  # e.g. a script passing a file of its own: not ours to delete
        file.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # Gradio keeps each upload in a folder of its own
            if file.parent != cache:
                file.parent.rmdir()


def _error_line(err: DicomReadError, names: dict[str, str]) -> str:
    """`original-name: reason`, without the server's upload folder in it."""
    path = err.path
    for stored, name in names.items():
        path = path.replace(stored, name)
    return one_line(f"{path}: {err.reason}")


def load_study(store: CaseStore, study_uid: str) -> ReviewStudy:
    """The stored instances of a study, by series, as the viewer lists them.

    Raises:
        StoreError: unknown study.
        gr.Error: the study has no stored instance.
    """
    study = store.get_study(study_uid)
    if not study.instances:
        raise user_error(f"study {study_uid}: no stored image to show")
    by_series: dict[str, list[InstanceView]] = {}
    for view in study.instances:
        by_series.setdefault(view.series_uid, []).append(view)
    refs: list[ImageRef] = []
    warnings: list[str] = []
    for number, views in enumerate(by_series.values(), start=1):
        files = [_stored_file(view) for view in views]
        if is_stored_volume(files):
            ref, problems = _volume_ref(views, files, number)
            refs.append(ref)
            warnings += problems
        else:
            refs.extend(_ref(view, number) for view in views)
    return ReviewStudy(study_uid, tuple(refs), tuple(warnings))


def _stored_file(view: InstanceView) -> StoredFile:
    meta = view.metadata or {}
    return StoredFile(view.path, view.modality or "", int(meta.get("frames") or 1), meta.get("instance_number"))


def _volume_ref(views: list[InstanceView], files: list[StoredFile], series_number: int) -> tuple[ImageRef, list[str]]:
    """One selector entry for a whole series, its slices in scrolling order (`slice_order`), and warnings
    about its spacing (repeated positions, missing slices)."""
    what = (views[0].metadata or {}).get("series_description") or views[0].modality
    order = slice_order(files, f"series {series_number} ({what})")
    ordered = [views[k] for k in order.order]
    label = f"series {series_number} · {what} volume · {len(ordered)} slices"
    first = ordered[0]
    return ImageRef(first.path, first.sop_instance_uid, first.series_uid, label, len(ordered),
                    tuple(view.path for view in ordered), first.modality or "", order.spacing_mm), list(order.problems)


def _ref(view: InstanceView, series_number: int) -> ImageRef:
    meta = view.metadata or {}
    frames = int(meta.get("frames") or 1)
    number = meta.get("instance_number")
    what = meta.get("series_description") or view.modality or "image"
    label = f"series {series_number}" + (f" · instance {number}" if number is not None else "") + f" · {what}"
    if frames > 1:
        label += f" · {frames} frames"
    return ImageRef(view.path, view.sop_instance_uid, view.series_uid, label, frames, modality=view.modality or "")


def window_of(preset: str | None) -> tuple[float, float] | None:
    """The (center, width) of a preset name; None for "default" (the file's own VOI).

    Raises:
        gr.Error: unknown preset.
    """
    if not preset or preset == DEFAULT_PRESET:
        return None
    if preset not in WINDOW_PRESETS:
        raise user_error(f"unknown window preset {preset!r}; expected one of {', '.join(PRESETS)}")
    return WINDOW_PRESETS[preset]


def read_ref(ref: ImageRef, window: tuple[float, float] | None = None) -> DicomImage:
    """Read one stored instance again (a file or a zip member), optionally with a reading window.

    Raises:
        DicomReadError: the file is gone or unreadable.
    """
    return read_instance(ref.path, window=window)


def read_view(ref: ImageRef, frame: int, window: tuple[float, float] | None = None) -> tuple[DicomImage, int]:
    """What the viewer shows for `frame`: the image holding it and the frame index within that image.

    A volume's `frame` is a slice (its own file); a multi-frame file's is one of its frames.

    Raises:
        DicomReadError: the file is gone or unreadable.
    """
    if not ref.slices:
        return read_ref(ref, window), frame
    path = ref.slices[min(max(int(frame), 0), len(ref.slices) - 1)]
    return read_ref(dataclasses.replace(ref, path=path, slices=()), window), 0


def read_study(study: ReviewStudy) -> list[DicomImage]:
    """Every readable image of the study with the standard display pipeline (as it was embedded).

    Unreadable ones are skipped with a warning.

    Raises:
        gr.Error: none of its images can be read.
    """
    images, failed = [], []
    for ref in study.images:
        for path in ref.slices or (ref.path,):
            try:
                images.append(read_ref(dataclasses.replace(ref, path=path, slices=())))
            except DicomReadError as err:
                failed.append(one_line(str(err)))
    if not images:
        raise user_error(f"study {study.study_uid}: no image can be read ({failed[0] if failed else 'none stored'})")
    if failed:
        gr.Warning(f"{len(failed)} image(s) of the study could not be read again: {failed[0]}")
    return images
