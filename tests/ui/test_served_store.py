"""The store behind a served app: uploads arrive de-identified, the upload cache is emptied, refused
uploads store nothing, and concurrent users upload, draft and sign without losing or doubling a write."""

from __future__ import annotations

import shutil
import socket
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from db.store import CaseStore  # noqa: E402
from medcm.dicom.deid import DeidConfig  # noqa: E402
from medcm.engine.facade import Engine  # noqa: E402
from ui.app import build_app, launch_options  # noqa: E402
from ui.auth import make_auth  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dicom"))  # the planted-identifier dataset
from test_deid import _bytes, _ct, _planted_strings  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))  # the load-test driver
from load_test import check_store, run_load  # noqa: E402

KEY = b"served-site-secret-0123"
USERS = [(f"dr.load{i}", f"password-{i:04d}") for i in range(3)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(synthetic_manifest, trained_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    pool = root / "pool"
    for i in range(16):
        name = f"train-{i:05d}"
        shutil.copytree(synthetic_manifest.parent / "cases" / name, pool / name)
    store = CaseStore(f"sqlite:///{root / 'data' / 'cases.db'}")
    engine = Engine(store, checkpoint=trained_run.best_dir.parent, device="cpu", deid=DeidConfig(KEY))
    assert engine.ingest([pool], user="tester").added_reports == 16
    for name, password in USERS:
        store.add_user(name, "clinician", password)
    mp = pytest.MonkeyPatch()
    mp.setenv("GRADIO_TEMP_DIR", str(root / "gradio-tmp"))
    app = build_app(engine, store, upload_dir=root / "data" / "uploads")
    _, url, _ = app.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=_free_port(), quiet=True,
                           auth=make_auth(store), **launch_options())
    client = gradio_client.Client(url, auth=USERS[0], verbose=False, analytics_enabled=False, download_files=False)
    yield SimpleNamespace(root=root, url=url, store=store, client=client)
    client.close()
    app.close()
    mp.undo()
    store.close()


def _cache_files(root: Path) -> list[Path]:
    return [p for p in (root / "gradio-tmp").rglob("*") if p.is_file() and p.suffix.lower() in (".dcm", ".zip")]


def test_an_upload_is_stored_de_identified_and_its_cached_copy_deleted(served, tmp_path):
    ds = _ct()
    upload = tmp_path / "PLANTFAMILY_scan.dcm"
    upload.write_bytes(_bytes(ds))
    planted = [s for s in _planted_strings(ds) if s.encode() in upload.read_bytes()]
    draft = served.client.predict(gradio_client.handle_file(str(upload)), api_name="/draft")
    study = served.store.get_study(draft["study_uid"])
    assert study.patient_id.startswith("ANON-") and draft["study_uid"] != str(ds.StudyInstanceUID)
    assert _cache_files(served.root) == []
    data = served.root / "data"
    stored = b"".join(p.read_bytes() for p in data.rglob("*") if p.is_file())
    assert [s for s in planted if s.encode() in stored] == []
    assert not (data / "uploads").exists() or not any((data / "uploads").rglob("*.dcm"))


def test_a_zip_bomb_is_refused_and_nothing_is_stored(served, tmp_path):
    bomb = tmp_path / "study.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a.dcm", _bytes(_ct()))
        archive.writestr("b.dcm", bytes(200 * 1024 * 1024))  # 200 MiB of zeros: about 200 KiB compressed
    before = len(served.store.list_studies())
    with pytest.raises(gradio_client.exceptions.AppError, match=r"upload refused, nothing stored: .*b\.dcm.*zip bomb"):
        served.client.predict(gradio_client.handle_file(str(bomb)), api_name="/draft")
    assert len(served.store.list_studies()) == before and _cache_files(served.root) == []


def test_concurrent_users_lose_and_double_nothing(served, tmp_path):
    before = len(served.store.list_studies(limit=100_000))
    signs_before = len(served.store.events(kind="sign", limit=100_000))
    result = run_load(served.url, USERS, seconds=12, folder=tmp_path / "client")
    summary = result.summary()
    assert summary["errors"] == []
    assert summary["uploads"] >= len(USERS) and summary["signatures"] == summary["uploads"]
    assert summary["per_endpoint"]["search"]["n"] >= 0
    assert check_store(served.store, result, before, signs_before) == []
    assert _cache_files(served.root) == []


def test_check_store_notices_a_missing_signature(served):
    from load_test import LoadResult, UserLog

    log = UserLog("dr.load0")
    log.signatures.append({"study_uid": served.store.list_studies()[0].study_uid, "report_id": -1, "version": 9})
    problems = check_store(served.store, LoadResult([log], 1.0), len(served.store.list_studies(limit=100_000)),
                           len(served.store.events(kind="sign", limit=100_000)))
    assert any("matching report -1" in p for p in problems) and any("sign events" in p for p in problems)


def _zip_with(path: Path, members: dict[str, bytes], link: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        if link is not None:
            info = zipfile.ZipInfo(link)
            info.external_attr = 0o120777 << 16  # a symbolic link member
            archive.writestr(info, "/etc/passwd")
    return path


def _absurd_dicom(path: Path) -> Path:
    ds = _ct()
    ds.Rows = ds.Columns = 60000  # declares 3.6e9 pixels over a few KB of data
    path.write_bytes(_bytes(ds))
    return path


@pytest.mark.parametrize("kind, expected", [
    ("traversal", r"upload refused, nothing stored: study.zip:\.\./evil\.dcm: unsafe member name"),
    ("link", r"upload refused, nothing stored: study.zip:link\.dcm: member is a symbolic link"),
    ("disguised", r"no readable DICOM image in the upload: scan\.dcm: not a DICOM file"),
    ("absurd", r"no readable DICOM image in the upload: huge\.dcm: declared image size 60000×60000"),
    ("too many", r"upload refused, nothing stored: .*over the limit of 2"),
])
def test_bad_uploads_are_refused_with_one_line_and_store_nothing(tmp_path, kind, expected):
    from medcm.dicom.limits import UploadLimits
    from ui.study import ingest_upload

    good = _bytes(_ct())
    files = {
        "traversal": lambda: [_zip_with(tmp_path / "study.zip", {"a.dcm": good, "../evil.dcm": good})],
        "link": lambda: [_zip_with(tmp_path / "study.zip", {"a.dcm": good}, link="link.dcm")],
        "disguised": lambda: [tmp_path / "scan.dcm"],
        "absurd": lambda: [_absurd_dicom(tmp_path / "huge.dcm")],
        "too many": lambda: [_zip_with(tmp_path / "study.zip", {f"{i}.dcm": good for i in range(3)})],
    }
    (tmp_path / "scan.dcm").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))  # a PNG renamed to .dcm
    store = CaseStore(f"sqlite:///{tmp_path / 'cases.db'}")
    engine = Engine(store, deid=DeidConfig(KEY))
    with pytest.raises(gr.Error, match=expected) as info:
        limits = UploadLimits(max_files=2) if kind == "too many" else UploadLimits()
        ingest_upload(engine, [str(p) for p in files[kind]()], tmp_path / "uploads", "dr.c", limits)
    assert "\n" not in info.value.message
    assert store.list_studies() == [] and store.events(kind="ingest") == []
    assert not (tmp_path / "cases.db.files").exists() or not any((tmp_path / "cases.db.files").rglob("*.dcm"))
