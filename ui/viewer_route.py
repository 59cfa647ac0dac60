"""The study viewer's routes: its script, and a stored study's pixels for a logged-in reader, as compact binary.

`ViewerRoutes` is ASGI middleware (inside `ui.session_guard.SessionGuard`, which has already ended expired
sessions and refused disabled accounts) that answers three paths and passes every other one on:

- `GET /medcm/static/viewer.js`: the bundled viewer (kept gzipped as `ui/static/viewer.js.gz`, built by
  scripts/build_viewer.sh), sent as stored to browsers that take gzip, revalidated by its ETag;
- `GET /medcm/viewer/<study_uid>/<series>`: JSON about series `<series>` of the study as the review tab lists
  it (`ui.study.load_study`): `{"frames", "start" (the middle slice or frame), "modality", "label", "kind"
  ("slice" or "frame"), "colour", "presets": {name: [center, width]}, "frame_time_ms", "slice_mm" (a volume's
  slice spacing, null when unknown)}`;
- `GET /medcm/viewer/<study_uid>/<series>/<frame>`: one frame (`medcm.dicom.viewer_data.encode_frame`).

Each needs a live session whose account may read studies (the same rule as the app's events,
`ui.auth.allowed(role, "read")`, asked of the store on every request); otherwise 401 or 403 with one line.
The file paths come from the case store, never from the request; only pixels and a small header leave
the server, never the stored file.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from db.store import CaseStore, StoreError
from medcm.dicom.read import DicomReadError
from medcm.dicom.viewer_data import ViewerFrames, encode_frame, middle_index, read_viewer_frames, viewer_presets
from ui.auth import NOT_LOGGED_IN, allowed
from ui.session_guard import Receive, Send, find_guard, refuse, route, session_user
from ui.study import ImageRef, ReviewStudy, load_study

STATIC = Path(__file__).resolve().parent / "static"
SCRIPT_PATH = "/medcm/static/viewer.js"
VIEWER_PREFIX = "/medcm/viewer/"
_SERIES = re.compile(r"^/medcm/viewer/(?P<study>[0-9A-Za-z.\-_]{1,128})/(?P<series>\d{1,6})(?:/(?P<frame>\d{1,6}))?$")
CACHE_IMAGES = 4  # decoded files kept (a multi-frame file is decoded once, not once per frame) ...
CACHE_BYTES = 512 * 2**20  # ... up to about this many bytes of pixels
CACHE_STUDY_S = 30.0  # how long a study's listing is reused


def viewer_url(study_uid: str, series: int) -> str:
    """The path of a study's series for the viewer (what the page hands it)."""
    return f"{VIEWER_PREFIX}{study_uid}/{int(series)}"


