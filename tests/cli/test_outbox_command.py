"""`medcm outbox`: lists the pending reports, and `--retry` delivers them (exit 0) or keeps them (exit 1)."""

from __future__ import annotations

import pytest

from db.store import CaseStore
from medcm.cli.commands import build_parser, main
from medcm.cli.outbox_command import outbox_from_args, parse_backoff
from medcm.dicom.deid import DeidConfig
from medcm.engine.facade import Engine
from medcm.engine.outbox import Destination, Outbox, RetryPolicy
from pacs_peers import StorageSCP, free_port, ingest_study  # tests/pacs_peers.py

TEXT = "FINDINGS: Clear lungs.\nIMPRESSION: No acute disease."


def _queued(tmp_path, port: int) -> tuple[str, str, str]:
    """A study signed while its destination was down (queued, not tried: no sender ran): the db file, the outbox
    folder and the study UID."""
    db = str(tmp_path / "cases.db")
    store = CaseStore(f"sqlite:///{db}")
    try:
        outbox = Outbox(tmp_path / "cases.db.outbox", [Destination("PACS", "127.0.0.1", port)], timeout=5)
        engine = Engine(store, device="cpu", deid=DeidConfig(b"outbox-cli-test-key-0123456789"), outbox=outbox)
        study_uid = ingest_study(engine, tmp_path / "study")
        engine.sign(study_uid, TEXT, "dr_a")
    finally:
        store.close()
    return db, str(tmp_path / "cases.db.outbox"), study_uid


def test_serve_and_listen_take_send_to():
    parser = build_parser()
    serve = parser.parse_args(["serve", "--db", "x.db", "--checkpoint", "c", "--send-to", "PACS@h:104"])
    listen = parser.parse_args(["listen", "--db", "x.db", "--send-to", "A@h:1", "--send-to", "B@h:2"])
    assert serve.send_to == ["PACS@h:104"] and listen.send_to == ["A@h:1", "B@h:2"]


def test_send_backoff_configures_the_retry_policy(tmp_path):
    parser = build_parser()
    url = f"sqlite:///{tmp_path / 'cases.db'}"
    default = outbox_from_args(parser.parse_args(["listen", "--db", "x.db", "--send-to", "A@h:1"]), url)
    assert default.retry == RetryPolicy(10.0, 600.0)
    args = parser.parse_args(["serve", "--db", "x.db", "--checkpoint", "c", "--send-to", "A@h:1",
                              "--send-backoff", "2,60"])
    assert outbox_from_args(args, url).retry == RetryPolicy(2.0, 60.0)
    for bad in ("10", "a,b", "60,2", "-1,5", "1,2,3"):
        with pytest.raises(ValueError, match=f"--send-backoff: got '{bad}'"):
            parse_backoff(bad)


def test_outbox_lists_and_retries(tmp_path, capsys):
    port = free_port()
    db, folder, study_uid = _queued(tmp_path, port)
    assert main(["outbox", "--db", db]) == 1  # the default folder is beside the db file
    out = capsys.readouterr().out
    assert "1 pending" in out and study_uid in out and f"PACS@127.0.0.1:{port}" in out and "attempts 0" in out

    assert main(["outbox", "--db", db, "--outbox", folder, "--retry"]) == 1  # still down
    assert "queued" in capsys.readouterr().out
    assert main(["outbox", "--db", db]) == 1
    out = capsys.readouterr().out
    assert "attempts 1" in out and "last error: " in out and "next try: " in out

    server = StorageSCP(port).start()
    try:
        assert main(["outbox", "--db", db, "--outbox", folder, "--retry", "--user", "ops"]) == 0
    finally:
        server.stop()
    assert "delivered" in capsys.readouterr().out and len(server.received) == 1
    assert main(["outbox", "--db", db]) == 0
    store = CaseStore(f"sqlite:///{db}")
    try:
        events = store.events(study_uid, kind="send")
    finally:
        store.close()
    assert [e["detail"]["status"] for e in events] == ["delivered", "queued"]  # newest first; signing sent nothing
    assert events[0]["user"] == "ops"


def test_a_bad_send_to_is_one_error_line(tmp_path, capsys):
    assert main(["outbox", "--db", str(tmp_path / "cases.db"), "--send-to", "nonsense"]) == 1
    assert "--send-to: got 'nonsense'" in capsys.readouterr().err
