"""STOW-RS (DICOM PS3.18 §10.5): store the instances of a multipart/related request like an upload.

`split_multipart` takes the request body apart (``multipart/related; type="application/dicom"``);
`store_parts` writes the parts into an intake folder and ingests it with
`medcm.engine.receiver.ingest_received`, the intake of everything that arrives from the network (the
engine's de-identification, then an optional draft). The answer is PS3.18's: HTTP 200 when every
instance was stored, 202 when some failed, 409 when none was, with a DICOM JSON body listing the stored
instances in ReferencedSOPSequence (0008,1199) and the others, with a failure reason, in
FailedSOPSequence (0008,1198). Instances are named by the UIDs they were sent with; what the store
keeps is de-identified. A request that is not a DICOM multipart, or breaks `UploadLimits`, is refused
as a whole (`StowRefused`, with its HTTP status).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from medcm.dicom.limits import UploadLimits
from medcm.dicom.read import read_dataset
from medcm.engine.dicomweb import intake_folder
from medcm.engine.receiver import ReceivedStudy, ingest_received

if TYPE_CHECKING:
    from medcm.engine.facade import Engine

__all__ = ["DICOM_MEDIA_TYPE", "StowRefused", "StowResponse", "split_multipart", "store_parts"]

log = logging.getLogger(__name__)

DICOM_MEDIA_TYPE = "application/dicom"
# FailureReason (0008,1197) values, PS3.18 Table I.2-1 / PS3.4 Annex GG
PROCESSING_FAILURE, CANNOT_UNDERSTAND = 0x0110, 0xC000
_PARAM = re.compile(r';\s*([A-Za-z0-9_-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]+)')


class StowRefused(ValueError):
    """A STOW-RS request refused as a whole; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class StowResponse:
    """The answer to a STOW-RS request: an HTTP status and its DICOM JSON body."""

    status: int  # 200: all stored; 202: some failed; 409: none stored
    body: dict[str, Any]
    received: ReceivedStudy | None  # what the ingest stored (None when nothing reached it)


def split_multipart(body: bytes, content_type: str) -> list[bytes]:
    """The parts of a ``multipart/related; type="application/dicom"`` body, each a DICOM file's bytes.

    Raises:
        StowRefused: 415 for another media type (or parts that are not application/dicom), 400 for a
            missing boundary or a body that is not multipart.
    """
    media, params = _media_type(content_type)
    if media != "multipart/related" or params.get("type", DICOM_MEDIA_TYPE).lower() != DICOM_MEDIA_TYPE:
        raise StowRefused(415, f"Content-Type: got {content_type!r}, expected multipart/related; "
                          f'type="{DICOM_MEDIA_TYPE}" (DICOM PS3.18 STOW-RS; bulk data and metadata are not accepted)')
    boundary = params.get("boundary", "")
    if not boundary:
        raise StowRefused(400, f"Content-Type {content_type!r} has no boundary parameter")
    delimiter = b"--" + boundary.encode("latin-1")
    chunks = body.split(delimiter)
    if len(chunks) < 3 or not chunks[-1].startswith(b"--"):
        raise StowRefused(400, f"the body is not multipart with boundary {boundary!r} (no closing delimiter)")
    parts = []
    for n, chunk in enumerate(chunks[1:-1], start=1):
        head, sep, data = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise StowRefused(400, f"part {n} has no blank line after its headers")
        headers = {}
        for line in head.strip(b"\r\n").split(b"\r\n"):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        part_type = _media_type(headers.get("content-type", DICOM_MEDIA_TYPE))[0]
        if part_type != DICOM_MEDIA_TYPE:
            raise StowRefused(415, f"part {n}: Content-Type {part_type!r}, expected {DICOM_MEDIA_TYPE}")
        parts.append(data[:-2] if data.endswith(b"\r\n") else data)
    return parts


