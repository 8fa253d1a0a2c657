"""The database itself refuses a bad ledger row, even from raw SQL that bypasses `wallet.ledger`."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DataError, IntegrityError

from wallet import ledger
from wallet.tables import accounts, legs, transfers

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
FAN = "mastodon:42"


@pytest.fixture
def funded(engine: Engine) -> Engine:
    """A wallet with 10.00 EUR, 3.00 of it held for campaign mi2."""
    from sqlalchemy.orm import Session

    with Session(engine) as s:
        ledger.credit_topup(s, buyer=FAN, amount=1000, currency="EUR", stripe_ref="cs_1", at=T0)
        ledger.hold(
            s,
            buyer=FAN,
            campaign_id="mi2",
            amount=300,
            currency="EUR",
            ref="h1",
            expires_at=T0.replace(hour=13),
            at=T0,
        )
        s.commit()
    return engine


def _ids(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT kind, id FROM wallet_accounts")).all()
        tid = conn.execute(text("SELECT id FROM wallet_transfers WHERE ref = 'cs_1'")).scalar_one()
    return {**{kind: id_ for kind, id_ in rows}, "topup": tid}


def _rejects(engine: Engine, sql: str, **params: object) -> None:
    # PostgreSQL reports an over-long code as a DataError, SQLite as a failed CHECK.
    with pytest.raises((IntegrityError, DataError)), engine.begin() as conn:
        conn.execute(text(sql), params)


NOW = "2026-11-25 12:00:00"


def test_wallet_cannot_be_overdrawn_by_raw_updates(funded: Engine) -> None:
    wallet = _ids(funded)["wallet"]
    # Spend more than was paid in, or hold more than is left: the row's CHECK refuses both.
    _rejects(funded, "UPDATE wallet_accounts SET debits_posted = 1001 WHERE id = :id", id=wallet)
    _rejects(
        funded, "UPDATE wallet_accounts SET debits_pending = 701 + 300 WHERE id = :id", id=wallet
    )
    _rejects(funded, "UPDATE wallet_accounts SET credits_posted = 200 WHERE id = :id", id=wallet)
    _rejects(funded, "UPDATE wallet_accounts SET debits_pending = -1 WHERE id = :id", id=wallet)
    # Exactly spending everything is fine.
    with funded.begin() as conn:
        conn.execute(
            text("UPDATE wallet_accounts SET debits_posted = 700 WHERE id = :id"), {"id": wallet}
        )
        conn.execute(
            text("UPDATE wallet_accounts SET debits_posted = 0 WHERE id = :id"), {"id": wallet}
        )


def test_only_clearing_may_run_a_debit_balance(funded: Engine) -> None:
    ids = _ids(funded)
    assert ids["clearing"]
    with funded.connect() as conn:
        clearing = conn.execute(
            text("SELECT credits_posted - debits_posted FROM wallet_accounts WHERE kind='clearing'")
        ).scalar_one()
    assert clearing == -1000
    _rejects(funded, "UPDATE wallet_accounts SET debits_posted = 1 WHERE id = :id", id=ids["sales"])


def test_accounts_must_be_well_formed(funded: Engine) -> None:
    row = "INSERT INTO wallet_accounts (kind, owner, currency, created_at) VALUES "
    _rejects(funded, row + f"('wallet', 'no-platform', 'EUR', '{NOW}')")
    _rejects(funded, row + f"('wallet', 'mastodon:1 2', 'EUR', '{NOW}')")
    _rejects(funded, row + f"('piggybank', 'x:1', 'EUR', '{NOW}')")
    _rejects(funded, row + f"('wallet', 'x:1', 'eur', '{NOW}')")
    _rejects(funded, row + f"('wallet', 'x:1', 'EURO', '{NOW}')")
    _rejects(funded, row + f"('wallet', '{FAN}', 'EUR', '{NOW}')")  # one wallet per currency


def test_transfers_must_be_well_formed(funded: Engine) -> None:
    row = (
        "INSERT INTO wallet_transfers (ref, kind, currency, amount, state, created_at, "
        "expires_at, resolved_at) VALUES "
    )
    _rejects(funded, row + f"('cs_1', 'topup', 'EUR', 5, 'posted', '{NOW}', NULL, '{NOW}')")
    _rejects(funded, row + f"('z0', 'topup', 'EUR', 0, 'posted', '{NOW}', NULL, '{NOW}')")
    _rejects(funded, row + f"('z1', 'topup', 'EUR', -5, 'posted', '{NOW}', NULL, '{NOW}')")
    _rejects(funded, row + f"('z2', 'gift', 'EUR', 5, 'posted', '{NOW}', NULL, '{NOW}')")
    # Only a purchase is ever pending or voided; a pending one has an expiry, a final one a time.
    _rejects(funded, row + f"('z3', 'topup', 'EUR', 5, 'pending', '{NOW}', '{NOW}', NULL)")
    _rejects(funded, row + f"('z4', 'topup', 'EUR', 5, 'voided', '{NOW}', NULL, '{NOW}')")
    _rejects(funded, row + f"('z5', 'purchase', 'EUR', 5, 'pending', '{NOW}', NULL, NULL)")
    _rejects(funded, row + f"('z6', 'purchase', 'EUR', 5, 'posted', '{NOW}', NULL, NULL)")
    _rejects(funded, row + f"('z7', 'purchase', 'EUR', 5, 'settled', '{NOW}', NULL, '{NOW}')")


def test_legs_must_sum_to_zero_in_the_transfer_currency(funded: Engine) -> None:
    ids = _ids(funded)
    leg = "INSERT INTO wallet_legs (transfer_id, side, account_id, amount, currency) VALUES "
    t, wallet = ids["topup"], ids["wallet"]
    # A third leg, a leg of another amount, a leg in another currency, a zero leg.
    _rejects(funded, leg + f"({t}, 'credit', {wallet}, 1000, 'EUR')")
    _rejects(funded, leg + f"({t}, 'debit', {wallet}, 999, 'EUR')")
    _rejects(funded, leg + f"({t}, 'debit', {wallet}, 1000, 'USD')")
    _rejects(funded, leg + f"({t}, 'sideways', {wallet}, 1000, 'EUR')")
    _rejects(funded, leg + f"({t + 1000}, 'debit', {wallet}, 1000, 'EUR')")
    # A leg on an account of another currency than its transfer.
    with funded.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO wallet_accounts (kind, owner, currency, created_at) "
                f"VALUES ('wallet', 'x:9', 'USD', '{NOW}')"
            )
        )
        usd = conn.execute(text("SELECT id FROM wallet_accounts WHERE owner = 'x:9'")).scalar_one()
        conn.execute(
            text(
                "INSERT INTO wallet_transfers (ref, kind, currency, amount, state, created_at, "
                f"resolved_at) VALUES ('bare', 'topup', 'EUR', 1000, 'posted', '{NOW}', '{NOW}')"
            )
        )
        bare = conn.execute(text("SELECT id FROM wallet_transfers WHERE ref='bare'")).scalar_one()
    _rejects(funded, leg + f"({bare}, 'credit', {usd}, 1000, 'EUR')")
    _rejects(funded, leg + f"({bare}, 'credit', {usd}, 1000, 'USD')")


def test_the_ledger_is_append_only(funded: Engine) -> None:
    ids = _ids(funded)
    t = ids["topup"]
    _rejects(funded, "DELETE FROM wallet_legs WHERE transfer_id = :id", id=t)
    _rejects(funded, "DELETE FROM wallet_transfers WHERE ref = 'h1'")
    _rejects(funded, "DELETE FROM wallet_accounts WHERE kind = 'sales'")
    _rejects(funded, "UPDATE wallet_legs SET side = 'debit' WHERE transfer_id = :id", id=t)
    _rejects(funded, "UPDATE wallet_accounts SET owner = 'x:2' WHERE kind = 'wallet'")
    _rejects(funded, "UPDATE wallet_accounts SET currency = 'USD' WHERE kind = 'sales'")
    # A settled transfer is final; a pending hold may only change state.
    _rejects(funded, "UPDATE wallet_transfers SET state = 'voided' WHERE ref = 'cs_1'")
    _rejects(funded, "UPDATE wallet_transfers SET ref = 'cs_2' WHERE ref = 'cs_1'")
    _rejects(funded, "UPDATE wallet_transfers SET expires_at = NULL WHERE ref = 'h1'")
    _rejects(funded, "UPDATE wallet_transfers SET kind = 'refund' WHERE ref = 'h1'")
    from sqlalchemy.orm import Session

    with Session(funded) as s:
        ledger.void_hold(s, "h1", at=T0)
        s.commit()
    _rejects(funded, "UPDATE wallet_transfers SET state = 'pending' WHERE ref = 'h1'")
    _rejects(
        funded,
        "UPDATE wallet_transfers SET state = 'posted', resolved_at = created_at WHERE ref = 'h1'",
    )


def test_amounts_on_a_transfer_cannot_drift_from_its_legs(funded: Engine) -> None:
    t = _ids(funded)["topup"]
    _rejects(funded, "UPDATE wallet_transfers SET amount = 5 WHERE id = :id", id=t)
    _rejects(funded, "UPDATE wallet_legs SET amount = 5 WHERE transfer_id = :id", id=t)


_ONE_LEGGED = [
    "INSERT INTO wallet_transfers (ref, kind, currency, amount, state, created_at, resolved_at) "
    f"VALUES ('one-legged', 'topup', 'EUR', 5, 'posted', '{NOW}', '{NOW}')",
    "INSERT INTO wallet_legs (transfer_id, side, account_id, amount, currency) "
    "SELECT id, 'credit', :wallet, 5, 'EUR' FROM wallet_transfers WHERE ref = 'one-legged'",
]


def test_a_transfer_cannot_be_given_one_leg_on_postgres(funded: Engine) -> None:
    if funded.dialect.name != "postgresql":
        pytest.skip("SQLite has no statement-level triggers; the audit catches it there")
    wallet = _ids(funded)["wallet"]
    with funded.begin() as conn:
        conn.execute(text(_ONE_LEGGED[0]))
    _rejects(funded, _ONE_LEGGED[1], wallet=wallet)


def test_audit_reports_what_constraints_cannot_see(funded: Engine) -> None:
    """A transfer without legs, or totals that disagree with the legs, are caught by the audit."""
    from sqlalchemy.orm import Session

    with funded.begin() as conn:
        conn.execute(text(_ONE_LEGGED[0].replace("one-legged", "no-legs")))
    with Session(funded) as s:
        problems = ledger.audit(s)
    assert problems == ["transfer no-legs: missing its debit or credit leg"]
    if funded.dialect.name == "sqlite":
        wallet = _ids(funded)["wallet"]
        with funded.begin() as conn:
            conn.execute(text(_ONE_LEGGED[0]))
            conn.execute(text(_ONE_LEGGED[1]), {"wallet": wallet})
        with Session(funded) as s:
            problems = ledger.audit(s)
        assert any("one-legged: missing its debit or credit leg" in p for p in problems)
        assert any("wallet:mastodon:42 EUR: totals 1000/0/0/300 differ" in p for p in problems)
    with funded.begin() as conn:
        conn.execute(
            text(
                "UPDATE wallet_accounts SET credits_posted = credits_posted + 1 WHERE kind='wallet'"
            )
        )
    with Session(funded) as s:
        problems = ledger.audit(s)
    assert any(
        "wallet:mastodon:42 EUR: totals 1001/0/0/300 differ from its legs" in p for p in problems
    )
    assert any("EUR: posted balances sum to 1" in p for p in problems)


def test_tables_are_the_ones_named() -> None:
    assert {accounts.name, transfers.name, legs.name} == {
        "wallet_accounts",
        "wallet_transfers",
        "wallet_legs",
    }


def test_db_upgrade_installs_the_ledger_guards(empty_db: str) -> None:
    """Alembic's autogenerate does not emit triggers: the migration must install them."""
    from typer.testing import CliRunner

    from bot.cli import app
    from config.database import create_engine

    url = empty_db
    result = CliRunner().invoke(app, ["db", "upgrade", "--db", url])
    assert result.exit_code == 0, result.output
    engine = create_engine(url)
    from sqlalchemy.orm import Session

    with Session(engine) as s:
        ledger.credit_topup(s, buyer=FAN, amount=100, currency="EUR", stripe_ref="cs", at=T0)
        s.commit()
    _rejects(engine, "DELETE FROM wallet_transfers")
    _rejects(engine, "UPDATE wallet_transfers SET state = 'voided'")
    engine.dispose()
