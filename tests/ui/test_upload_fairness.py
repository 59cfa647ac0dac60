"""Fair scheduling (issue 18 item 5): an upload's cheap checks run before the engine's queue, one upload per
account is in flight at a time, and signing has a queue of its own."""

from __future__ import annotations

import time
import zipfile
from types import SimpleNamespace

import pytest

gr = pytest.importorskip("gradio")

from db.store import CaseStore  # noqa: E402
from medcm.engine.facade import Engine  # noqa: E402
from ui.app import build_app  # noqa: E402
from ui.study import UploadSlots, check_upload_request  # noqa: E402


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_one_upload_per_account_in_flight_and_a_forgotten_slot_expires():
    clock = _Clock()
    slots = UploadSlots(per_user=1, expire_s=60, clock=clock)
    slots.claim("dr.a")
    slots.claim("dr.b")  # another account is not held up
    with pytest.raises(gr.Error, match="already have 1 upload"):
        slots.claim("dr.a")
    slots.release("dr.a")
    slots.claim("dr.a")
    clock.now = 61.0  # claimed, never released (the page was closed): free again
    slots.claim("dr.a")


@pytest.fixture
def store(tmp_path):
    store = CaseStore(f"sqlite:///{tmp_path / 'cases.db'}")
    store.add_user("dr.a", "clinician", "correct horse battery")
    store.add_user("viewer", "viewer", "correct horse battery")
    return store


def test_a_zip_of_many_small_zero_members_is_refused_before_the_queue(store, tmp_path):
    archive = tmp_path / "many.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(200):
            zf.writestr(f"m{i:03d}.dcm", b"\0" * 1024**2)
    slots = UploadSlots()
    start = time.perf_counter()
    with pytest.raises(gr.Error, match="upload refused, nothing stored: many.zip: its members together unpack"):
        check_upload_request(store, SimpleNamespace(username="dr.a"), [str(archive)], slots)
    assert time.perf_counter() - start < 5  # generous: about 0.1 s here; the engine never saw it
    check_upload_request(store, SimpleNamespace(username="dr.a"), [str(_small_file(tmp_path))], slots)  # no slot taken
    with pytest.raises(gr.Error, match="already have"):
        check_upload_request(store, SimpleNamespace(username="dr.a"), [str(_small_file(tmp_path))], slots)
    with pytest.raises(gr.Error, match="may not upload|upload studies"):
        check_upload_request(store, SimpleNamespace(username="viewer"), [str(_small_file(tmp_path))], slots)


def _small_file(tmp_path):
    path = tmp_path / "small.dcm"
    path.write_bytes(b"\0" * 200)
    return path


def test_uploads_are_checked_outside_the_engine_queue_and_signing_has_its_own(store, tmp_path):
    app = build_app(Engine(store), store, upload_dir=tmp_path / "uploads")
    by_name = {getattr(fn.fn, "__name__", ""): fn for fn in app.fns.values()}
    assert by_name["on_upload_check"].concurrency_id == "checks"
    assert by_name["on_upload"].concurrency_id == "engine" and by_name["on_draft"].concurrency_id == "engine"
    assert by_name["on_sign"].concurrency_id == "sign"
    assert {fn.concurrency_id for fn in app.fns.values() if fn.api_name == "sign"} == {"sign"}


def test_a_refused_save_or_sign_cannot_blank_the_worklist(store, tmp_path):
    """Save and Sign write their own status line only; the worklist is refreshed by the event's next step."""
    app = build_app(Engine(store), store, upload_dir=tmp_path / "uploads")
    worklist = next(block._id for block in app.blocks.values() if getattr(block, "elem_id", None) == "worklist")
    for name in ("on_save", "on_sign"):
        (fn,) = [fn for fn in app.fns.values() if getattr(fn.fn, "__name__", "") == name]
        assert worklist not in [block._id for block in fn.outputs]

