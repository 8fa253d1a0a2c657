"""The database layer: SQLite pragmas, URL handling, and writers that queue instead of failing."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from waiting import wait_for

from config.database import (
    WAL_AUTOCHECKPOINT_PAGES,
    WalCheckpointer,
    create_engine,
    normalize_url,
)


def test_sqlite_runs_with_wal_and_foreign_keys(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'f.db'}")
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA wal_autocheckpoint")).scalar() == WAL_AUTOCHECKPOINT_PAGES
        assert conn.execute(text("PRAGMA journal_size_limit")).scalar() == (
            WAL_AUTOCHECKPOINT_PAGES * 4096
        )
    engine.dispose()


def test_sqlite_binds_none_as_null_through_a_registered_adapter(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'f.db'}")
    # Found by the driver's first look-up, not by its search for `__adapt__` and `__conform__`.
    assert (type(None), sqlite3.PrepareProtocol) in sqlite3.adapters
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (a TEXT, b INTEGER)"))
        conn.exec_driver_sql("INSERT INTO t VALUES (?, ?)", [(None, 1), ("x", None)])
        rows = conn.exec_driver_sql("SELECT typeof(a), typeof(b) FROM t ORDER BY rowid").all()
    assert rows == [("null", "integer"), ("text", "null")]
    engine.dispose()


def _write_pages(url: str, rows: int) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS filler (n INTEGER, pad TEXT)"))
        conn.execute(
            text(
                "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < :rows) "
                "INSERT INTO filler SELECT n, printf('%.500c', 'x') FROM s"
            ),
            {"rows": rows},
        )
    engine.dispose()


def test_the_checkpointer_copies_the_log_into_the_database_beside_the_writer(
    tmp_path: Path,
) -> None:
    path = tmp_path / "c.db"
    url = f"sqlite:///{path}"
    _write_pages(url, 1)
    # A connection left open keeps the log: when the last one closes, SQLite checkpoints on its
    # own, and this test would prove nothing.
    held = sqlite3.connect(path, isolation_level=None)
    held.execute("SELECT count(*) FROM filler").fetchall()
    _write_pages(url, 2_000)  # about 250 pages, far below WAL_AUTOCHECKPOINT_PAGES
    before = path.stat().st_size
    with WalCheckpointer(url, interval=0.05) as checkpointer:
        wait_for(
            "the log copied into the database file",
            lambda: path.stat().st_size > before + 500 * 1_000,
            timeout=20,
            show=lambda: (before, path.stat().st_size, checkpointer.checkpoints),
        )
    assert checkpointer.checkpoints >= 1
    held.close()


def test_the_checkpointer_never_creates_a_database_and_waits_for_it(tmp_path: Path) -> None:
    path = tmp_path / "not here yet.db"
    with WalCheckpointer(f"sqlite:///{path}", interval=0.01) as checkpointer:
        time.sleep(0.1)
        assert not path.exists()
        assert checkpointer.checkpoints == 0
        _write_pages(f"sqlite:///{path}", 1)  # now it is there: the thread opens it
        wait_for("a checkpoint", lambda: checkpointer.checkpoints > 0, timeout=10)


def test_the_checkpointer_resolves_a_relative_path_where_it_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert WalCheckpointer("sqlite:///relative.db").path == str(tmp_path / "relative.db")


def test_the_checkpointer_does_nothing_for_postgres_or_memory() -> None:
    for url in ("postgresql://u@h/db", "sqlite://", "sqlite:///:memory:"):
        with WalCheckpointer(url) as checkpointer:
            assert checkpointer.path == ""
        assert checkpointer.checkpoints == 0


def test_postgres_urls_use_psycopg3() -> None:
    assert normalize_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("sqlite:///x.db") == "sqlite:///x.db"


def test_postgres_connects_through_psycopg(pg_database: str) -> None:
    engine = create_engine(pg_database)
    with engine.connect() as conn:
        assert conn.dialect.driver == "psycopg"
        assert conn.execute(text("select 1")).scalar() == 1
    engine.dispose()


def test_two_sqlite_writers_queue_rather_than_fail(tmp_path: Path) -> None:
    """The write lock is taken at BEGIN, so concurrent read-modify-write loses nothing."""
    url = f"sqlite:///{tmp_path / 'w.db'}"
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("create table counter (n integer not null)"))
        conn.execute(text("insert into counter values (0)"))

    def bump() -> None:
        for _ in range(50):
            with engine.begin() as conn:
                n = conn.execute(text("select n from counter")).scalar_one()
                conn.execute(text("update counter set n = :n"), {"n": n + 1})

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with engine.connect() as conn:
        assert conn.execute(text("select n from counter")).scalar_one() == 200
    engine.dispose()
