"""Database engines and sessions, shared by every package.

SQLite (the embedded default) runs in WAL mode with foreign keys on and a busy timeout, so a web
process and a worker can share one file. PostgreSQL goes through psycopg 3
(`postgresql+psycopg://`). Each package keeps its own table metadata built on `new_metadata()`,
so the wallet never needs the orders models and the orders never need the outbox.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from types import TracebackType
from typing import Any
from urllib.parse import quote

from sqlalchemy import MetaData, event
from sqlalchemy import create_engine as _create_engine
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def new_metadata() -> MetaData:
    """A MetaData with flashtag's constraint naming convention (stable names for migrations)."""
    return MetaData(naming_convention=NAMING_CONVENTION)


def normalize_url(url: str) -> str:
    """Accept `postgres://` and `postgresql://` URLs (as hosts hand them out) and use psycopg 3."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


def is_postgres(session: Session) -> bool:
    """Whether `session` talks to PostgreSQL (set-based statements differ by dialect)."""
    return session.get_bind().dialect.name == "postgresql"


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


log = logging.getLogger(__name__)

# When a commit leaves more than this many pages in the write-ahead log, that commit copies them
# back into the database file and syncs it (a checkpoint), before it returns. SQLite's default is
# 1,000 pages (4 MB). 1,000 buyers who come in no order change about a thousand scattered
# pages of the buyers' index, so at the default nearly every batch paid for a checkpoint and its
# fsync. At 16,000 (64 MB) the log absorbs several batches, a page changed by several of them is
# copied once, and a `WalCheckpointer` thread, where one runs, does the copying off the writer's
# path.
WAL_AUTOCHECKPOINT_PAGES = 16_000


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
    # Once checkpointed, a log that grew past this is cut back to it, not kept at its largest.
    cursor.execute(f"PRAGMA journal_size_limit={WAL_AUTOCHECKPOINT_PAGES * 4096}")
    cursor.close()


def _null(_value: None) -> None:
    return None


def _bind_none_as_null() -> None:
    """Make the sqlite3 driver bind None as NULL without its adaptation search.

    The driver binds an int, a float or a str as it is, but tries to adapt every other value,
    None included: a look-up of registered adapters and of `__adapt__` and `__conform__`, about
    0.3 us each time. A storm's reservation row holds four or five NULLs (reason, allocation,
    hold expiry, payment), so that search cost about a third of the driver's share of its
    insert. A registered adapter for None is found by the first look-up. It applies to every
    sqlite3 connection of the process, and binds None exactly as before."""
    sqlite3.register_adapter(type(None), _null)


def _sqlite_begin(conn: Any) -> None:
    # Take the write lock at BEGIN, so two writers queue on busy_timeout instead of failing
    # with "database is locked" when a read transaction tries to upgrade.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def create_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for `url`, configured for flashtag's transactions."""
    url = normalize_url(url)
    if make_url(url).get_backend_name() == "sqlite":
        _bind_none_as_null()
        engine = _create_engine(url, connect_args={"timeout": 30}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite's own transaction handling is disabled so BEGIN IMMEDIATE is ours.
        event.listen(
            engine, "connect", lambda dbapi_conn, _rec: setattr(dbapi_conn, "isolation_level", None)
        )
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return _create_engine(url, **kwargs)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded objects usable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


class WalCheckpointer:
    """Checkpoints a SQLite database's write-ahead log from a thread of its own, every
    `interval` seconds, between `start()` and `stop()` (or in a `with` block).

    A passive checkpoint copies what no reader still needs into the database file and never
    blocks a writer or a reader; the writer's commits then seldom reach the log's limit
    (`WAL_AUTOCHECKPOINT_PAGES`), and their checkpoint and its fsync run beside them instead of
    inside them. The thread has its own connection (the sqlite3 module releases the interpreter
    lock while SQLite works). For PostgreSQL, or SQLite in memory, it does nothing.
    """

    def __init__(self, url: str, *, interval: float = 0.2) -> None:
        parsed = make_url(normalize_url(url))
        database = parsed.database or ""
        self.path = database if parsed.get_backend_name() == "sqlite" else ""
        if self.path == ":memory:" or self.path.startswith("file:"):
            self.path = ""
        if self.path:  # as SQLAlchemy resolves it when the engine is made
            self.path = os.path.abspath(self.path)
        self.interval = interval
        self.checkpoints = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.path and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name="sqlite-wal-checkpointer", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> WalCheckpointer:
        self.start()
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _connect(self) -> sqlite3.Connection | None:
        try:
            # Read-write, never create: a database that is not there yet is not ours to make.
            return sqlite3.connect(
                f"file:{quote(self.path)}?mode=rw", timeout=30, isolation_level=None, uri=True
            )
        except sqlite3.Error:
            log.debug("%s cannot be opened yet to checkpoint it", self.path, exc_info=True)
            return None

    def _run(self) -> None:
        connection = self._connect()
        try:
            while not self._stop.wait(self.interval):
                if connection is None:  # the database did not exist yet: try again
                    connection = self._connect()
                    continue
                try:
                    busy, _, _ = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error:  # the file went away, say: try again next time
                    log.debug("checkpoint of %s failed", self.path, exc_info=True)
                    continue
                if not busy:  # busy: another checkpoint was running; next time, then
                    self.checkpoints += 1
        finally:
            if connection is not None:
                connection.close()
