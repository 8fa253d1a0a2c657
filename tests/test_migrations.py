"""`flashtag db upgrade` builds exactly the schema the code declares, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import MetaData
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from bot.bench import reset_tables
from bot.cli import app
from bot.schema import alembic_config, all_metadata, upgrade
from config.database import create_engine


def test_upgrade_matches_the_declared_tables(empty_db: str) -> None:
    runner = CliRunner()
    for _ in range(2):  # a second upgrade is a no-op, as a release step must be
        result = runner.invoke(app, ["db", "upgrade", "--db", empty_db])
        assert result.exit_code == 0, result.output

    engine = create_engine(empty_db)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        declared = MetaData()
        for metadata in all_metadata():
            for table in metadata.tables.values():
                table.to_metadata(declared)
        diff = compare_metadata(context, declared)
    engine.dispose()
    assert diff == [], f"migrations and tables disagree: {diff}"


def test_a_database_made_by_replay_can_be_upgraded_later(tmp_path: Path) -> None:
    storm = tmp_path / "storm.jsonl"
    url = f"sqlite:///{tmp_path / 'replayed.db'}"
    runner = CliRunner()
    made = runner.invoke(app, ["bench", "storm", "--posts", "200", "--write", str(storm)])
    assert made.exit_code == 0, made.output
    replayed = runner.invoke(
        app,
        [
            "replay",
            str(storm),
            "--brand",
            "xiaomi",
            "--shift-to-open",
            "--db",
            url,
            "--no-progress",
        ],
    )
    assert replayed.exit_code == 0, replayed.output
    upgraded = runner.invoke(app, ["db", "upgrade", "--db", url])
    assert upgraded.exit_code == 0, upgraded.output


def _lz4_supported(url: str) -> bool:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            if (conn.dialect.server_version_info or ()) < (14,):
                return False
            conn.exec_driver_sql("CREATE TEMP TABLE lz4_probe (x TEXT COMPRESSION lz4)")
        return True
    except DBAPIError:
        return False
    finally:
        engine.dispose()


def _replies_compression(url: str) -> str:
    engine = create_engine(url)
    with engine.connect() as conn:
        method = conn.exec_driver_sql(
            "SELECT attcompression FROM pg_attribute "
            "WHERE attrelid = 'outbox_bundles'::regclass AND attname = 'replies'"
        ).scalar_one()
    engine.dispose()
    return str(method)


@pytest.mark.postgres
def test_bundles_are_compressed_with_lz4_on_postgres(empty_pg_db: str) -> None:
    # Built by migrations, then down one step and up again, then straight from the metadata.
    if not _lz4_supported(empty_pg_db):
        pytest.skip("this PostgreSQL has no lz4 (older than 14, or built without it)")
    upgrade(empty_pg_db)
    assert _replies_compression(empty_pg_db) == "l"
    command.downgrade(alembic_config(empty_pg_db), "0004")
    assert _replies_compression(empty_pg_db) == ""
    upgrade(empty_pg_db)
    assert _replies_compression(empty_pg_db) == "l"
    reset_tables(empty_pg_db)
    assert _replies_compression(empty_pg_db) == "l"
