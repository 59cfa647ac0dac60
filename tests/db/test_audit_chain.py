"""The audit trail's hash chain (issue 18 item 7): an untouched store verifies, the database refuses
INSERT OR REPLACE and back-dated events, and every tampering that gets past the triggers (after
dropping them) makes `verify_audit` name the row, the trigger or the table."""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from datetime import datetime, timedelta, timezone

import pytest
from alembic import command
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

import db.audit as audit
from db import write
from db.connect import alembic_config, make_engine
from db.store import CaseStore, StoreError

FORGED = hashlib.sha256(b"made up").hexdigest()
# The triggers that guard each kind of write, per database (0002's and 0003's).
GUARDS = {
    "sqlite": {"update": ["events_no_update"], "delete": ["events_no_delete"],
               "insert": ["events_insert_in_order", "events_no_backdating"], "head": ["audit_head_follows_events"]},
    "postgresql": {"update": ["events_append_only"], "delete": ["events_append_only"],
                   "insert": ["events_insert_in_order"], "head": ["audit_head_follows_events"]},
}


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path) -> str:
    """SQLite, and PostgreSQL where MEDCM_TEST_POSTGRES_URL names a server (scripts/start_test_postgres.sh)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store' / 'cases.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def store(url, tmp_path):
    # PostgreSQL gets a key file too, so that both databases run the keyed chain the tests tamper with.
    key = None if url.startswith("sqlite") else tmp_path / "pg.audit-key"
    with CaseStore(url, audit_key_file=key) as opened:
        opened.add_user("dr.a", "clinician", "long enough")
        for i in range(5):
            opened.log_event("view", f"dr.{i}", f"1.2.{i}", {"n": i, "nested": {"b": [1, 2], "a": "x"}})
        yield opened


@pytest.fixture
def sqlite_store(tmp_path):
    """A SQLite store with five events, for what only SQLite has (INSERT OR REPLACE, trigger texts)."""
    with CaseStore(f"sqlite:///{tmp_path / 'cases.db'}") as opened:
        for i in range(5):
            opened.log_event("view", f"dr.{i}", f"1.2.{i}")
        yield opened


def sql(store: CaseStore, *statements: str, **params) -> None:
    """Run raw SQL as a person at an SQL prompt would, one transaction."""
    with store._engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement), params)


def unguard(store: CaseStore, *writes: str) -> list[str]:
    """Drop the triggers that refuse these kinds of write ("update", "delete", "insert", "head")."""
    dialect = store._engine.dialect.name
    names = list(dict.fromkeys(name for what in writes for name in GUARDS[dialect][what]))
    table = {"audit_head_follows_events": "audit_head"}
    sql(store, *(f"DROP TRIGGER {name}" + ("" if dialect == "sqlite" else f" ON {table.get(name, 'events')}")
                 for name in names))
    return names


def stamp(store: CaseStore, time: datetime) -> str | datetime:
    """`time` as the database takes it in raw SQL: SQLite's stored text, or the datetime for PostgreSQL."""
    if store._engine.dialect.name == "sqlite":
        return time.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
    return time


def problems(store: CaseStore) -> list[str]:
    report = store.verify_audit()
    assert report.intact is (not report.problems)
    return [str(p) for p in report.problems]


def event_problems(store: CaseStore) -> list[str]:
    return [p for p in problems(store) if p.startswith("event ")]


def row(store: CaseStore, event_id: int) -> dict:
    with store._engine.connect() as conn:
        return dict(conn.execute(text(f"SELECT * FROM events WHERE id = {event_id}")).mappings().one())


# --------------------------------------------------------------- untouched
def test_an_untouched_store_verifies(store, url):
    store.ingest([])  # an ingest of nothing is still an event
    report = store.verify_audit()
    assert report.intact and report.problems == () and report.events == 7 and report.keyed
    assert report.summary() == f"audit trail intact: 7 events, chain head {report.head[:16]}"
    assert report.head == row(store, 7)["row_hash"] and row(store, 1)["prev_hash"] == audit.GENESIS
    assert [row(store, i)["prev_hash"] for i in (2, 3)] == [row(store, i)["row_hash"] for i in (1, 2)]
    with CaseStore(url, audit_key_file=store.audit_key_file) as again:  # a second open: same key, same chain
        again.log_event("login", "dr.a")
        assert again.verify_audit().events == 8 and problems(again) == []


