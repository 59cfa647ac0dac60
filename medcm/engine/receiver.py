"""A DICOM receiver (C-STORE/C-ECHO SCP): what a PACS sends is spooled, then ingested once its study is quiet.

`Receiver` runs a pynetdicom server that accepts the image storage SOP classes in the transfer syntaxes
this installation decodes (`image_storage_classes`, `decodable_transfer_syntaxes`), plus Verification.
Each instance is checked from its header (`medcm.dicom.read.check_pixel_data`, burned-in annotation when
the engine refuses it) and written atomically to ``<spool>/<StudyInstanceUID>/<SOPInstanceUID>.dcm``
before the sender hears "success", so an acknowledged instance survives a crash. A study folder that
has received nothing for `quiet_seconds` is claimed (moved under ``<spool>/.ingesting/``), ingested
with `Engine.ingest` exactly like an upload (the engine's de-identification), optionally drafted, and
only then deleted: a crash re-ingests it at the next start, and ingest stores nothing twice. Without
de-identification (`--no-deid`) the store refers to the received files themselves, so they are moved to
``<files_dir>/received/`` before ingest and kept.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import AllTransferSyntaxes, UID
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from medcm.dicom.read import DicomReadError, check_pixel_data, read_dataset

if TYPE_CHECKING:
    from medcm.engine.facade import Engine

__all__ = ["ReceivedStudy", "Receiver", "decodable_transfer_syntaxes", "image_storage_classes", "ingest_received"]

log = logging.getLogger(__name__)

SUCCESS, OUT_OF_RESOURCES, NOT_MATCHING_SOP_CLASS, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xA900, 0xC000
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")  # also what keeps a UID used as a file name inside the spool
_INCOMING, _CLAIMED = ".incoming", ".ingesting"
RETRY_SECONDS = 60.0  # a claimed study whose ingest failed (e.g. the database is down) is retried this often


def image_storage_classes() -> list[str]:
    """The storage SOP classes medcm reads: those of images (and the Enhanced US volume), not SR, RT or waveforms."""
    names = {str(cx.abstract_syntax): UID(str(cx.abstract_syntax)).name for cx in AllStoragePresentationContexts}
    return [uid for uid, name in names.items() if "Image Storage" in name or name == "Enhanced US Volume Storage"]


def decodable_transfer_syntaxes() -> list[str]:
    """The transfer syntaxes pydicom and its installed plugins (pylibjpeg, GDCM) decode here, uncompressed first."""
    found = []
    for ts in AllTransferSyntaxes:
        try:
            if get_decoder(ts).is_available:
                found.append(str(ts))
        except NotImplementedError:  # MPEG, H.264, JPIP...: no decoder exists in pydicom
            continue
    return found


@dataclass(frozen=True)
class ReceivedStudy:
    """What one flush of a quiet spool folder stored (study UIDs as stored, i.e. de-identified)."""

    studies: tuple[str, ...]
    added_instances: int
    skipped_instances: int
    errors: tuple[str, ...]
    drafts: dict[str, str]  # stored study UID → "drafted", "abstained", "no draft" or "failed: ..."
    user: str
    failed_files: tuple[str, ...] = ()  # the files (as given to ingest) that were not stored, one per error


class _Refused(Exception):
    """An instance refused with a DICOM failure status."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class Receiver:
    """A C-STORE/C-ECHO SCP feeding the engine's ingest through a spool folder.

    Args:
        engine: the engine to ingest with (its `deid` config applies, as for uploads).
        spool: folder for received instances until their study is ingested (created; holds patient data).
        ae_title: this receiver's AE title.
        host: address to bind.
        port: TCP port (0: any free port; see `port` once started).
        allowed_aes: calling AE titles allowed to associate; empty: any.
        quiet_seconds: a study is ingested once nothing arrived for it for this long.
        draft: after ingest, draft each new study and save the draft (`Engine.draft_for_study(save=True)`).
    """

    def __init__(self, engine: Engine, spool: str | Path, ae_title: str = "MEDCM", host: str = "127.0.0.1",
                 port: int = 11112, allowed_aes: Sequence[str] = (), quiet_seconds: float = 10.0,
                 draft: bool = False) -> None:
        if quiet_seconds < 0:
            raise ValueError(f"quiet_seconds: got {quiet_seconds}, expected a number of seconds >= 0")
        self.engine, self.spool, self.quiet_seconds, self.draft = engine, Path(spool), quiet_seconds, draft
        self.address = (host, port)
        self._ae = AE(ae_title=ae_title)  # pynetdicom refuses an invalid title (empty, over 16 characters)
        syntaxes = decodable_transfer_syntaxes()
        for sop_class in image_storage_classes():
            self._ae.add_supported_context(sop_class, syntaxes)
        self._ae.add_supported_context(Verification)  # C-ECHO: pynetdicom answers it by itself
        self._ae.require_calling_aet = list(allowed_aes)
        self._lock = threading.Lock()  # between writes into a study folder and its claim by a flush
        self._senders: dict[str, set[str]] = {}  # spool folder name → calling AE titles (for the audit trail)
        self._retry_at: dict[str, float] = {}
        self._server: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port the server listens on (the one picked for port 0)."""
        return int(self._server.server_address[1]) if self._server else self.address[1]

    def start(self, background_flush: bool = True) -> None:
        """Listen (non-blocking) and, with `background_flush`, ingest quiet studies from a thread."""
        (self.spool / _CLAIMED).mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.spool / _INCOMING, ignore_errors=True)  # half-written, never acknowledged
        (self.spool / _INCOMING).mkdir()
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_REJECTED, self._on_rejected)]
        self._server = self._ae.start_server(self.address, block=False, evt_handlers=handlers)
        if background_flush:
            self._thread = threading.Thread(target=self._flush_loop, name="medcm-receiver-flush", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop listening and flushing; studies still in the spool are ingested at the next start."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
        if self._thread is not None:
            self._thread.join()
        claimed = self.spool / _CLAIMED
        pending = [p for p in self.spool.iterdir() if not p.name.startswith(".")] if self.spool.is_dir() else []
        pending += list(claimed.iterdir()) if claimed.is_dir() else []
        if pending:
            log.info("%d study(ies) left in %s; they are ingested at the next start", len(pending), self.spool)

    def _flush_loop(self) -> None:
        interval = min(max(self.quiet_seconds / 4, 0.2), 2.0)
        while not self._stop.wait(interval):
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - the thread must outlive one bad flush; the files stay spooled
                log.exception("receiver: flushing the spool failed; retrying")

    # ------------------------------------------------------------------ C-STORE
    def _on_rejected(self, event: Any) -> None:
        """One line per association refused (e.g. a calling AE title not in the allowed list)."""
        log.warning("refused an association from AE %r at %s: calling AE title not allowed",
                    event.assoc.requestor.ae_title, event.assoc.requestor.address)

    def _on_store(self, event: Any) -> int:
        """Check an instance and spool it; the status the sender gets (one log line when refused)."""
        calling = str(event.assoc.requestor.ae_title)
        sop_uid = str(event.request.AffectedSOPInstanceUID or "")
        try:
            data = event.encoded_dataset()  # as sent: no decoding and re-encoding
            study_uid = self._check(data, sop_uid, calling)
        except _Refused as err:
            log.warning("refused SOP instance %s from AE %s (status 0x%04X): %s", sop_uid, calling, err.status, err)
            return err.status
        try:
            self._write(study_uid, sop_uid, data, calling)
        except OSError as err:
            log.error("refused SOP instance %s from AE %s (status 0x%04X): cannot spool it: %s",
                      sop_uid, calling, OUT_OF_RESOURCES, err)
            return OUT_OF_RESOURCES
        return SUCCESS

    def _check(self, data: bytes, sop_uid: str, calling: str) -> str:
        """The instance's StudyInstanceUID, or `_Refused` with the status to send."""
        label = f"C-STORE of {sop_uid or '(no SOP Instance UID)'} from AE {calling}"
        try:
            ds = read_dataset(data, label)
            study_uid, own_uid = str(ds.get("StudyInstanceUID", "")), str(ds.get("SOPInstanceUID", ""))
            check_pixel_data(ds, label)
            burned_in = str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES"
        except DicomReadError as err:
            raise _Refused(CANNOT_UNDERSTAND, err.reason) from err
        except Exception as err:  # noqa: BLE001 - pydicom converts elements lazily: garbage fails here
            raise _Refused(CANNOT_UNDERSTAND, f"unreadable dataset ({type(err).__name__}: {err})") from err
        for what, uid in (("SOP Instance UID", sop_uid), ("StudyInstanceUID", study_uid)):
            if not (_UID.match(uid) and len(uid) <= 64):
                raise _Refused(CANNOT_UNDERSTAND, f"{what} {uid!r} is not a valid UID (digits and dots, 64 at most)")
        if own_uid != sop_uid:
            raise _Refused(NOT_MATCHING_SOP_CLASS, f"the dataset's SOPInstanceUID {own_uid!r} differs from the "
                           "request's Affected SOP Instance UID")
        deid = getattr(self.engine, "deid", None)
        if burned_in and deid is not None and deid.refuse_burned_in:
            raise _Refused(CANNOT_UNDERSTAND, "it declares burned-in annotation (BurnedInAnnotation YES), so its "
                           "pixels may show the patient's name (medcm listen --burned-in flag stores it flagged)")
        return study_uid

    def _write(self, study_uid: str, sop_uid: str, data: bytes, calling: str) -> None:
        """Write the file under `.incoming`, synced, then move it into its study folder (atomic, under the lock)."""
        fd, tmp = tempfile.mkstemp(suffix=".dcm", dir=self.spool / _INCOMING)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())  # "success" tells the sender it may delete its copy
            with self._lock:
                folder = self.spool / study_uid
                folder.mkdir(exist_ok=True)
                os.replace(tmp, folder / f"{sop_uid}.dcm")  # also touches the folder: its mtime is "last received"
                self._senders.setdefault(study_uid, set()).add(calling)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # -------------------------------------------------------------------- flush
    def flush(self, quiet_seconds: float | None = None) -> list[ReceivedStudy]:
        """Claim every study folder quiet for `quiet_seconds` (default: the receiver's), ingest the claimed ones.

        A claimed folder is deleted only after its ingest returned; one whose ingest raised stays claimed
        and is retried after `RETRY_SECONDS`.
        """
        quiet = self.quiet_seconds if quiet_seconds is None else quiet_seconds
        claimed_dir = self.spool / _CLAIMED
        with self._lock:
            now = time.time()
            for folder in sorted(self.spool.iterdir()):
                if folder.name.startswith(".") or not folder.is_dir() or now - folder.stat().st_mtime < quiet:
                    continue
                claimed = claimed_dir / f"{folder.name}.{time.time_ns()}"
                os.replace(folder, claimed)
                self._senders[claimed.name] = self._senders.pop(folder.name, set())
        done = []
        for claimed in sorted(claimed_dir.iterdir()):
            if self._retry_at.get(claimed.name, 0.0) <= time.time():
                received = self._ingest(claimed)
                if received is not None:
                    done.append(received)
        return done

    def _ingest(self, claimed: Path) -> ReceivedStudy | None:
        senders = self._senders.get(claimed.name) or {"unknown AE"}  # unknown: spooled before a restart
        user = "dicom:" + ",".join(sorted(senders))
        source = claimed
        if getattr(self.engine, "deid", None) is None:  # the store refers to the files as received: keep them
            source = Path(self.engine.files_dir) / "received" / claimed.name
            source.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(claimed, source)
        try:
            received = ingest_received(self.engine, [source], user, self.draft)
        except Exception as err:  # noqa: BLE001 - e.g. the database is down: keep the files for a retry
            if source != claimed:
                shutil.move(source, claimed)
            self._retry_at[claimed.name] = time.time() + RETRY_SECONDS
            log.error("received study in %s: ingest failed, kept for a retry in %.0f s: %s", claimed,
                      RETRY_SECONDS, err)
            return None
        if source == claimed:  # de-identified copies were stored: the received files go
            shutil.rmtree(claimed, ignore_errors=True)  # only now: a crash before this ingests it again
        self._senders.pop(claimed.name, None)
        self._retry_at.pop(claimed.name, None)
        return received


