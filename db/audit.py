"""The audit trail's hash chain: the store's audit key, appending a chained event, and verifying the chain.

Each `events` row stores `prev_hash` (the previous event's `row_hash`; `GENESIS` for the first) and
`row_hash` = HMAC-SHA256(key, the JSON array [id, time ISO UTC, kind, user, study_uid, detail, prev_hash],
keys sorted). Changing, forging or deleting a row breaks the chain there, and without the key nobody
can compute a new one. The key is a secret file per store: `<db file>.audit-key` beside a SQLite
database (created mode 0600 on first use), or a path given to the store. A PostgreSQL store without
one gets an unkeyed SHA-256 chain, which anyone who can write the database can recompute.

Deleting the *last* rows leaves a valid shorter chain; the one-row table `audit_head` catches that. It
holds the last event's id and hash, the id of the key that wrote them, and `head_mac` = HMAC(key,
["audit_head", last_id, last_hash, key_id]), updated in each insert's transaction. Only the current
head's MAC is ever in the database, so moving the head back takes the key, or a copy of the database
from when that row was the last (restoring a backup looks like a truncation, and is one).

Triggers (migration 0003) refuse UPDATE and DELETE on `events`, an INSERT there that does not go above
the last id (so SQLite's INSERT OR REPLACE, and on SQLite one without an id) or is dated before the last
event, and a DELETE, second row or UPDATE of `audit_head` that does not name the last event. `verify`
checks that they are still there. Appends are serialised: SQLite writers take the write lock at BEGIN,
and on PostgreSQL `append` locks the head row first. Whoever holds both the database and the key can
still rewrite everything consistently.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.orm import Session

from db.models import AuditHead, Event, utcnow
from db.records import StoreError

GENESIS = "0" * 64  # the prev_hash of the first event
UNKEYED = "unkeyed"  # the key_id of a chain written without a key
KEY_BYTES = 32
SESSION_KEY = "medcm_audit_key"  # Session.info entry holding the store's key (None: unkeyed)
MAX_PROBLEMS = 100  # a wholesale rewrite would otherwise print one line per event
EVENT_COLUMNS = ("id", "time", "kind", "user", "study_uid", "detail_json", "prev_hash", "row_hash")
HEAD_COLUMNS = ("id", "last_id", "last_hash", "key_id", "head_mac")
# Untyped: verify reads the raw values, so that a garbled time or detail is a finding, not a crash.
_EVENTS = sa.table("events", *(sa.column(name) for name in EVENT_COLUMNS))

# The triggers as migration 0003 creates them (a copy: migrations must not import code that changes).
_APPEND_ONLY = "events: the audit trail is append-only; expected no UPDATE, DELETE or TRUNCATE"
_IN_ORDER = "events: the audit trail is append-only; expected an INSERT above the last id (no INSERT OR REPLACE)"
_NOT_BACKDATED = "events: back-dated INSERT; expected a time no earlier than the last event''s"
_HEAD = "audit_head: expected one row naming the last event and its hash; no DELETE, INSERT or other UPDATE"


def _sqlite_trigger(name: str, before: str, message: str, when: str = "") -> str:
    when = f" WHEN {when}" if when else ""
    return f"CREATE TRIGGER {name} BEFORE {before}{when} BEGIN SELECT RAISE(ABORT, '{message}'); END"


SQLITE_TRIGGERS = {name: _sqlite_trigger(name, *spec) for name, spec in {
    "events_no_update": ("UPDATE ON events", _APPEND_ONLY),
    "events_no_delete": ("DELETE ON events", _APPEND_ONLY),
    "events_insert_in_order": ("INSERT ON events", _IN_ORDER, "NEW.id <= (SELECT max(id) FROM events)"),
    "events_no_backdating": ("INSERT ON events", _NOT_BACKDATED,
                             "NEW.time < (SELECT time FROM events ORDER BY id DESC LIMIT 1)"),
    "audit_head_no_delete": ("DELETE ON audit_head", _HEAD),
    "audit_head_single": ("INSERT ON audit_head", _HEAD, "EXISTS (SELECT 1 FROM audit_head)"),
    "audit_head_follows_events": ("UPDATE ON audit_head", _HEAD, "NEW.id IS NOT OLD.id"
                                  " OR NEW.last_id IS NOT (SELECT max(id) FROM events) OR (NEW.last_id IS NOT NULL"
                                  " AND NEW.last_hash IS NOT (SELECT row_hash FROM events WHERE id = NEW.last_id))"),
}.items()}
POSTGRES_TRIGGERS = ("events_append_only", "events_insert_in_order", "audit_head_no_delete",
                     "audit_head_follows_events")


# ------------------------------------------------------------------- the key
def default_key_file(url: str) -> Path | None:
    """`sqlite:///x/cases.db` → `x/cases.db.audit-key`; None for in-memory SQLite and other databases."""
    parsed = make_url(url)
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:") or parsed.query.get("mode") == "memory":
        return None
    path = Path(database.removeprefix("file:")).expanduser()  # file: URIs carry their options in the URL query
    return path.with_name(path.name + ".audit-key")


def load_or_create_key(path: str | Path) -> bytes:
    """The audit key in `path` (hex), created there (mode 0600) the first time.

    Raises:
        StoreError: the file exists but does not hold a hex key of at least 16 bytes.
    """
    path = Path(path).expanduser()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never replace an existing key
        except FileExistsError:
            pass  # another process created it first: use theirs
        else:
            with os.fdopen(fd, "w", encoding="ascii") as handle:
                handle.write(secrets.token_hex(KEY_BYTES) + "\n")
    text = path.read_text(encoding="ascii", errors="replace").strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < 16:
        raise StoreError(f"audit key {path}: got {len(text)} characters; expected at least 32 hex digits")
    return key


def store_key(url: str, key_file: str | Path | None = None) -> bytes | None:
    """The audit key of the store at `url`: from `key_file`, else beside a SQLite file, else a fresh one
    for an in-memory SQLite database (it lives as long as the data), else None (an unkeyed chain)."""
    key_file = key_file or default_key_file(url)
    if key_file is not None:
        return load_or_create_key(key_file)
    return secrets.token_bytes(KEY_BYTES) if make_url(url).get_backend_name() == "sqlite" else None


def key_id(key: bytes | None) -> str:
    """A public fingerprint of `key` (it reveals nothing of it), or `UNKEYED`."""
    return UNKEYED if key is None else _mac(key, b"medcm audit key id")[:16]


# ----------------------------------------------------------------- hashing
def _mac(key: bytes | None, data: bytes) -> str:
    return hashlib.sha256(data).hexdigest() if key is None else hmac.new(key, data, hashlib.sha256).hexdigest()


def _canonical(values: list[Any]) -> bytes:
    return json.dumps(values, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("ascii")


def row_hash(key: bytes | None, event_id: int, time: datetime, kind: str, user: str, study_uid: str | None,
             detail: Any, prev_hash: str) -> str:
    """The chain hash of one event (hex): HMAC-SHA256 with `key`, plain SHA-256 without one."""
    stamp = time.astimezone(timezone.utc).isoformat(timespec="microseconds")
    return _mac(key, _canonical([event_id, stamp, kind, user, study_uid, detail, prev_hash]))


def head_mac(key: bytes | None, last_id: int | None, last_hash: str, head_key_id: str) -> str:
    """The MAC of the head's values (hex)."""
    return _mac(key, _canonical(["audit_head", last_id, last_hash, head_key_id]))