def test_the_key_file_sits_beside_a_sqlite_file_readable_by_its_owner_only(tmp_path):
    path = tmp_path / "new" / "cases.db"
    with CaseStore(f"sqlite:///{path}") as opened:
        opened.log_event("login", "dr.a")
        key_file = path.with_name("cases.db.audit-key")
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert bytes.fromhex(key_file.read_text().strip()) == opened._audit_key
    (tmp_path / "bad.audit-key").write_text("not hex")
    with pytest.raises(StoreError, match=r"audit key .*bad.audit-key: got 7 characters; expected at least 32 hex"):
        CaseStore(f"sqlite:///{tmp_path / 'other.db'}", audit_key_file=tmp_path / "bad.audit-key")


def test_an_unkeyed_chain_says_so(postgres_url):
    with CaseStore(postgres_url) as opened:  # PostgreSQL without a key file
        opened.log_event("login", "dr.a")
        report = opened.verify_audit()
    assert report.intact and not report.keyed and "unkeyed SHA-256" in report.summary()


def test_another_key_cannot_extend_the_trail_and_verify_says_which_key(tmp_path):
    url = f"sqlite:///{tmp_path / 'cases.db'}"
    with CaseStore(url) as opened:
        opened.log_event("login", "dr.a")
    os.replace(tmp_path / "cases.db.audit-key", tmp_path / "elsewhere.audit-key")  # moved, a new one is made
    with CaseStore(url) as opened:
        assert [p.subject for p in opened.verify_audit().problems] == ["audit key"]
        with pytest.raises(StoreError, match="written with key id .*expected the audit key file"):
            opened.log_event("login", "dr.a")
    with CaseStore(url, audit_key_file=tmp_path / "elsewhere.audit-key") as opened:
        opened.log_event("login", "dr.a")
        assert opened.verify_audit().intact


def test_a_clock_that_steps_back_keeps_the_trail_in_order(store, monkeypatch):
    last = store.events(limit=1)[0]["time"]
    monkeypatch.setattr(audit, "utcnow", lambda: last - timedelta(hours=1))
    store.log_event("login", "dr.a")
    assert store.events(limit=1)[0]["time"] == last and problems(store) == []


def test_concurrent_writers_keep_one_chain(store, url):
    """Each append reads the last event and moves the head: writers must queue, or the chain would fork."""
    stores = [CaseStore(url, audit_key_file=store.audit_key_file) for _ in range(4)]  # opened here: Alembic
    # keeps global state while it migrates, so stores are not opened in threads

    def write(n: int) -> None:
        for i in range(8):
            stores[n].log_event("view", f"dr.{n}", detail={"i": i})

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for opened in stores:
        opened.close()
    report = store.verify_audit()
    assert (report.events, report.problems) == (6 + 4 * 8, ())


def test_events_are_only_written_through_a_stores_session(store):
    with Session(store._engine) as s, pytest.raises(StoreError, match="no audit key"):
        write.log(s, "login", "dr.a", None, {})


# ------------------------------------------------- what the database refuses
def test_insert_or_replace_is_refused_by_the_database(store):
    before = row(store, 3)
    replace = ("INSERT OR REPLACE INTO events (id, time, kind, \"user\", study_uid, detail_json, prev_hash, row_hash)"
               if store._engine.dialect.name == "sqlite" else
               "INSERT INTO events (id, time, kind, \"user\", study_uid, detail_json, prev_hash, row_hash)")
    upsert = "" if store._engine.dialect.name == "sqlite" else " ON CONFLICT (id) DO UPDATE SET \"user\" = 'mallory'"
    # Dated now, so not refused as back-dated (SQLite: the id trigger; PostgreSQL: 0002's, for its DO UPDATE).
    with pytest.raises(Exception, match="append-only; expected (an INSERT above the last id|no UPDATE)"):
        sql(store, replace + " VALUES (3, :time, 'view', 'mallory', NULL, '{}', :prev, :hash)" + upsert,
            time=row(store, 6)["time"], prev=before["prev_hash"], hash=FORGED)
    assert row(store, 3) == before and problems(store) == []


def test_a_back_dated_insert_is_refused_by_the_database(store):
    last = row(store, 6)
    with pytest.raises(Exception, match="back-dated"):
        sql(store, "INSERT INTO events (id, time, kind, \"user\", study_uid, detail_json, prev_hash, row_hash)"
            " VALUES (7, :time, 'login', 'mallory', NULL, '{}', :prev, :hash)",
            time=stamp(store, datetime(2020, 1, 1, tzinfo=timezone.utc)), prev=last["row_hash"], hash=FORGED)
    assert store.verify_audit().events == 6 and problems(store) == []


