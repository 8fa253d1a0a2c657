"""The ledger's tables: accounts, transfers and their legs.

The database enforces what it can on its own, so no code path (not even raw SQL) can break the
core rules:

- every amount is a positive integer of minor units; every balance column is non-negative;
- a buyer wallet (and a campaign's sales account) can never be overdrawn: the account row carries
  TigerBeetle-style running totals and a CHECK that debits (posted + pending) never exceed
  posted credits;
- a transfer's idempotency id (`ref`) is unique;
- a transfer has at most one debit leg and one credit leg, each carrying exactly the transfer's
  amount and currency (a composite foreign key onto the transfer), so its legs sum to zero;
- a leg's account is in the transfer's currency (a composite foreign key onto the account);
- only a purchase can be pending or voided; a pending transfer has an expiry and no resolution
  time, a settled one has its resolution time;
- on PostgreSQL, a statement that inserts legs must leave every transfer it touched with both
  legs (a statement-level trigger over the new rows);
- the ledger is append-only (triggers, on SQLite and PostgreSQL): no transfer, leg or account is
  ever deleted; a leg never changes; a transfer's ref, kind, currency, amount and times never
  change; a posted or voided transfer is final (only pending -> posted | voided); an account
  never changes its kind, owner or currency.

What the database cannot see (a transfer left with no legs at all, or with one leg on SQLite;
running totals that differ from the sums of the legs) is verified by `wallet.ledger.audit`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    Table,
    UniqueConstraint,
    event,
)
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.types import TypeDecorator

from config.database import new_metadata

metadata = new_metadata()

ACCOUNT_KINDS = ("wallet", "sales", "clearing")
TRANSFER_KINDS = ("topup", "cashout", "purchase", "refund")
TRANSFER_STATES = ("pending", "posted", "voided")
SIDES = ("debit", "credit")


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite stores naive UTC text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: the ledger stores UTC only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


# BIGINT ids on PostgreSQL, INTEGER (the rowid alias) on SQLite.
Id = BigInteger().with_variant(Integer(), "sqlite")

accounts = Table(
    "wallet_accounts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),
    # wallet: the buyer key "platform:account_id"; sales: the campaign id; clearing: "stripe".
    Column("owner", String(200), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("credits_posted", BigInteger, nullable=False, server_default="0"),
    Column("debits_posted", BigInteger, nullable=False, server_default="0"),
    Column("credits_pending", BigInteger, nullable=False, server_default="0"),
    Column("debits_pending", BigInteger, nullable=False, server_default="0"),
    Column("created_at", UtcDateTime, nullable=False),
    # Owner first: batch lookups by owner must probe this index, never scan by kind/currency.
    UniqueConstraint("owner", "currency", "kind"),
    UniqueConstraint("id", "currency", name="uq_wallet_accounts_id_currency"),
    CheckConstraint(_in("kind", ACCOUNT_KINDS), name="kind"),
    CheckConstraint("length(currency) = 3 AND upper(currency) = currency", name="currency"),
    CheckConstraint("length(owner) > 0", name="owner"),
    CheckConstraint(
        # "\\:" keeps SQLAlchemy from reading ":_" as a bind parameter.
        "kind <> 'wallet' OR (owner LIKE '_%\\:_%' AND owner NOT LIKE '% %')",
        name="buyer_key",
    ),
    CheckConstraint(
        "credits_posted >= 0 AND debits_posted >= 0 AND credits_pending >= 0 "
        "AND debits_pending >= 0",
        name="totals_non_negative",
    ),
    # The rule the whole wallet rests on: a buyer can never spend (or hold) more than was paid
    # in. The Stripe clearing account is the only one allowed to run a debit balance.
    CheckConstraint(
        "kind = 'clearing' OR debits_posted + debits_pending <= credits_posted",
        name="no_overdraft",
    ),
)

transfers = Table(
    "wallet_transfers",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("ref", String(200), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("state", String(16), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=True),
    Column("resolved_at", UtcDateTime, nullable=True),
    UniqueConstraint("ref"),
    UniqueConstraint("id", "amount", "currency", name="uq_wallet_transfers_id_amount_currency"),
    CheckConstraint("amount > 0", name="amount_positive"),
    CheckConstraint("length(ref) > 0", name="ref"),
    CheckConstraint(_in("kind", TRANSFER_KINDS), name="kind"),
    CheckConstraint(_in("state", TRANSFER_STATES), name="state"),
    CheckConstraint("state = 'posted' OR kind = 'purchase'", name="only_holds_pend"),
    CheckConstraint(
        "(state = 'pending' AND resolved_at IS NULL AND expires_at IS NOT NULL) "
        "OR (state <> 'pending' AND resolved_at IS NOT NULL)",
        name="resolution",
    ),
)
Index("ix_wallet_transfers_pending_expiry", transfers.c.state, transfers.c.expires_at)

legs = Table(
    "wallet_legs",
    metadata,
    Column("transfer_id", Id, primary_key=True),
    Column("side", String(6), primary_key=True),
    Column("account_id", Id, nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    CheckConstraint(_in("side", SIDES), name="side"),
    CheckConstraint("amount > 0", name="amount_positive"),
    ForeignKeyConstraint(
        ["transfer_id", "amount", "currency"],
        [transfers.c.id, transfers.c.amount, transfers.c.currency],
        name="fk_wallet_legs_transfer_amount",
    ),
    ForeignKeyConstraint(
        ["account_id", "currency"],
        [accounts.c.id, accounts.c.currency],
        name="fk_wallet_legs_account_currency",
    ),
)
Index("ix_wallet_legs_account_id", legs.c.account_id)


# -- append-only triggers -----------------------------------------------------------------------
# CHECK constraints see one row; these see the change. Alembic's autogenerate does not emit
# triggers: a migration creating these tables must call `install_triggers(op.get_bind())`.

_TRANSFER_CHANGED = (
    "OLD.state <> 'pending' OR NEW.ref <> OLD.ref OR NEW.kind <> OLD.kind "
    "OR NEW.currency <> OLD.currency OR NEW.amount <> OLD.amount "
    "OR NEW.created_at <> OLD.created_at "
    "OR NEW.expires_at IS NOT OLD.expires_at"
)
_ACCOUNT_CHANGED = "NEW.kind <> OLD.kind OR NEW.owner <> OLD.owner OR NEW.currency <> OLD.currency"
_GUARDS = (
    # (trigger, table, event, condition or None, message)
    (
        "wallet_transfers_final",
        "wallet_transfers",
        "UPDATE",
        _TRANSFER_CHANGED,
        "wallet_transfers: only a pending transfer may change, and only its state",
    ),
    (
        "wallet_transfers_kept",
        "wallet_transfers",
        "DELETE",
        None,
        "wallet_transfers: the ledger is append-only",
    ),
    ("wallet_legs_fixed", "wallet_legs", "UPDATE", None, "wallet_legs: legs never change"),
    ("wallet_legs_kept", "wallet_legs", "DELETE", None, "wallet_legs: the ledger is append-only"),
    (
        "wallet_accounts_fixed",
        "wallet_accounts",
        "UPDATE",
        _ACCOUNT_CHANGED,
        "wallet_accounts: kind, owner and currency never change",
    ),
    (
        "wallet_accounts_kept",
        "wallet_accounts",
        "DELETE",
        None,
        "wallet_accounts: the ledger is append-only",
    ),
)


def _sqlite_ddl() -> list[str]:
    out = []
    for name, table, op, condition, message in _GUARDS:
        when = f" WHEN {condition}" if condition else ""
        out.append(
            f"CREATE TRIGGER IF NOT EXISTS {name} BEFORE {op} ON {table} FOR EACH ROW{when} "
            f"BEGIN SELECT RAISE(ABORT, '{message}'); END"
        )
    return out


def _pg_ddl() -> list[str]:
    out = [
        "CREATE OR REPLACE FUNCTION wallet_refuse() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN RAISE EXCEPTION USING ERRCODE = 'integrity_constraint_violation', "
        "MESSAGE = TG_ARGV[0]; END $$"
    ]
    for name, table, op, condition, message in _GUARDS:
        # IS NOT is SQLite's null-safe comparison; PostgreSQL spells it IS DISTINCT FROM.
        when = f" WHEN ({condition.replace(' IS NOT ', ' IS DISTINCT FROM ')})" if condition else ""
        out.append(f"DROP TRIGGER IF EXISTS {name} ON {table}")
        out.append(
            f"CREATE TRIGGER {name} BEFORE {op} ON {table} FOR EACH ROW{when} "
            f"EXECUTE FUNCTION wallet_refuse('{message}')"
        )
    # Double entry per statement: every statement that inserts legs must leave each transfer it
    # touched with one debit and one credit of its amount (the ledger writes both legs of a
    # transfer in one statement). Set-based, over the statement's new rows only.
    out.append(
        "CREATE OR REPLACE FUNCTION wallet_legs_balanced() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "DECLARE bad bigint; BEGIN "
        "SELECT l.transfer_id INTO bad FROM wallet_legs l "
        "WHERE l.transfer_id IN (SELECT DISTINCT transfer_id FROM new_legs) "
        "GROUP BY l.transfer_id "
        "HAVING count(*) <> 2 "
        "OR sum(CASE l.side WHEN 'credit' THEN l.amount ELSE -l.amount END) <> 0 LIMIT 1; "
        "IF bad IS NOT NULL THEN RAISE EXCEPTION USING "
        "ERRCODE = 'integrity_constraint_violation', "
        "MESSAGE = 'wallet_legs: transfer ' || bad || ' needs one debit and one credit leg'; "
        "END IF; RETURN NULL; END $$"
    )
    out.append("DROP TRIGGER IF EXISTS wallet_legs_balanced ON wallet_legs")
    out.append(
        "CREATE TRIGGER wallet_legs_balanced AFTER INSERT ON wallet_legs "
        "REFERENCING NEW TABLE AS new_legs FOR EACH STATEMENT "
        "EXECUTE FUNCTION wallet_legs_balanced()"
    )
    return out


def install_triggers(connection: Connection) -> None:
    """Create the append-only triggers (idempotent) on SQLite or PostgreSQL."""
    if connection.dialect.name == "sqlite":
        statements = _sqlite_ddl()
    elif connection.dialect.name == "postgresql":
        statements = _pg_ddl()
    else:
        return
    for statement in statements:
        connection.exec_driver_sql(statement)


def _after_create(_target: object, connection: Connection, **_kw: object) -> None:
    install_triggers(connection)


# `legs` is created last (it references the other two), so every guarded table exists by then.
event.listen(legs, "after_create", _after_create)