# ------------------------------------------------------------------ append
def append(s: Session, key: bytes | None, kind: str, user: str, study_uid: str | None, detail: dict[str, Any]) -> None:
    """Append one event to the chain and move the head to it, inside the caller's transaction.

    Raises:
        StoreError: no head row, or a chain written with another key (a lost or swapped key file).
    """
    head = s.execute(sa.select(AuditHead.key_id).where(AuditHead.id == 1).with_for_update()).first()
    if head is None:
        raise StoreError("audit_head: no row; expected the one row migration 0003 creates (was it deleted?)")
    last = s.execute(sa.select(Event.id, Event.time, Event.row_hash).order_by(Event.id.desc()).limit(1)).first()
    mine = key_id(key)
    if last is not None and head.key_id != mine:
        raise StoreError(f"audit trail: written with key id {head.key_id}, this store's audit key has id {mine}; "
                         "expected the audit key file the trail was written with")
    time = utcnow()
    if last is not None and time < last.time:
        time = last.time  # a clock stepped back, or another host's runs ahead: keep the trail in order
    event_id, prev = (last.id + 1, last.row_hash) if last is not None else (1, GENESIS)
    detail = json.loads(json.dumps(detail))  # hash what the database gives back: tuples as lists, keys as strings
    digest = row_hash(key, event_id, time, kind, user, study_uid, detail, prev)
    s.execute(sa.insert(Event).values(id=event_id, time=time, kind=kind, user=user, study_uid=study_uid,
                                      detail_json=detail, prev_hash=prev, row_hash=digest))
    s.execute(sa.update(AuditHead).where(AuditHead.id == 1).values(
        last_id=event_id, last_hash=digest, key_id=mine, head_mac=head_mac(key, event_id, digest, mine)))


