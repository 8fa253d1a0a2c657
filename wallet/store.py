"""Set-based reads and writes of ledger rows: the few statements a batch costs.

Internal to the wallet: `wallet.ledger` validates requests and decides; this module looks
accounts and transfers up by the thousand, locks accounts in the ledger's order, inserts
transfers with their legs, and moves the accounts' running totals. PostgreSQL gets one text
parameter per column, split server-side (`string_to_array`, `unnest`); SQLite gets the
driver's `executemany` and `json_each`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    String,
    and_,
    any_,
    bindparam,
    case,
    cast,
    func,
    literal_column,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session, aliased

from config.database import is_postgres
from wallet.errors import LedgerError, TransferConflict
from wallet.tables import accounts, legs, transfers

# Bind-parameter budget per statement: SQLite allows 32766, psycopg 65535.
_CHUNK = 10_000
SEP = "\x1f"  # the ASCII unit separator: never part of a valid ref, buyer key or campaign id
_T = TypeVar("_T")


def chunks(items: Sequence[_T], size: int = _CHUNK) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def member(
    session: Session, column: ColumnElement[Any], values: Iterable[str | int]
) -> list[ColumnElement[bool]]:
    """``column IN values`` for thousands of values, as few conditions as the backend allows.

    PostgreSQL gets one ``= ANY(string_to_array(...))`` over a single text parameter (cheap to
    send, no bind-parameter limit); SQLite gets ``IN (SELECT value FROM json_each(?))``. Every
    column looked up this way leads a unique index, so the plan is an index probe per key even
    before the table has statistics (a bulk-loaded, never-analyzed table looks tiny to the
    planner).
    """
    wanted = sorted(set(values), key=str)
    if not wanted:
        return []
    if is_postgres(session):
        joined = SEP.join(str(v) for v in wanted)
        array: ColumnElement[Any] = func.string_to_array(bindparam(None, joined, type_=String), SEP)
        if isinstance(wanted[0], int):
            array = cast(array, ARRAY(BigInteger))
        return [column == any_(array)]
    keys = func.json_each(bindparam(None, json.dumps(wanted), type_=String))
    return [column.in_(select(literal_column("value")).select_from(keys))]


def find_accounts(
    session: Session, kind: str, owners: Iterable[str], currency: str
) -> dict[str, int]:
    found: dict[str, int] = {}
    for members in member(session, accounts.c.owner, owners):
        rows = session.execute(
            select(accounts.c.owner, accounts.c.id).where(
                accounts.c.kind == kind, accounts.c.currency == currency, members
            )
        )
        found.update({owner: id_ for owner, id_ in rows})
    return found


def ensure_accounts(
    session: Session, kind: str, owners: Iterable[str], currency: str, at: datetime
) -> dict[str, int]:
    """Ids of the accounts, created (race-free, ON CONFLICT DO NOTHING) where missing."""
    wanted = sorted(set(owners))
    found = find_accounts(session, kind, wanted, currency)
    missing = [o for o in wanted if o not in found]
    if missing:
        ins = pg_insert(accounts) if is_postgres(session) else sqlite_insert(accounts)
        stmt = ins.on_conflict_do_nothing(index_elements=["owner", "currency", "kind"])
        for chunk in chunks(missing, 2_000):
            session.execute(
                stmt,
                [{"kind": kind, "owner": o, "currency": currency, "created_at": at} for o in chunk],
            )
        found.update(find_accounts(session, kind, missing, currency))
    return found


def lock(session: Session, ids: Iterable[int]) -> dict[int, Row[Any]]:
    """Lock the account rows and read their totals: wallets first, then sales accounts, then the
    clearing account, each by id (PostgreSQL locks rows in the order the sort returns them).

    Wallets come first because a caller may touch a wallet before it knows the campaign (a
    top-up, then settling that buyer's orders); the shared sales and clearing rows come last,
    so a transaction never holds one while it waits for a wallet.
    """
    out: dict[int, Row[Any]] = {}
    order = case((accounts.c.kind == "wallet", 0), (accounts.c.kind == "sales", 1), else_=2)
    for members in member(session, accounts.c.id, ids):
        stmt = (
            select(
                accounts.c.id,
                accounts.c.kind,
                accounts.c.credits_posted,
                accounts.c.debits_posted,
                accounts.c.credits_pending,
                accounts.c.debits_pending,
            )
            .where(members)
            .order_by(order, accounts.c.id)
        )
        if is_postgres(session):
            stmt = stmt.with_for_update()
        out.update({row.id: row for row in session.execute(stmt)})
    return out


def available_of(row: Row[Any]) -> int:
    return int(row.credits_posted - row.debits_posted - row.debits_pending)


@dataclass(slots=True)
class Delta:
    credits_posted: int = 0
    debits_posted: int = 0
    credits_pending: int = 0
    debits_pending: int = 0


def unnest_arrays(columns: Sequence[tuple[str, str]]) -> str:
    """``unnest`` over one text parameter per column, split on the unit separator ('' = NULL).

    One string per column is far cheaper to send than a driver-adapted array of 50,000 items.
    """
    return ", ".join(
        f"CAST(string_to_array(:{name}, chr(31), '') AS {sql_type}[])" for name, sql_type in columns
    )


_PG_APPLY = text(
    f"""
    UPDATE wallet_accounts AS a SET
        credits_posted = a.credits_posted + v.cp,
        debits_posted = a.debits_posted + v.dp,
        credits_pending = a.credits_pending + v.cpn,
        debits_pending = a.debits_pending + v.dpn
    FROM unnest({unnest_arrays([(c, "BIGINT") for c in ("id", "cp", "dp", "cpn", "dpn")])})
        AS v(id, cp, dp, cpn, dpn)
    WHERE a.id = v.id
      AND (a.kind = 'clearing'
           OR a.debits_posted + v.dp + a.debits_pending + v.dpn <= a.credits_posted + v.cp)
    RETURNING a.id
    """
)
# Numbered parameters: ?1 id, ?2 credits_posted, ?3 debits_posted, ?4 credits_pending,
# ?5 debits_pending (deltas).
_SQLITE_APPLY = """
    UPDATE wallet_accounts SET
        credits_posted = credits_posted + ?2,
        debits_posted = debits_posted + ?3,
        credits_pending = credits_pending + ?4,
        debits_pending = debits_pending + ?5
    WHERE id = ?1
      AND (kind = 'clearing' OR debits_posted + ?3 + debits_pending + ?5 <= credits_posted + ?2)
"""


def apply(session: Session, deltas: Mapping[int, Delta]) -> None:
    """Move the running totals of many accounts in one statement, never past an overdraft.

    Callers lock and check first, so the guard failing means a bug or a writer that bypassed
    the locks; the transaction must then be rolled back, which raising ensures.
    """
    ids = sorted(deltas)
    if not ids:
        return
    if is_postgres(session):
        params = {
            "id": joined(ids),
            "cp": joined(deltas[i].credits_posted for i in ids),
            "dp": joined(deltas[i].debits_posted for i in ids),
            "cpn": joined(deltas[i].credits_pending for i in ids),
            "dpn": joined(deltas[i].debits_pending for i in ids),
        }
        changed = len(session.execute(_PG_APPLY, params).all())
    else:
        rows = [
            (
                i,
                deltas[i].credits_posted,
                deltas[i].debits_posted,
                deltas[i].credits_pending,
                deltas[i].debits_pending,
            )
            for i in ids
        ]
        changed = session.connection().exec_driver_sql(_SQLITE_APPLY, rows).rowcount
    if changed != len(ids):
        raise LedgerError(
            f"ledger totals moved on {changed} of {len(ids)} accounts: an account would have been"
            " overdrawn outside the ledger's locks; roll back"
        )


@dataclass(frozen=True, slots=True)
class NewTransfer:
    ref: str
    kind: str
    currency: str
    amount: int
    debit: int  # account ids
    credit: int
    state: str
    at: datetime
    expires_at: datetime | None


def existing(session: Session, refs: Sequence[str]) -> dict[str, Row[Any]]:
    """Transfers already recorded under these refs, with their debit and credit accounts."""
    debit = aliased(legs, name="debit")
    credit = aliased(legs, name="credit")
    out: dict[str, Row[Any]] = {}
    for members in member(session, transfers.c.ref, refs):
        stmt = (
            select(
                transfers.c.id,
                transfers.c.ref,
                transfers.c.kind,
                transfers.c.currency,
                transfers.c.amount,
                transfers.c.state,
                transfers.c.expires_at,
                debit.c.account_id.label("debit_id"),
                credit.c.account_id.label("credit_id"),
            )
            .outerjoin(debit, and_(debit.c.transfer_id == transfers.c.id, debit.c.side == "debit"))
            .outerjoin(
                credit, and_(credit.c.transfer_id == transfers.c.id, credit.c.side == "credit")
            )
            .where(members)
        )
        out.update({row.ref: row for row in session.execute(stmt)})
    return out


def same(row: Row[Any], new: NewTransfer) -> bool:
    return (row.kind, row.currency, row.amount, row.debit_id, row.credit_id) == (
        new.kind,
        new.currency,
        new.amount,
        new.debit,
        new.credit,
    )


def conflict(row: Row[Any], new: NewTransfer) -> TransferConflict:
    return TransferConflict(
        new.ref,
        f"recorded {row.kind} of {row.amount} {row.currency} "
        f"(accounts {row.debit_id}->{row.credit_id}), asked {new.kind} of {new.amount} "
        f"{new.currency} (accounts {new.debit}->{new.credit})",
    )


_PG_INSERT_TRANSFERS = text(
    f"""
    INSERT INTO wallet_transfers
        (ref, kind, currency, amount, state, created_at, expires_at, resolved_at)
    SELECT * FROM unnest({
        unnest_arrays(
            [
                ("ref", "VARCHAR"),
                ("kind", "VARCHAR"),
                ("currency", "VARCHAR"),
                ("amount", "BIGINT"),
                ("state", "VARCHAR"),
                ("created_at", "TIMESTAMPTZ"),
                ("expires_at", "TIMESTAMPTZ"),
                ("resolved_at", "TIMESTAMPTZ"),
            ]
        )
    })
    RETURNING id, ref
    """
)
_PG_INSERT_LEGS = text(
    f"""
    INSERT INTO wallet_legs (transfer_id, side, account_id, amount, currency)
    SELECT * FROM unnest({
        unnest_arrays(
            [
                ("transfer_id", "BIGINT"),
                ("side", "VARCHAR"),
                ("account_id", "BIGINT"),
                ("amount", "BIGINT"),
                ("currency", "VARCHAR"),
            ]
        )
    })
    """
)


def joined(values: Iterable[str | int]) -> str:
    return SEP.join(map(str, values))


def joined_times(values: Iterable[datetime | None]) -> str:
    """Datetimes as ISO text ('' for NULL); a batch mostly repeats a few, so each is rendered
    once."""
    rendered: dict[datetime | None, str] = {None: ""}

    def render(value: datetime | None) -> str:
        text_ = rendered.get(value)
        if text_ is None:
            assert value is not None
            text_ = rendered[value] = value.isoformat()
        return text_

    return SEP.join(map(render, values))


def insert_transfers(session: Session, new: Sequence[NewTransfer]) -> dict[str, int]:
    """Insert transfers and their two legs (a few statements per batch); the caller moves the
    account totals."""
    if not new:
        return {}
    ids: dict[str, int] = {}
    if is_postgres(session):
        for chunk in chunks(new, 50_000):
            params = {
                "ref": joined(t.ref for t in chunk),
                "kind": joined(t.kind for t in chunk),
                "currency": joined(t.currency for t in chunk),
                "amount": joined(t.amount for t in chunk),
                "state": joined(t.state for t in chunk),
                "created_at": joined_times(t.at for t in chunk),
                "expires_at": joined_times(t.expires_at for t in chunk),
                "resolved_at": joined_times(None if t.state == "pending" else t.at for t in chunk),
            }
            ids.update({ref: id_ for id_, ref in session.execute(_PG_INSERT_TRANSFERS, params)})
            legs_of = [(ids[t.ref], t) for t in chunk]
            session.execute(
                _PG_INSERT_LEGS,
                {
                    "transfer_id": joined([tid for tid, _ in legs_of] * 2),
                    "side": joined(["debit"] * len(legs_of) + ["credit"] * len(legs_of)),
                    "account_id": joined(
                        [t.debit for _, t in legs_of] + [t.credit for _, t in legs_of]
                    ),
                    "amount": joined([t.amount for _, t in legs_of] * 2),
                    "currency": joined([t.currency for _, t in legs_of] * 2),
                },
            )
        return ids
    # SQLite: one executemany per table straight to the driver (SQLAlchemy's per-row parameter
    # processing would cost more than the inserts); ids are read back by ref.
    conn = session.connection()
    stamp = sqlite_stamps()
    conn.exec_driver_sql(
        "INSERT INTO wallet_transfers (ref, kind, currency, amount, state, created_at, "
        "expires_at, resolved_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                t.ref,
                t.kind,
                t.currency,
                t.amount,
                t.state,
                stamp(t.at),
                stamp(t.expires_at),
                None if t.state == "pending" else stamp(t.at),
            )
            for t in new
        ],
    )
    for members in member(session, transfers.c.ref, [t.ref for t in new]):
        rows = conn.execute(select(transfers.c.ref, transfers.c.id).where(members))
        ids.update({ref: id_ for ref, id_ in rows})
    conn.exec_driver_sql(
        "INSERT INTO wallet_legs (transfer_id, side, account_id, amount, currency) "
        "VALUES (?, ?, ?, ?, ?)",
        [
            (ids[t.ref], side, t.debit if side == "debit" else t.credit, t.amount, t.currency)
            for t in new
            for side in ("debit", "credit")
        ],
    )
    return ids


def sqlite_stamps() -> Callable[[datetime | None], str | None]:
    """Render datetimes exactly as `UtcDateTime` stores them on SQLite (memoised per batch)."""
    seen: dict[datetime, str] = {}

    def stamp(value: datetime | None) -> str | None:
        if value is None:
            return None
        text_ = seen.get(value)
        if text_ is None:
            text_ = value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
            seen[value] = text_
        return text_

    return stamp