def test_the_head_cannot_be_moved_back_or_deleted(store):
    with pytest.raises(Exception, match="audit_head: expected one row"):
        sql(store, "UPDATE audit_head SET last_id = 5, last_hash = :hash", hash=row(store, 5)["row_hash"])
    with pytest.raises(Exception, match="audit_head: expected one row"):
        sql(store, "DELETE FROM audit_head")
    assert problems(store) == []


# ------------------------------------------- tampering past dropped triggers
def test_a_raw_update_is_caught(store):
    dropped = unguard(store, "update")
    sql(store, "UPDATE events SET \"user\" = 'mallory' WHERE id = 3")
    found = problems(store)
    assert [f"trigger {name}: missing" in " ".join(found) for name in dropped] == [True] * len(dropped)
    assert event_problems(store) == ["event 3: changed: its hash does not match its content (time, kind, user, study "
                                     "or detail edited, or a forged row); expected the hash it was written with"]


def test_a_raw_update_of_the_time_or_detail_is_caught_even_when_unreadable(store):
    unguard(store, "update")
    earlier = stamp(store, datetime(2020, 1, 1, tzinfo=timezone.utc))
    sql(store, "UPDATE events SET time = :time WHERE id = 2", time=earlier)
    sql(store, "UPDATE events SET detail_json = '{\"n\": 99}' WHERE id = 4")
    assert [p.split(":")[0] for p in event_problems(store)] == ["event 2", "event 4"]
    if store._engine.dialect.name == "sqlite":
        sql(store, "UPDATE events SET time = 'yesterday' WHERE id = 5")
        assert "event 5: changed: its time or detail cannot be read" in " ".join(problems(store))


def test_deleting_a_middle_row_is_caught(store):
    unguard(store, "delete")
    sql(store, "DELETE FROM events WHERE id = 3")
    assert event_problems(store) == ["event 3: deleted: event(s) 3 missing, and event 4 does not link to the event "
                                     "before the gap"]


def test_deleting_the_first_rows_is_caught(store):
    unguard(store, "delete")
    sql(store, "DELETE FROM events WHERE id <= 2")
    assert event_problems(store)[0].startswith("event 1: deleted: event(s) 1-2 missing")


def test_deleting_the_last_rows_is_caught_and_moving_the_head_back_needs_the_key(store):
    unguard(store, "delete")
    sql(store, "DELETE FROM events WHERE id >= 5")
    assert event_problems(store) == ["event 5: deleted: the head names event 6 as the last, the last stored is 4"]
    unguard(store, "head")
    sql(store, "UPDATE audit_head SET last_id = 4, last_hash = :hash", hash=row(store, 4)["row_hash"])
    assert event_problems(store) == [] and "audit head: its MAC does not match its values" in " ".join(problems(store))


def test_insert_or_replace_after_dropping_the_trigger_is_caught(sqlite_store):
    dropped = unguard(sqlite_store, "insert")
    before = row(sqlite_store, 3)
    sql(sqlite_store, "INSERT OR REPLACE INTO events (id, time, kind, \"user\", study_uid, detail_json, prev_hash,"
        " row_hash) VALUES (3, :time, 'view', 'mallory', NULL, '{}', :prev, :hash)",
        time=before["time"], prev=before["prev_hash"], hash=FORGED)
    assert row(sqlite_store, 3)["user"] == "mallory"  # what the red team did: the row's user rewritten
    found = problems(sqlite_store)
    assert [p for p in found if p.startswith("trigger")] == [f"trigger {name}: missing (dropped); expected: "
                                                            f"{audit.SQLITE_TRIGGERS[name]}" for name in dropped]
    assert event_problems(sqlite_store) == [
        "event 3: changed: its hash does not match its content (time, kind, user, study or detail edited, or a "
        "forged row); expected the hash it was written with",
        f"event 4: chain break: its previous hash {before['row_hash'][:12]} is not event 3's hash {FORGED[:12]}; a row "
        "was inserted or replaced here"]


def test_a_forged_row_with_a_made_up_hash_is_caught(store):
    unguard(store, "insert")
    last = row(store, 6)
    sql(store, "INSERT INTO events (id, time, kind, \"user\", study_uid, detail_json, prev_hash, row_hash)"
        " VALUES (7, :time, 'sign', 'mallory', '1.2.3', '{}', :prev, :hash)",
        time=stamp(store, datetime.now(timezone.utc)), prev=last["row_hash"], hash=FORGED)
    assert event_problems(store) == [
        "event 7: changed: its hash does not match its content (time, kind, user, study or detail edited, or a "
        "forged row); expected the hash it was written with",
        "event 7: inserted after the head: the head names event 6 as the last, the last stored is 7"]


