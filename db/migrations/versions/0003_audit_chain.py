"""A hash chain over the audit trail (issue 18): `events.prev_hash`/`row_hash`, a one-row `audit_head`, triggers.

The stored events are chained in id order with the store's audit key, which `db.connect.migrate` passes
in `config.attributes["audit_key"]` (Alembic's own command line passes none: the chain is then unkeyed
SHA-256, and a keyed store reports "written with key id unkeyed"). The hashing is a copy of `db.audit`'s
at this revision, as a migration must not import code that changes; tests/db/test_audit_chain.py checks
that an upgraded store verifies.

New triggers refuse an INSERT into `events` that does not go above the last id (so SQLite's INSERT OR
REPLACE, which deletes without firing DELETE triggers) or is dated before the last event, and guard
`audit_head`. On SQLite, making the new columns NOT NULL recreates `events` ("move and copy"), which
drops 0002's triggers: they are dropped first and created again with the new ones, after every table
change (a trigger naming `events` must not exist while the table is renamed). On PostgreSQL 0002's
trigger is disabled for the backfill, inside this transaction.

Revision ID: 0003
Revises: 0002
Create Date: 2026-02-02

"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GENESIS = "0" * 64
APPEND_ONLY = "events: the audit trail is append-only; expected no UPDATE, DELETE or TRUNCATE"  # 0002's
IN_ORDER = "events: the audit trail is append-only; expected an INSERT above the last id (no INSERT OR REPLACE)"
NOT_BACKDATED = "events: back-dated INSERT; expected a time no earlier than the last event''s"
HEAD = "audit_head: expected one row naming the last event and its hash; no DELETE, INSERT or other UPDATE"
HEAD_FOLLOWS = ("NEW.id IS NOT OLD.id OR NEW.last_id IS NOT (SELECT max(id) FROM events) OR (NEW.last_id IS NOT NULL"
                " AND NEW.last_hash IS NOT (SELECT row_hash FROM events WHERE id = NEW.last_id))")
OLD_SQLITE_TRIGGERS = ("events_no_update", "events_no_delete")  # 0002's, recreated here
SQLITE_TRIGGERS = {  # name: (BEFORE what, message, WHEN condition)
    "events_no_update": ("UPDATE ON events", APPEND_ONLY, ""),
    "events_no_delete": ("DELETE ON events", APPEND_ONLY, ""),
    "events_insert_in_order": ("INSERT ON events", IN_ORDER, "NEW.id <= (SELECT max(id) FROM events)"),
    "events_no_backdating": ("INSERT ON events", NOT_BACKDATED,
                             "NEW.time < (SELECT time FROM events ORDER BY id DESC LIMIT 1)"),
    "audit_head_no_delete": ("DELETE ON audit_head", HEAD, ""),
    "audit_head_single": ("INSERT ON audit_head", HEAD, "EXISTS (SELECT 1 FROM audit_head)"),
    "audit_head_follows_events": ("UPDATE ON audit_head", HEAD, HEAD_FOLLOWS),
}
POSTGRES = [
    "CREATE FUNCTION events_insert_in_order() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
    f" IF NEW.id <= (SELECT max(id) FROM events) THEN RAISE EXCEPTION '{IN_ORDER} (got id %)', NEW.id; END IF;"
    ' IF NEW."time" < (SELECT "time" FROM events ORDER BY id DESC LIMIT 1) THEN'
    f" RAISE EXCEPTION '{NOT_BACKDATED} (got %)', NEW.\"time\"; END IF; RETURN NEW; END $$",
    "CREATE TRIGGER events_insert_in_order BEFORE INSERT ON events FOR EACH ROW"
    " EXECUTE FUNCTION events_insert_in_order()",
    "CREATE FUNCTION audit_head_guard() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
    f" IF TG_OP <> 'UPDATE' THEN RAISE EXCEPTION '{HEAD} (got %)', TG_OP; END IF;"  # NEW is unset for those
    f" IF {HEAD_FOLLOWS.replace(' IS NOT ', ' IS DISTINCT FROM ')} THEN"
    f" RAISE EXCEPTION '{HEAD} (got last_id %)', NEW.last_id; END IF; RETURN NEW; END $$",
    "CREATE TRIGGER audit_head_no_delete BEFORE DELETE OR TRUNCATE ON audit_head FOR EACH STATEMENT"
    " EXECUTE FUNCTION audit_head_guard()",
    "CREATE TRIGGER audit_head_follows_events BEFORE UPDATE ON audit_head FOR EACH ROW"
    " EXECUTE FUNCTION audit_head_guard()",
]


# ------------------------------------------------- db.audit's hashing at 0003
def _mac(key: bytes | None, values: list[Any]) -> str:
    data = json.dumps(values, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("ascii")
    return hashlib.sha256(data).hexdigest() if key is None else hmac.new(key, data, hashlib.sha256).hexdigest()


def _key_id(key: bytes | None) -> str:
    return "unkeyed" if key is None else hmac.new(key, b"medcm audit key id", hashlib.sha256).hexdigest()[:16]


def _utc_iso(value: Any) -> str:
    # SQLite gives the stored text (UTC, no offset); PostgreSQL an aware datetime.
    time = datetime.fromisoformat(value) if isinstance(value, str) else value
    time = time.replace(tzinfo=timezone.utc) if time.tzinfo is None else time.astimezone(timezone.utc)
    return time.isoformat(timespec="microseconds")


def _chain(key: bytes | None) -> tuple[int | None, str]:
    """Fill prev_hash and row_hash of every event in id order; the last id and hash."""
    bind = op.get_bind()
    sqlite = bind.dialect.name == "sqlite"
    events = sa.table("events", *(sa.column(c) for c in ("id", "time", "kind", "user", "study_uid", "detail_json",
                                                         "prev_hash", "row_hash")))
    query = sa.select(events.c.id, events.c.time, events.c.kind, events.c.user, events.c.study_uid,
                      events.c.detail_json).order_by(events.c.id)
    last_id, prev, updates = None, GENESIS, []
    for row in bind.execute(query).all():  # events are small rows: even a million fit in memory
        detail = json.loads(row.detail_json) if sqlite else row.detail_json  # PostgreSQL's driver parses JSON
        digest = _mac(key, [row.id, _utc_iso(row.time), row.kind, row.user, row.study_uid, detail, prev])
        updates.append({"b_id": row.id, "b_prev": prev, "b_hash": digest})
        last_id, prev = row.id, digest
    if updates:
        bind.execute(events.update().where(events.c.id == sa.bindparam("b_id"))
                     .values(prev_hash=sa.bindparam("b_prev"), row_hash=sa.bindparam("b_hash")), updates)
    return last_id, prev


def upgrade() -> None:
    """Add the chain columns, chain the stored events, create `audit_head` and the triggers."""
    postgres = op.get_bind().dialect.name == "postgresql"
    config = op.get_context().config
    key = config.attributes.get("audit_key") if config is not None else None
    if postgres:
        op.execute("ALTER TABLE events DISABLE TRIGGER events_append_only")
    else:
        for name in OLD_SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER {name}")
    op.add_column("events", sa.Column("prev_hash", sa.String(length=64), nullable=True))
    op.add_column("events", sa.Column("row_hash", sa.String(length=64), nullable=True))
    last_id, last_hash = _chain(key)
    with op.batch_alter_table("events") as batch:  # SQLite: recreates the table; PostgreSQL: ALTER COLUMN
        batch.alter_column("prev_hash", existing_type=sa.String(length=64), nullable=False)
        batch.alter_column("row_hash", existing_type=sa.String(length=64), nullable=False)
    op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("last_id", sa.Integer(), nullable=True),
        sa.Column("last_hash", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.String(length=16), nullable=False),
        sa.Column("head_mac", sa.String(length=64), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_audit_head_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_head")),
    )
    key_id = _key_id(key)
    head = sa.table("audit_head", *(sa.column(c) for c in ("id", "last_id", "last_hash", "key_id", "head_mac")))
    op.execute(head.insert().values(id=1, last_id=last_id, last_hash=last_hash, key_id=key_id,
                                    head_mac=_mac(key, ["audit_head", last_id, last_hash, key_id])))
    if postgres:
        op.execute("ALTER TABLE events ENABLE TRIGGER events_append_only")
        for sql in POSTGRES:
            op.execute(sql)
        return
    for name, (before, message, when) in SQLITE_TRIGGERS.items():
        condition = f" WHEN {when}" if when else ""
        op.execute(f"CREATE TRIGGER {name} BEFORE {before}{condition} BEGIN SELECT RAISE(ABORT, '{message}'); END")


def downgrade() -> None:
    """Drop the triggers, `audit_head` and the chain columns (0002's triggers stay)."""
    if op.get_bind().dialect.name == "postgresql":
        for table, trigger in (("events", "events_insert_in_order"), ("audit_head", "audit_head_no_delete"),
                               ("audit_head", "audit_head_follows_events")):
            op.execute(f"DROP TRIGGER {trigger} ON {table}")
        op.execute("DROP FUNCTION events_insert_in_order()")
        op.execute("DROP FUNCTION audit_head_guard()")
        op.drop_table("audit_head")
        op.drop_column("events", "row_hash")
        op.drop_column("events", "prev_hash")
        return
    for name in SQLITE_TRIGGERS:
        op.execute(f"DROP TRIGGER {name}")
    op.drop_table("audit_head")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("row_hash")
        batch.drop_column("prev_hash")
    for name in OLD_SQLITE_TRIGGERS:
        before, message, _ = SQLITE_TRIGGERS[name]
        op.execute(f"CREATE TRIGGER {name} BEFORE {before} BEGIN SELECT RAISE(ABORT, '{message}'); END")