def store_parts(engine: Engine, parts: Sequence[bytes], user: str, *, draft: bool = False,
                limits: UploadLimits = UploadLimits()) -> StowResponse:
    """Store the DICOM files of a STOW-RS request through the receiver's intake; PS3.18's answer.

    Args:
        engine: the engine to ingest with (its de-identification applies).
        parts: the request's DICOM files (`split_multipart`).
        user: recorded in the audit trail, e.g. "stow:dr_a".
        draft: draft each stored study and save the draft.
        limits: the request is refused (413) when it holds more files or bytes than an upload may.

    Raises:
        StowRefused: 400 without any part, 413 over `limits`.
    """
    if not parts:
        raise StowRefused(400, "the request holds no DICOM part")
    if len(parts) > limits.max_files:
        raise StowRefused(413, f"{len(parts)} instances, over {limits.max_files}, the most one upload may hold")
    total = sum(len(part) for part in parts)
    if total > limits.max_upload_bytes:
        raise StowRefused(413, f"{total} bytes, over {limits.max_upload_bytes}, the most one upload may hold")
    failed: list[dict] = []
    sent: dict[str, tuple[str, str]] = {}  # file name in the intake folder → (SOP class, SOP instance) as sent
    with intake_folder(engine, "stow") as folder:
        for n, part in enumerate(parts, start=1):
            uids = _uids(part, f"STOW-RS part {n}")
            if uids is None:
                failed.append(_item("", "", CANNOT_UNDERSTAND))
                continue
            path = folder / f"{n:06d}.dcm"
            path.write_bytes(part)
            sent[path.name] = uids
        received = None
        if sent:
            try:
                received = ingest_received(engine, [folder], user, draft)
            except Exception as err:  # noqa: BLE001 - e.g. the database is down: every instance failed
                log.error("STOW-RS from %s: ingest failed: %s: %s", user, type(err).__name__, err)
                failed += [_item(*uids, PROCESSING_FAILURE) for uids in sent.values()]
                return StowResponse(409, _body([], failed), None)
    refused = {name.rsplit("/", 1)[-1] for name in received.failed_files} if received else set()
    stored = [_item(*uids) for name, uids in sent.items() if name not in refused]
    failed += [_item(*sent[name], CANNOT_UNDERSTAND) for name in sent if name in refused]
    status = 409 if not stored else 202 if failed else 200
    return StowResponse(status, _body(stored, failed), received)


def _uids(part: bytes, label: str) -> tuple[str, str] | None:
    """The part's SOPClassUID and SOPInstanceUID, or None when it is not a readable DICOM file."""
    try:
        ds = read_dataset(part, label, headers_only=True)
        return str(ds.SOPClassUID), str(ds.SOPInstanceUID)
    except Exception as err:  # noqa: BLE001 - whatever the part holds, the answer is a failed item
        log.warning("%s: not stored: %s", label, err)
        return None


def _item(sop_class: str, sop_instance: str, reason: int | None = None) -> dict:
    """A ReferencedSOPSequence item, or a FailedSOPSequence item with its FailureReason."""
    item: dict[str, Any] = {"00081150": {"vr": "UI", "Value": [sop_class]} if sop_class else {"vr": "UI"},
                            "00081155": {"vr": "UI", "Value": [sop_instance]} if sop_instance else {"vr": "UI"}}
    if reason is not None:
        item["00081197"] = {"vr": "US", "Value": [reason]}
    return item


def _body(stored: list[dict], failed: list[dict]) -> dict[str, Any]:
    """The response dataset in DICOM JSON (PS3.18 Table 10.5.3-1); no RetrieveURL: medcm serves no WADO-RS."""
    body: dict[str, Any] = {"00081190": {"vr": "UR"}}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    if stored:
        body["00081199"] = {"vr": "SQ", "Value": stored}
    return body


def _media_type(value: str) -> tuple[str, dict[str, str]]:
    """A Content-Type's media type (lower case) and its parameters (quotes removed)."""
    media = value.split(";", 1)[0].strip().lower()
    params = {m.group(1).lower(): m.group(2).strip('"') for m in _PARAM.finditer(value)}
    return media, params
