"""DICOMweb with `dicomweb-client`: pull a study by StudyInstanceUID (QIDO-RS, WADO-RS) into the case store.

`pull_study` asks the server for the study (QIDO-RS), fetches its series (WADO-RS) into a folder and
ingests that folder through `medcm.engine.receiver.ingest_received`, the intake of everything that
arrives from the network (the engine's de-identification, then an optional draft). Series holding no
images (SR, key objects, presentation states) are not fetched. A pull stays within `UploadLimits`
(bytes and instances), like an upload. Every failure is one `DicomWebError` line naming the server
and the study: unknown study, server unreachable, HTTP error, a pull over the limits.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medcm.dicom.limits import UploadLimits
from medcm.dicom.web import dicomweb_client
from medcm.engine.receiver import ReceivedStudy, ingest_received

if TYPE_CHECKING:
    from medcm.engine.facade import Engine

__all__ = ["DicomWebError", "DicomWebServer", "PulledStudy", "check_uid", "intake_folder", "pull_study"]

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
NOT_IMAGES = frozenset({"SR", "KO", "PR", "DOC"})  # series modalities that hold no image to ingest
STUDY_UID, SERIES_UID, MODALITY = "0020000D", "0020000E", "00080060"


class DicomWebError(RuntimeError):
    """A DICOMweb request that failed; str() is one line naming the server, the study and the cause."""


@dataclass(frozen=True)
class DicomWebServer:
    """A configured DICOMweb server to pull studies from (`pull_study`), e.g. the one `medcm serve --dicomweb`
    gives the review app; the password never shows in its repr."""

    url: str  # the server's DICOMweb root, e.g. "http://pacs:8042/dicom-web"
    username: str | None = None  # HTTP Basic user name; None: no credentials
    password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not re.match(r"^https?://[^/\s]+", self.url or ""):
            raise ValueError(f"DICOMweb server: got {self.url!r}, expected an http(s) URL of its DICOMweb root, "
                             "e.g. http://pacs:8042/dicom-web")

    def pull(self, engine: Engine, study_uid: str, *, draft: bool = False, user: str | None = None) -> PulledStudy:
        """`pull_study` from this server with its credentials (same arguments and errors)."""
        return pull_study(engine, self.url, study_uid, draft=draft, user=user, username=self.username,
                          password=self.password)


@dataclass(frozen=True)
class PulledStudy:
    """What `pull_study` fetched and stored."""

    url: str
    study_uid: str  # as requested (the server's); the stored UIDs are in `received.studies`
    fetched_instances: int
    skipped_series: tuple[str, ...]  # series not fetched: no images (e.g. "1.2.3 (SR)")
    received: ReceivedStudy


def check_uid(uid: str, what: str = "StudyInstanceUID") -> str:
    """`uid` stripped, if it is a valid DICOM UID.

    Raises:
        ValueError: not digits and dots, or over 64 characters.
    """
    uid = (uid or "").strip()
    if not (_UID.match(uid) and len(uid) <= 64):
        raise ValueError(f"{what}: got {uid!r}, expected a DICOM UID (digits and dots, 64 characters at most)")
    return uid


@contextlib.contextmanager
def intake_folder(engine: Engine, label: str) -> Iterator[Path]:
    """A folder for instances received over DICOMweb until `ingest_received` has stored them.

    With de-identification on (`engine.deid`) the engine stores de-identified copies, so the folder is
    temporary and deleted afterwards. Without it the store refers to the files as received: they are
    kept under ``<engine.files_dir>/received/<label>-<random>/``.
    """
    if engine.deid is not None:
        folder = Path(tempfile.mkdtemp(prefix=f"medcm-{label}-"))
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    folder = Path(engine.files_dir) / "received" / f"{label}-{uuid.uuid4().hex[:12]}"
    folder.mkdir(parents=True)
    yield folder


def pull_study(engine: Engine, url: str, study_uid: str, *, draft: bool = False, user: str | None = None,
               username: str | None = None, password: str | None = None,
               limits: UploadLimits = UploadLimits(), client: Any = None) -> PulledStudy:
    """Find a study on a DICOMweb server by its StudyInstanceUID, fetch it and ingest it like an upload.

    Args:
        engine: the engine to ingest with (its de-identification applies).
        url: the server's DICOMweb root, e.g. "http://pacs:8042/dicom-web".
        study_uid: the StudyInstanceUID on the server.
        draft: draft the stored study and save the draft (needs the engine's checkpoint).
        user: recorded in the audit trail (default "dicomweb:<url>").
        username: HTTP Basic user name for the server (None: no credentials).
        password: its password.
        limits: the pull is refused once it holds more bytes or instances than an upload may.
        client: a ready `DICOMwebClient` (default: `dicomweb_client(url, username, password)`).

    Returns:
        What was fetched and stored.

    Raises:
        ValueError: `study_uid` is not a UID.
        DicomWebError: the server is unreachable or answers with an HTTP error, it has no such study,
            the study holds no image series, or the pull breaks `limits`.
    """
    import requests

    study_uid = check_uid(study_uid)
    where = f"DICOMweb {url}, study {study_uid}"
    client = client or dicomweb_client(url, username, password)
    try:
        series = _find_series(client, study_uid, where)
        images = [s for s in series if _value(s, MODALITY).upper() not in NOT_IMAGES]
        skipped = tuple(f"{_value(s, SERIES_UID)} ({_value(s, MODALITY)})" for s in series if s not in images)
        if not images:
            raise DicomWebError(f"{where}: no image series to fetch (only {', '.join(skipped) or 'nothing'})")
        with intake_folder(engine, "dicomweb") as folder:
            count = _fetch(client, study_uid, [_value(s, SERIES_UID) for s in images], folder, limits, where)
            received = ingest_received(engine, [folder], user or f"dicomweb:{url}", draft)
    except requests.exceptions.HTTPError as err:
        status = err.response.status_code if err.response is not None else "?"
        raise DicomWebError(f"{where}: HTTP {status} from {err.request.url if err.request else url}") from err
    except requests.exceptions.RequestException as err:
        raise DicomWebError(f"{where}: server unreachable ({type(err).__name__}: {_first_line(err)})") from err
    return PulledStudy(url, study_uid, count, skipped, received)


def _find_series(client: Any, study_uid: str, where: str) -> list[dict]:
    """QIDO-RS: the study's series (their JSON attributes).

    Raises:
        DicomWebError: the server has no such study.
    """
    found = client.search_for_studies(search_filters={"StudyInstanceUID": study_uid})
    if not any(_value(study, STUDY_UID) == study_uid for study in found):
        raise DicomWebError(f"{where}: no such study on the server (QIDO-RS found none); check the UID")
    return client.search_for_series(study_uid, fields=["Modality"])


def _fetch(client: Any, study_uid: str, series_uids: list[str], folder: Path, limits: UploadLimits,
           where: str) -> int:
    """WADO-RS: write every instance of `series_uids` to `folder` as `<n>.dcm`; how many.

    Raises:
        DicomWebError: more instances or bytes than `limits` allow.
    """
    count = total = 0
    for series_uid in series_uids:
        for ds in client.iter_series(study_uid, series_uid):
            count += 1
            if count > limits.max_files:
                raise DicomWebError(f"{where}: over {limits.max_files} instances, the most one upload may hold")
            path = folder / f"{count:06d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            total += path.stat().st_size
            if total > limits.max_upload_bytes:
                raise DicomWebError(f"{where}: over {limits.max_upload_bytes} bytes, the most one upload may hold")
    return count


def _value(attributes: dict, tag: str) -> str:
    """The first value of `tag` in a DICOM JSON object ("" when absent)."""
    values = attributes.get(tag, {}).get("Value") or [""]
    return str(values[0])


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else "no detail"