# ------------------------------------------------------------------ verify
@dataclass(frozen=True)
class AuditProblem:
    """One thing wrong with the audit trail: where (an event, a trigger, a table, the head) and why."""

    subject: str  # "event 12", "trigger events_no_delete", "table events", "audit head", "audit key"
    reason: str
    event_id: int | None = None

    def __str__(self) -> str:
        return f"{self.subject}: {self.reason}"


@dataclass(frozen=True)
class AuditReport:
    """What `verify` found: the number of events, the chain's head hash, and the problems (first bad row first)."""

    events: int
    head: str
    keyed: bool
    problems: tuple[AuditProblem, ...]

    @property
    def intact(self) -> bool:
        """No problem found."""
        return not self.problems

    def summary(self) -> str:
        """One line for an intact trail (what `medcm audit verify` prints)."""
        unkeyed = "" if self.keyed else (" (unkeyed SHA-256 chain: no audit key file was given, so whoever can "
                                         "write the database could recompute it)")
        return f"audit trail intact: {self.events} events, chain head {self.head[:16]}{unkeyed}"


def verify(s: Session, key: bytes | None) -> AuditReport:
    """Check the tables, the triggers, every event's hash and link, and the head; change nothing.

    Args:
        s: a Session (one transaction: a consistent snapshot).
        key: the store's audit key; None for an unkeyed chain.

    Returns:
        The report; its problems name the first bad row first (after any table, trigger or key problem).
    """
    connection = s.connection()
    problems = _schema_problems(connection)
    broken = {p.subject for p in problems}
    if "table events" in broken:
        return AuditReport(0, GENESIS, key is not None, tuple(problems))
    head = None if "table audit_head" in broken else connection.execute(
        sa.text("SELECT last_id, last_hash, key_id, head_mac FROM audit_head WHERE id = 1")).first()
    if head is None and "table audit_head" not in broken:
        problems.append(AuditProblem("audit head", "no row (deleted); expected the one row naming the last event"))
    if head is not None and head.key_id != key_id(key):  # then every row would mismatch: say why, once
        problems.append(AuditProblem("audit key", f"the trail was written with key id {head.key_id}, this key has id "
                                     f"{key_id(key)}; expected the audit key file it was written with"))
        count = connection.execute(sa.text("SELECT count(*) FROM events")).scalar_one()
        return AuditReport(count, str(head.last_hash), key is not None, tuple(problems))
    count, last_id, last_hash = _walk(connection, key, problems)
    if head is not None:
        _check_head(key, head, last_id, last_hash, problems)
    if len(problems) > MAX_PROBLEMS:
        more = AuditProblem("audit trail", f"{len(problems) - MAX_PROBLEMS} more problems not listed")
        problems = [*problems[:MAX_PROBLEMS], more]
    return AuditReport(count, last_hash, key is not None, tuple(problems))


