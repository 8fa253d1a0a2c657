"""The database layer: SQLite pragmas, URL handling, and writers that queue instead of failing."""

from __future__ import annotations

import threading
from pathlib import Path

from sqlalchemy import text

from config.database import create_engine, normalize_url


def test_sqlite_runs_with_wal_and_foreign_keys(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'f.db'}")
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    engine.dispose()


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
