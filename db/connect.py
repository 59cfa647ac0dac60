"""Connecting to the case store's database and migrating it to the newest schema; `Database` holds the connection.

SQLite gets per-connection settings (foreign keys, WAL, a busy timeout) and SQLAlchemy, not the
sqlite3 driver, emits BEGIN: the driver's legacy mode runs DDL and SELECTs outside any transaction,
so migrations would not be atomic and reads would not be repeatable. Other databases (PostgreSQL)
are used as they come.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

import db.audit as audit
from db.records import StoreError

log = logging.getLogger(__name__)


@contextmanager
def _quiet_alembic() -> Iterator[None]:
    # Alembic logs its routine steps at INFO on every open (and "non-transactional DDL", untrue
    # here): keep them out of an application's INFO output.
    logger = logging.getLogger("alembic")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


with _quiet_alembic():  # importing Alembic logs an INFO line per built-in plugin
    from alembic import command
    from alembic.config import Config
    from alembic.migration import MigrationContext

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
BUSY_TIMEOUT_MS = 15_000
# Execution option marking a connection that will write: SQLite then takes the write lock at BEGIN,
# so two writers queue on busy_timeout instead of one failing when it upgrades a read lock.
WRITE_OPTION = "medcm_write"
_Open = TypeVar("_Open", bound="Database")


def make_engine(url: str) -> Engine:
    """An engine for `url`, with the SQLite settings above; creates a SQLite file's parent folder."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url)
    database = parsed.database or ""
    if database in ("", ":memory:") or parsed.query.get("mode") == "memory":
        # One shared connection: each new connection to an in-memory database is an empty database.
        engine = create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
    else:
        if not database.startswith("file:"):
            path = Path(database).expanduser()
            path.parent.mkdir(parents=True, exist_ok=True)
            _create_private(path)
        engine = create_engine(url)
    event.listen(engine, "connect", _sqlite_connect)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


def _create_private(path: Path) -> None:
    """Create a missing SQLite file readable by its owner only: it holds patient data, and SQLite gives its
    -wal and -shm files the database file's mode. An existing file keeps the mode its owner gave it."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        pass


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # the driver emits no BEGIN; _sqlite_begin does
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")  # first: WAL below may wait for a lock
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer (UI reads during ingest)
    cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    write = connection.get_execution_options().get(WRITE_OPTION, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def alembic_config(connection: Connection | None = None, audit_key: bytes | None = None) -> Config:
    """The Alembic configuration of the case store (no alembic.ini needed).

    Args:
        connection: run migrations over this connection, inside its transaction.
        audit_key: the store's audit key, for migrations that chain audit events (None: unkeyed).

    Returns:
        A `Config` for `alembic.command` functions.
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    config.attributes["audit_key"] = audit_key
    return config


def migrate(engine: Engine, revision: str = "head", audit_key: bytes | None = None) -> None:
    """Upgrade the database to `revision` in one transaction (nothing to do when it is there already).

    Args:
        engine: from `make_engine`.
        revision: an Alembic revision id, or "head".
        audit_key: the store's audit key (`db.audit.store_key`); migration 0003 chains the stored events with it.

    Raises:
        StoreError: the migrated data violate a foreign key (SQLite).
    """
    with engine.execution_options(**{WRITE_OPTION: True}).connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            # Batch migrations drop and recreate tables that others reference; with foreign keys
            # on, that would cascade or fail. Only possible outside a transaction, hence raw.
            _raw(connection, "PRAGMA foreign_keys=OFF")
        try:
            with connection.begin(), _quiet_alembic():
                before = MigrationContext.configure(connection).get_current_heads()
                command.upgrade(alembic_config(connection, audit_key), revision)
                after = MigrationContext.configure(connection).get_current_heads()
                if sqlite and after != before:  # a full scan: only after a migration actually ran
                    _check_foreign_keys(connection)
            if after != before:
                # Creating a new store is routine; upgrading one that holds data is worth a line.
                log.log(logging.INFO if before else logging.DEBUG, "case store schema: %s -> %s", before, after)
        finally:
            if sqlite:
                _raw(connection, "PRAGMA foreign_keys=ON")


def _raw(connection: Connection, sql: str) -> None:
    connection.connection.driver_connection.execute(sql)


def _check_foreign_keys(connection: Connection) -> None:
    bad = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if bad:
        table, rowid, parent = bad[0][0], bad[0][1], bad[0][2]
        raise StoreError(
            f"migration: {len(bad)} rows violate foreign keys, e.g. {table} row {rowid} → {parent}; expected none"
        )


class Database:
    """An open database at a SQLAlchemy URL, migrated to the newest schema; the base of `db.store.CaseStore`.

    Subclasses (and the method groups `CaseStore` is built from) run each public method as one
    `_session` transaction; its Session carries the audit key (`db.audit`), which `db.write.log` chains with.

    Args:
        url: a SQLAlchemy URL, e.g. "sqlite:///cases.db".

    Raises:
        StoreError: `url` is not a database URL, or `audit_key_file` does not hold a key.
    """

    # The audit key file (`db.audit.store_key`); a class attribute, so that `CaseStore(url, audit_key_file=...)`
    # can set it before the method groups' `__init__(url)` chain reaches this one. None: the default.
    audit_key_file: str | Path | None = None

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            self._engine = make_engine(url)
        except ArgumentError as err:
            raise StoreError(f"url {url!r}: {err}; expected e.g. sqlite:///cases.db") from None
        self._writer = self._engine.execution_options(**{WRITE_OPTION: True})
        self._closed = False
        try:
            self._audit_key = audit.store_key(url, self.audit_key_file)
            migrate(self._engine, audit_key=self._audit_key)
        except BaseException:
            self._engine.dispose()
            raise

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._engine.url.render_as_string(hide_password=True)!r})"

    def __enter__(self: _Open) -> _Open:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the database connections; the store cannot be used afterwards."""
        self._closed = True
        self._engine.dispose()

    @contextmanager
    def _session(self, write: bool = False) -> Iterator[Session]:
        # The one place a Session is opened: one transaction, committed on success, else rolled back.
        if self._closed:
            raise StoreError(f"{self!r}: is closed; expected an open store")
        info = {audit.SESSION_KEY: self._audit_key}  # what db.write.log chains events with
        with Session(self._writer if write else self._engine, info=info) as s, s.begin():
            yield s