class ViewerData:
    """A study's series and their frames, read from the store's files, with small caches."""

    def __init__(self, store: CaseStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._images: OrderedDict[str, ViewerFrames] = OrderedDict()
        self._studies: dict[str, tuple[float, ReviewStudy]] = {}

    def study(self, study_uid: str) -> ReviewStudy:
        """The study as the review tab lists it (cached for `CACHE_STUDY_S` seconds)."""
        now = time.monotonic()
        with self._lock:
            cached = self._studies.get(study_uid)
        if cached and now - cached[0] < CACHE_STUDY_S:
            return cached[1]
        study = load_study(self.store, study_uid)
        with self._lock:
            self._studies = {k: v for k, v in self._studies.items() if now - v[0] < CACHE_STUDY_S}
            self._studies[study_uid] = (now, study)
        return study

    def frames(self, path: str) -> ViewerFrames:
        """A stored file's frames (`read_viewer_frames`), the last few decoded kept."""
        with self._lock:
            if path in self._images:
                self._images.move_to_end(path)
                return self._images[path]
        frames = read_viewer_frames(path)
        with self._lock:
            self._images[path] = frames
            while len(self._images) > CACHE_IMAGES or (
                    len(self._images) > 1 and sum(f.pixels.nbytes for f in self._images.values()) > CACHE_BYTES):
                self._images.popitem(last=False)
        return frames

    def locate(self, ref: ImageRef, frame: int) -> tuple[str, int]:
        """The file holding frame `frame` of a series entry and the frame's index in that file."""
        if ref.slices:
            return ref.slices[frame], 0
        return ref.path, frame

    def series_json(self, study_uid: str, series: int) -> dict[str, Any]:
        """What the viewer needs to open a series (see the module's notes)."""
        ref = self._ref(study_uid, series)
        start = middle_index(ref.frames)
        frames = self.frames(self.locate(ref, start)[0])
        presets = viewer_presets(frames.modality, frames.colour)
        return {"frames": ref.frames, "start": start, "modality": frames.modality or "OT", "label": ref.label,
                "kind": "slice" if ref.slices else "frame", "colour": frames.colour,
                "presets": {name: list(window) for name, window in presets.items()},
                "frame_time_ms": frames.frame_time_ms, "slice_mm": ref.slice_mm}

    def frame_bytes(self, study_uid: str, series: int, frame: int) -> bytes:
        """One frame of a series, encoded (`encode_frame`)."""
        ref = self._ref(study_uid, series)
        if not 0 <= frame < ref.frames:
            raise LookupError(f"frame {frame}: series {series} has {ref.frames} frame(s), 0 to {ref.frames - 1}")
        path, index = self.locate(ref, frame)
        return encode_frame(self.frames(path), index)

    def _ref(self, study_uid: str, series: int) -> ImageRef:
        images = self.study(study_uid).images
        if not 0 <= series < len(images):
            raise LookupError(f"series {series}: study {study_uid} has {len(images)} series or image(s), "
                              f"0 to {len(images) - 1}")
        return images[series]


class ViewerRoutes:
    """ASGI middleware serving the viewer's script and data (see the module's notes) to readers."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._data: ViewerData | None = None

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        path = route(scope) if scope["type"] == "http" else ""
        if not (path == SCRIPT_PATH or path.startswith(VIEWER_PREFIX)):
            await self.app(scope, receive, send)
            return
        gradio_app = scope.get("app")
        guard = find_guard(gradio_app)
        user = session_user(gradio_app, scope) if guard is not None else None
        if user is None:
            await refuse(send, 401, NOT_LOGGED_IN)
            return
        role = await anyio.to_thread.run_sync(guard.store.user_role, user)
        if role is None or not allowed(role, "read"):
            await refuse(send, 403, f"{user}: your role may not read studies")
            return
        if scope["method"] != "GET":
            await refuse(send, 405, f"{scope['method']} {path}: only GET is served here")
            return
        if path == SCRIPT_PATH:
            await _send_script(scope, send)
            return
        await self._data_route(guard.store, path, send)

    async def _data_route(self, store: CaseStore, path: str, send: Send) -> None:
        found = _SERIES.match(path)
        if found is None:
            await refuse(send, 404, f"{path}: expected /medcm/viewer/<study uid>/<series>[/<frame>]")
            return
        if self._data is None or self._data.store is not store:
            self._data = ViewerData(store)
        study, series, frame = found["study"], int(found["series"]), found["frame"]
        try:
            if frame is None:
                body = json.dumps(await anyio.to_thread.run_sync(self._data.series_json, study, series)).encode()
                await _answer(send, 200, body, b"application/json")
            else:
                body = await anyio.to_thread.run_sync(self._data.frame_bytes, study, series, int(frame))
                await _answer(send, 200, body, b"application/octet-stream")
        except (StoreError, LookupError) as err:
            await refuse(send, 404, str(err))
        except DicomReadError as err:
            await refuse(send, 422, f"cannot read the stored image again: {err.reason}")


@functools.lru_cache(maxsize=2)
def _script(mtime_ns: int) -> tuple[bytes, bytes]:
    """The gzipped bundle as stored (a quarter of its 4 MB; the repository keeps no file over 2 MiB) and its
    ETag, for the file as of `mtime_ns`."""
    body = (STATIC / "viewer.js.gz").read_bytes()
    return body, f'"{hashlib.sha256(body).hexdigest()[:32]}"'.encode()


async def _send_script(scope: dict[str, Any], send: Send) -> None:
    """The viewer's script, gzipped when the browser takes it; revalidated by ETag (304 when unchanged)."""
    body, etag = await anyio.to_thread.run_sync(_script, (STATIC / "viewer.js.gz").stat().st_mtime_ns)
    request = dict(scope.get("headers") or [])
    extra = [(b"etag", etag), (b"vary", b"accept-encoding")]
    if request.get(b"if-none-match") == etag:
        await send({"type": "http.response.start", "status": 304, "headers": extra})
        await send({"type": "http.response.body", "body": b""})
        return
    if b"gzip" in request.get(b"accept-encoding", b""):
        extra.append((b"content-encoding", b"gzip"))
    else:
        body = gzip.decompress(body)
    await _answer(send, 200, body, b"text/javascript; charset=utf-8", extra, cache=b"private, no-cache")


async def _answer(send: Send, status: int, body: bytes, content_type: bytes,
                  extra: Sequence[tuple[bytes, bytes]] = (), cache: bytes = b"private, no-store") -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()),
               (b"cache-control", cache), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
