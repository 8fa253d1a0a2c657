"""Shared fixtures: no network, a fresh PostgreSQL database per run, and SQLite files.

Every test run is offline by construction: a socket connection to anything but loopback fails
the test. PostgreSQL tests use `FLASHTAG_TEST_DATABASE_URL` (default the local `test` database's
server); each pytest run creates its own database there and drops it at the end, so parallel runs
never share tables. Under CI (`CI=true`) an unreachable PostgreSQL is an error, not a skip.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine, make_url

from config.database import create_engine, normalize_url

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "real"

_real_connect = socket.socket.connect


def _is_local(address: Any) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _guarded_connect(self: socket.socket, address: Any) -> Any:
    if not _is_local(address):
        raise RuntimeError(f"tests must not reach the network (tried {address!r})")
    return _real_connect(self, address)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    return normalize_url(os.environ.get("FLASHTAG_TEST_DATABASE_URL", DEFAULT_PG))


@pytest.fixture(scope="session")
def pg_database(pg_server_url: str) -> Iterator[str]:
    """A PostgreSQL database of this run's own; dropped afterwards."""
    admin = create_engine(pg_server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text("select 1"))
    except Exception as exc:
        admin.dispose()
        if _in_ci():
            pytest.fail(f"PostgreSQL unreachable under CI at {pg_server_url}: {exc}")
        pytest.skip(f"PostgreSQL unreachable at {pg_server_url}: {exc}")
    name = f"flashtag_t_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(pg_server_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _reset(engine: Engine) -> None:
    from bot.schema import all_metadata

    for metadata in reversed(all_metadata()):
        metadata.drop_all(engine)
    for metadata in all_metadata():
        metadata.create_all(engine)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL with every table freshly created: once on SQLite, once on PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'flashtag.db'}"
    else:
        url = request.getfixturevalue("pg_database")
    engine = create_engine(url)
    _reset(engine)
    engine.dispose()
    return url


def _emptied(url: str) -> str:
    """`url`'s PostgreSQL database with nothing in it: its public schema dropped and made again."""
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database with no tables at all, for migrations to build: SQLite, then PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'migrated.db'}"
    return _emptied(request.getfixturevalue("pg_database"))


@pytest.fixture
def empty_pg_db(pg_database: str) -> str:
    """PostgreSQL only, with no tables at all (for what only PostgreSQL does)."""
    return _emptied(pg_database)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = create_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def pg_url(pg_database: str) -> str:
    """PostgreSQL only, every table freshly created (for concurrency tests)."""
    engine = create_engine(pg_database)
    _reset(engine)
    engine.dispose()
    return pg_database