def _schema_problems(connection: Connection) -> list[AuditProblem]:
    inspector = sa.inspect(connection)
    tables = set(inspector.get_table_names())
    problems = []
    for table, expected in (("events", EVENT_COLUMNS), ("audit_head", HEAD_COLUMNS)):
        if table not in tables:
            problems.append(AuditProblem(f"table {table}", "missing (dropped); expected the table of migration 0003"))
            continue
        missing = [c for c in expected if c not in {column["name"] for column in inspector.get_columns(table)}]
        if missing:
            problems.append(AuditProblem(f"table {table}", f"recreated without column(s) {', '.join(missing)}; "
                                         f"expected {', '.join(expected)}"))
    if connection.dialect.name == "sqlite":
        found = dict(connection.exec_driver_sql("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'").all())
        for name, sql in SQLITE_TRIGGERS.items():
            if name not in found:
                problems.append(AuditProblem(f"trigger {name}", f"missing (dropped); expected: {sql}"))
            elif " ".join(found[name].split()) != sql:
                problems.append(AuditProblem(f"trigger {name}", f"changed to: {found[name]}; expected: {sql}"))
    elif connection.dialect.name == "postgresql":  # present and enabled ('D': ALTER TABLE ... DISABLE TRIGGER)
        found = dict(connection.exec_driver_sql(
            "SELECT t.tgname, t.tgenabled FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid WHERE NOT"
            " t.tgisinternal AND c.relname IN ('events', 'audit_head') AND pg_table_is_visible(c.oid)").all())
        for name in POSTGRES_TRIGGERS:
            if found.get(name, "D") == "D":
                state = "disabled" if name in found else "missing (dropped)"
                problems.append(AuditProblem(f"trigger {name}", f"{state}; expected it as migration 0003 leaves it"))
    return problems


def _walk(connection: Connection, key: bytes | None, problems: list[AuditProblem]) -> tuple[int, int | None, str]:
    """Check every event's hash and its link to the one before, in id order; (count, last id, last hash)."""
    sqlite = connection.dialect.name == "sqlite"
    rows = connection.execute(sa.select(_EVENTS).order_by(_EVENTS.c.id).execution_options(yield_per=1000))
    count, prev_id, prev_hash = 0, None, GENESIS
    for row in rows:
        count += 1
        subject = f"event {row.id}"
        if row.prev_hash != prev_hash:
            first_missing = 1 if prev_id is None else prev_id + 1
            if row.id > first_missing:
                gap = str(first_missing) if row.id == first_missing + 1 else f"{first_missing}-{row.id - 1}"
                problems.append(AuditProblem(f"event {first_missing}", f"deleted: event(s) {gap} missing, and event "
                                             f"{row.id} does not link to the event before the gap", first_missing))
            else:
                before = "the chain's start" if prev_id is None else f"event {prev_id}'s hash {prev_hash[:12]}"
                problems.append(AuditProblem(subject, f"chain break: its previous hash {str(row.prev_hash)[:12]} is "
                                             f"not {before}; a row was inserted or replaced here", row.id))
        try:
            detail = json.loads(row.detail_json) if sqlite else row.detail_json  # PostgreSQL's driver parses JSON
            expected = row_hash(key, row.id, _utc(row.time), row.kind, row.user, row.study_uid, detail, row.prev_hash)
        except (AttributeError, TypeError, ValueError) as err:  # e.g. a NULL or garbled time
            problems.append(AuditProblem(subject, f"changed: its time or detail cannot be read ({err})", row.id))
        else:
            if expected != row.row_hash:
                problems.append(AuditProblem(subject, "changed: its hash does not match its content (time, kind, user, "
                                             "study or detail edited, or a forged row); expected the hash it was "
                                             "written with", row.id))
        prev_id, prev_hash = row.id, str(row.row_hash)
    return count, prev_id, prev_hash


def _utc(value: Any) -> datetime:
    # SQLite gives the stored text (UTC, no offset); PostgreSQL an aware datetime.
    time = datetime.fromisoformat(value) if isinstance(value, str) else value
    return time.replace(tzinfo=timezone.utc) if time.tzinfo is None else time.astimezone(timezone.utc)


def _check_head(key: bytes | None, head: Any, last_id: int | None, last_hash: str,
                problems: list[AuditProblem]) -> None:
    if head.last_id != last_id:
        deleted = last_id is None or (head.last_id is not None and head.last_id > last_id)
        first = ((last_id if deleted else head.last_id) or 0) + 1  # the first event past the shorter end
        what = "deleted" if deleted else "inserted after the head"
        problems.append(AuditProblem(f"event {first}", f"{what}: the head names event {head.last_id} as the last, "
                                     f"the last stored is {last_id}", first))
    elif head.last_hash != last_hash:
        problems.append(AuditProblem(f"event {last_id}", f"replaced: the head holds hash {str(head.last_hash)[:12]}"
                                     f" for it, the row {last_hash[:12]}", last_id))
    if head_mac(key, head.last_id, head.last_hash, head.key_id) != head.head_mac:
        problems.append(AuditProblem("audit head", "its MAC does not match its values (rewritten without the key); "
                                     "expected the MAC written with the last event"))
