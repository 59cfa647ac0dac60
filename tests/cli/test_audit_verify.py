"""`medcm audit verify`: one line and exit 0 for an intact audit trail, one line per problem and exit 1 otherwise."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from db.store import CaseStore
from medcm.cli.commands import main


def _verify(capsys, *args: str) -> tuple[int, list[str]]:
    code = main(["audit", "verify", *args])
    out, err = capsys.readouterr()
    assert err == ""
    return code, out.splitlines()


@pytest.fixture
def db(tmp_path) -> str:
    path = tmp_path / "cases.db"
    with CaseStore(f"sqlite:///{path}") as store:
        store.log_event("login", "dr.a")
        store.log_event("view", "dr.a", "1.2.3", {"tab": "report"})
        store.log_event("login", "dr.b")
    return str(path)


def test_an_intact_trail_prints_one_line_and_exits_0(db, capsys):
    code, lines = _verify(capsys, "--db", db)
    with CaseStore(f"sqlite:///{db}") as store:
        head = store.verify_audit().head
    assert (code, lines) == (0, [f"audit trail intact: 3 events, chain head {head[:16]}"])


def test_a_tampered_trail_prints_each_problem_and_exits_1(db, capsys):
    with CaseStore(f"sqlite:///{db}") as store, store._engine.begin() as conn:
        conn.execute(text("DROP TRIGGER events_no_delete"))
        conn.execute(text("DELETE FROM events WHERE id = 2"))
    code, lines = _verify(capsys, "--db", db)
    assert code == 1
    assert [line.split(":")[0] for line in lines] == ["trigger events_no_delete", "event 2"]
    assert lines[1] == "event 2: deleted: event(s) 2 missing, and event 3 does not link to the event before the gap"


def test_the_key_file_can_live_elsewhere(tmp_path, capsys):
    key = tmp_path / "vault" / "cases.audit-key"
    db = tmp_path / "cases.db"
    with CaseStore(f"sqlite:///{db}", audit_key_file=key) as store:
        store.log_event("login", "dr.a")
    code, lines = _verify(capsys, "--db", str(db), "--audit-key", str(key))
    assert code == 0 and lines[0].startswith("audit trail intact: 1 events")
    code, lines = _verify(capsys, "--db", str(db))  # the default key beside the file is another key
    assert code == 1 and len(lines) == 1 and lines[0].startswith("audit key: the trail was written with key id")


def test_a_missing_database_is_an_error_not_an_empty_intact_trail(tmp_path, capsys):
    code = main(["audit", "verify", "--db", str(tmp_path / "typo.db")])
    assert code == 1 and "typo.db: no case store there" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing created
