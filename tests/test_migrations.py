"""`flashtag db upgrade` builds exactly the schema the code declares, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import MetaData
from typer.testing import CliRunner

from bot.cli import app
from bot.schema import all_metadata
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
