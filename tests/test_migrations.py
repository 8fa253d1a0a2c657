"""`flashtag db upgrade` builds exactly the schema the code declares, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import MetaData, func, insert, inspect, select
from sqlalchemy.exc import DBAPIError, IntegrityError
from typer.testing import CliRunner

from bot.bench import reset_tables
from bot.cli import app
from bot.schema import alembic_config, all_metadata, upgrade
from config.database import create_engine
from orders.tables import transitions


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


def _checks(url: str) -> dict[tuple[str, str], str]:
    """Every named CHECK constraint of the database, by (table, name), as the database has it."""
    engine = create_engine(url)
    try:
        found = inspect(engine)
        return {
            (table, check["name"]): " ".join(check["sqltext"].split())
            for table in found.get_table_names()
            for check in found.get_check_constraints(table)
            if check["name"]
        }
    finally:
        engine.dispose()


def _add_transition(url: str, to_state: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(
                insert(transitions).values(
                    reservation_id=1,
                    from_state="waitlisted",
                    to_state=to_state,
                    at=datetime(2012, 9, 5, 12, tzinfo=UTC),
                    cause="test",
                )
            )
    finally:
        engine.dispose()


REWRITTEN_CHECKS = {
    ("order_reservations", "ck_order_reservations_state"),
    ("order_reservations", "ck_order_reservations_payment"),
    ("order_reservations", "ck_order_reservations_allocated_has_stock"),
    ("order_reservations", "ck_order_reservations_confirmed_paid"),
    ("order_transitions", "ck_order_transitions_to_state"),
    ("wallet_accounts", "ck_wallet_accounts_kind"),
    ("wallet_transfers", "ck_wallet_transfers_kind"),
    ("wallet_transfers", "ck_wallet_transfers_state"),
    ("wallet_legs", "ck_wallet_legs_side"),
    ("outbox_messages", "ck_outbox_messages_state_known"),
    ("outbox_messages", "ck_outbox_messages_visibility_known"),
}


def _lists(check: str) -> bool:
    """Whether a CHECK's text tests a list (PostgreSQL shows `x IN (...)` as `x = ANY (...)`
    and `x NOT IN (...)` as `x <> ALL (...)`)."""
    return any(form in check for form in (" IN (", "= ANY (", "<> ALL ("))


def test_checks_without_in_lists_migrate_both_ways(empty_db: str) -> None:
    # 0006 writes the hot tables' CHECKs as comparisons: after it they are the declared
    # tables' own, before it the IN lists of 0001; rows already stored are kept, and the
    # rewritten constraints still refuse what they refused.
    upgrade(empty_db, "0005")
    before = _checks(empty_db)
    _add_transition(empty_db, "expired")

    upgrade(empty_db)
    after = _checks(empty_db)
    assert after.keys() == before.keys()
    assert {key for key in after if after[key] != before[key]} == REWRITTEN_CHECKS
    assert all(_lists(before[key]) and not _lists(after[key]) for key in REWRITTEN_CHECKS)
    _add_transition(empty_db, "confirmed")
    with pytest.raises(IntegrityError):
        _add_transition(empty_db, "lost")
    engine = create_engine(empty_db)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(transitions)).scalar_one() == 2
    engine.dispose()

    command.downgrade(alembic_config(empty_db), "0005")
    assert _checks(empty_db) == before
    upgrade(empty_db)
    assert _checks(empty_db) == after
    reset_tables(empty_db)  # straight from the declared tables
    assert _checks(empty_db) == after