def ingest_received(engine: Engine, paths: Sequence[str | Path], user: str, draft: bool = False) -> ReceivedStudy:
    """Ingest received DICOM like an upload (`Engine.ingest`: the engine's de-identification) and draft it.

    The one intake of instances from the network: the receiver's quiet studies, a DICOMweb pull
    (`medcm.engine.dicomweb.pull_study`) and STOW-RS all come through here.

    Args:
        engine: the engine to ingest with.
        paths: files or folders of received instances (the caller deletes them afterwards).
        user: recorded in the audit trail, e.g. "dicom:PACS" or "dicomweb:http://pacs/dicom-web".
        draft: draft each study that gained instances and save the draft (`Engine.draft_for_study(save=True)`).

    Returns:
        What was stored; per-instance errors are in it, not raised.

    Raises:
        Exception: whatever `Engine.ingest` raises (e.g. the database is down); nothing was drafted.
    """
    result = engine.ingest(list(paths), user=user)
    errors = tuple(str(error) for error in result.errors)
    for error in errors:
        log.warning("received instance not stored: %s", error)
    drafted = draft and result.added_instances > 0  # a repeated send changes nothing to draft again
    drafts = {uid: _draft(engine, uid, user) for uid in result.studies} if drafted else {}
    for uid in result.studies:
        log.info("received study %s from %s: %d new instance(s), %d already stored, %d not stored%s", uid,
                 user, result.added_instances, result.skipped_instances, len(errors),
                 f"; {drafts[uid]}" if uid in drafts else "")
    return ReceivedStudy(tuple(result.studies), result.added_instances, result.skipped_instances, errors,
                         drafts, user, tuple(str(error.path) for error in result.errors))


def _draft(engine: Engine, study_uid: str, user: str) -> str:
    """Draft a stored study and save it as the app does after an upload; what happened, in words."""
    try:
        draft = engine.draft_for_study(study_uid, save=True, user=user)
    except Exception as err:  # noqa: BLE001 - the study is stored; a clinician can draft it in the app
        log.warning("received study %s: no draft (%s: %s)", study_uid, type(err).__name__, err)
        return f"draft failed: {err}"
    if draft.abstention is not None and draft.abstention.abstained:
        return "abstained (nothing similar enough to draft from)"
    return "drafted" if draft.text() else "no draft (no usable sentence)"