@pytest.mark.parametrize("name", list(audit.SQLITE_TRIGGERS))
def test_a_dropped_trigger_alone_is_caught(sqlite_store, name):
    sql(sqlite_store, f"DROP TRIGGER {name}")
    assert problems(sqlite_store) == [f"trigger {name}: missing (dropped); expected: {audit.SQLITE_TRIGGERS[name]}"]


def test_a_trigger_recreated_to_do_nothing_is_caught(sqlite_store):
    sql(sqlite_store, "DROP TRIGGER events_no_delete",
        "CREATE TRIGGER events_no_delete BEFORE DELETE ON events WHEN 0 BEGIN SELECT RAISE(ABORT, 'no'); END")
    assert problems(sqlite_store)[0].startswith("trigger events_no_delete: changed to: CREATE TRIGGER events_no_delete"
                                                " BEFORE DELETE ON events WHEN 0")


def test_a_dropped_or_disabled_postgres_trigger_is_caught(postgres_url, tmp_path):
    with CaseStore(postgres_url, audit_key_file=tmp_path / "key") as opened:
        opened.log_event("login", "dr.a")
        sql(opened, "ALTER TABLE events DISABLE TRIGGER events_append_only",
            "DROP TRIGGER audit_head_no_delete ON audit_head")
        assert problems(opened) == ["trigger events_append_only: disabled; expected it as migration 0003 leaves it",
                                    "trigger audit_head_no_delete: missing (dropped); expected it as migration 0003 "
                                    "leaves it"]


def test_a_dropped_or_recreated_table_is_caught(store):
    sql(store, "DROP TABLE audit_head")
    found = problems(store)
    assert found[0] == "table audit_head: missing (dropped); expected the table of migration 0003"
    assert "audit head" not in " ".join(found) and event_problems(store) == []  # the chain itself is still checked
    sql(store, "CREATE TABLE events_copy AS SELECT id, \"time\", kind, \"user\", study_uid, detail_json FROM events",
        "DROP TABLE events", "ALTER TABLE events_copy RENAME TO events")
    found = problems(store)
    assert found[0] == ("table events: recreated without column(s) prev_hash, row_hash; expected id, time, kind, user,"
                        " study_uid, detail_json, prev_hash, row_hash")
    assert "trigger events_insert_in_order: missing" in " ".join(found)
    sql(store, "DROP TABLE events")
    assert problems(store)[0] == "table events: missing (dropped); expected the table of migration 0003"


# ------------------------------------------------------------- migrations
def _store_at_0002(url: str) -> None:
    """A store as revision 0002 left it, with three events written the way 0002's code wrote them."""
    engine = make_engine(url)  # creates a SQLite file's folder
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0002")
        for i, time in enumerate(["2025-12-01 10:00:00.000000", "2025-12-01 10:00:00.000000",
                                  "2025-11-30 09:00:00.250000"], start=1):  # an old clock stepped back
            conn.execute(text("INSERT INTO events (time, kind, \"user\", study_uid, detail_json) VALUES"
                              " (:time, 'ingest', 'importer', :study, :detail)"),
                         {"time": time + ("+00" if url.startswith("postgresql") else ""),
                          "study": None if i == 2 else f"9.{i}",
                          "detail": f'{{"added_instances": {i}, "z": "\\u00e9"}}'})
    engine.dispose()


def test_a_0002_store_is_upgraded_and_verifies(url, tmp_path):
    _store_at_0002(url)
    key = None if url.startswith("sqlite") else tmp_path / "pg.audit-key"
    with CaseStore(url, audit_key_file=key) as opened:
        report = opened.verify_audit()
        assert (report.intact, report.events, report.keyed) == (True, 3, True), report.problems
        assert {e["id"]: e["detail"] for e in opened.events()}[1] == {"added_instances": 1, "z": "é"}
        opened.log_event("login", "dr.a")  # the chain goes on from the migrated events
        assert opened.verify_audit().events == 4 and problems(opened) == []
        unguard(opened, "update")
        sql(opened, "UPDATE events SET \"user\" = 'mallory' WHERE id = 1")
        assert event_problems(opened)[0].startswith("event 1: changed")


def test_a_0002_store_migrated_without_a_key_is_reported_when_opened_with_one(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    _store_at_0002(url)
    engine = create_engine(url)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "head")  # Alembic's own way: no key, an unkeyed chain
    engine.dispose()
    with CaseStore(url) as opened:
        assert problems(opened) == [f"audit key: the trail was written with key id unkeyed, this key has id "
                                    f"{audit.key_id(opened._audit_key)}; expected the audit key file it was written "
                                    "with"]
