"""Write the CHECK constraints of the hot tables as comparisons, not `IN (...)` lists.

SQLite builds a lookup table for an `IN` list of more than two constants each time a statement
runs, and a batch insert runs its statement once per row: the reservations' constraints cost
about 6 us a row that way. `(state = 'a' OR state = 'b')` allows and refuses exactly the same
values (NULL passes both), so no row is checked again:

- SQLite: the table definitions in `sqlite_schema` are edited in place, the procedure SQLite
  documents for changes that leave the stored rows valid (ALTER TABLE, "Making Other Kinds Of
  Table Schema Changes"). Rebuilding the tables would copy every reservation, and on a
  database with foreign keys on it cannot drop a referenced table.
- PostgreSQL: each constraint is dropped and added again, in the same transaction.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 18:30:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_STATES = ("awaiting_payment", "confirmed", "waitlisted", "cancelled", "expired", "rejected")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return "(" + " OR ".join(f"{column} = {v!r}" for v in values) + ")"


# (table, constraint, text before, text after), the texts as they are at each revision: first
# the constraints that say more than "one of these", then those that say only that.
CHECKS = (
    (
        "order_reservations",
        "ck_order_reservations_payment",
        "payment IS NULL OR payment IN ('held', 'posted', 'voided', 'refunded')",
        "payment IS NULL OR " + _one_of("payment", ("held", "posted", "voided", "refunded")),
    ),
    (
        "order_reservations",
        "ck_order_reservations_allocated_has_stock",
        "state NOT IN ('awaiting_payment', 'confirmed') OR allocated_at IS NOT NULL",
        "(state <> 'awaiting_payment' AND state <> 'confirmed') OR allocated_at IS NOT NULL",
    ),
    (
        "order_reservations",
        "ck_order_reservations_confirmed_paid",
        "state <> 'confirmed' OR payment IN ('held', 'posted')",
        "state <> 'confirmed' OR " + _one_of("payment", ("held", "posted")),
    ),
    *(
        (table, f"ck_{table}_{name}", _in(column, values), _one_of(column, values))
        for table, name, column, values in (
            ("order_reservations", "state", "state", _STATES),
            ("order_transitions", "to_state", "to_state", _STATES),
            ("wallet_accounts", "kind", "kind", ("wallet", "sales", "clearing")),
            ("wallet_transfers", "kind", "kind", ("topup", "cashout", "purchase", "refund")),
            ("wallet_transfers", "state", "state", ("pending", "posted", "voided")),
            ("wallet_legs", "side", "side", ("debit", "credit")),
            ("outbox_messages", "state_known", "state", ("queued", "sending", "sent", "failed")),
            (
                "outbox_messages",
                "visibility_known",
                "visibility",
                ("public", "unlisted", "private", "direct"),
            ),
        )
    ),
)


def _rewrite_sqlite(swaps: list[tuple[str, str, str, str]]) -> None:
    """Swap each constraint's text in its table's definition; the whole edit is one change of
    the schema (its version goes up once, so every connection reads the new definitions)."""
    bind = op.get_bind()
    definitions: dict[str, str] = {}
    for table, name, old, new in swaps:
        sql = definitions.get(table)
        if sql is None:
            sql = bind.exec_driver_sql(
                "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = ?", (table,)
            ).scalar_one()
        before = f"CONSTRAINT {name} CHECK ({old})"
        if sql.count(before) != 1:
            raise RuntimeError(f"{table}: constraint {name} is not as the revision before left it")
        definitions[table] = sql.replace(before, f"CONSTRAINT {name} CHECK ({new})")
    version = bind.exec_driver_sql("PRAGMA schema_version").scalar_one()
    bind.exec_driver_sql("PRAGMA writable_schema = ON")
    try:
        for table, sql in definitions.items():
            bind.exec_driver_sql(
                "UPDATE sqlite_schema SET sql = ? WHERE type = 'table' AND name = ?", (sql, table)
            )
        bind.exec_driver_sql(f"PRAGMA schema_version = {int(version) + 1}")
    finally:
        bind.exec_driver_sql("PRAGMA writable_schema = OFF")


def _rewrite(swaps: list[tuple[str, str, str, str]]) -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rewrite_sqlite(swaps)
        return
    for table, name, _, new in swaps:
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT {name}")
        op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {name} CHECK ({new})")


def upgrade() -> None:
    _rewrite(list(CHECKS))


def downgrade() -> None:
    _rewrite([(table, name, new, old) for table, name, old, new in CHECKS])
