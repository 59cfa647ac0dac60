"""Pixel decoding that a hostile file cannot crash: pydicom's in-process decoders, GDCM only in a child process.

pydicom tries each installed decoder plugin in turn. On a corrupt JPEG 2000 stream the GDCM plugin
aborts the whole process (a C++ exception no Python code can catch: "terminate called after throwing
..."), so one bad upload would stop the server. The other plugins (pylibjpeg's libjpeg and openjpeg,
pydicom's own RLE, Pillow) decode every transfer syntax GDCM does and fail with a Python exception, so
they run here first; GDCM runs only when they all failed, in a child process whose crash is a one-line
error. Their log records and warnings are kept off the console: the error names the file once.
"""

from __future__ import annotations

import contextlib
import io
import logging
import subprocess
import sys
import warnings
from collections.abc import Iterator

import numpy as np
import pydicom
from pydicom.pixels import pixel_array
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID

__all__ = ["GDCM_TIMEOUT_S", "DecodeError", "decode_pixels", "quiet_pydicom"]

GDCM_TIMEOUT_S = 60.0  # a child process decoding with GDCM is killed after this
_ISOLATED = "gdcm"
_CHILD = """
import io, sys, warnings
warnings.simplefilter("ignore")
import numpy, pydicom
from pydicom.pixels import pixel_array
ds = pydicom.dcmread(io.BytesIO(sys.stdin.buffer.read()), force=True)
numpy.save(sys.stdout.buffer, pixel_array(ds, decoding_plugin="gdcm"), allow_pickle=False)
"""


class DecodeError(Exception):
    """No decoder could decode the pixel data; the message says what each one said."""


@contextlib.contextmanager
def quiet_pydicom() -> Iterator[None]:
    """Keep pydicom's log records and warnings off the console while it works."""
    logger = logging.getLogger("pydicom")
    previous = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(previous)


def _plugins(ts: UID) -> list[str]:
    """The plugins that may decode `ts` in this process ([""]: pydicom's own choice, for native data and for
    a UID that is no transfer syntax, which pydicom then names in its error)."""
    if not _compressed(ts):
        return [""]
    try:
        return [name for name in get_decoder(ts).available_plugins if name != _ISOLATED]
    except NotImplementedError:  # no decoder for this syntax at all
        return []


def _compressed(ts: UID) -> bool:
    try:
        return ts.is_compressed
    except ValueError:  # not a transfer syntax
        return False


def _gdcm_available(ts: UID) -> bool:
    try:
        return _compressed(ts) and _ISOLATED in get_decoder(ts).available_plugins
    except NotImplementedError:
        return False


def _decode_in_child(source: bytes) -> np.ndarray:
    """GDCM's decoding of the file's bytes, in a child process: its crash or hang is an error here."""
    try:
        done = subprocess.run([sys.executable, "-c", _CHILD], input=source, capture_output=True,
                              timeout=GDCM_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise DecodeError(f"gdcm: no result within {GDCM_TIMEOUT_S:g} s") from exc
    if done.returncode != 0:
        last = (done.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
        raise DecodeError(f"gdcm: failed in its own process (exit {done.returncode}: {last[:200]})")
    return np.load(io.BytesIO(done.stdout), allow_pickle=False)


def decode_pixels(ds: pydicom.Dataset, source: bytes | None = None) -> np.ndarray:
    """The dataset's pixel array as pydicom gives it (YBR converted to RGB), decoded safely.

    Args:
        ds: a dataset whose pixel data passed `medcm.dicom.read.check_pixel_data`.
        source: the file's bytes, for a GDCM decode in a child process when every in-process plugin
            failed; None: no GDCM.

    Raises:
        DecodeError: every plugin failed; the message lists why.
    """
    ts = UID(str(ds.file_meta.TransferSyntaxUID))
    failures = []
    with quiet_pydicom():
        for plugin in _plugins(ts):
            try:
                return pixel_array(ds, decoding_plugin=plugin)
            except Exception as exc:  # noqa: BLE001 - each plugin fails in its own way
                failures.append(f"{plugin or 'pydicom'}: {_first_line(exc)}")
    if source is not None and _gdcm_available(ts):
        try:
            return _decode_in_child(source)
        except DecodeError as exc:
            failures.append(str(exc))
    raise DecodeError("; ".join(failures) or "no decoder plugin is installed for it")


def _first_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:200]
