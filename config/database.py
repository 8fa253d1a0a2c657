"""Database engines and sessions, shared by every package.

SQLite (the embedded default) runs in WAL mode with foreign keys on and a busy timeout, so a web
process and a worker can share one file. PostgreSQL goes through psycopg 3
(`postgresql+psycopg://`). Each package keeps its own table metadata built on `new_metadata()`,
so the wallet never needs the orders models and the orders never need the outbox.
"""

from __future__ import annotations

from typing import Any

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


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_begin(conn: Any) -> None:
    # Take the write lock at BEGIN, so two writers queue on busy_timeout instead of failing
    # with "database is locked" when a read transaction tries to upgrade.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def create_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for `url`, configured for flashtag's transactions."""
    url = normalize_url(url)
    if make_url(url).get_backend_name() == "sqlite":
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
