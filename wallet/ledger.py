"""The double-entry credit ledger, with two-phase holds.

Model (after django-hordak and TigerBeetle):

- An **account** is one of: a buyer's ``wallet`` (owner ``platform:account_id``), a campaign's
  ``sales`` account (owner = campaign id), or the Stripe ``clearing`` account (owner ``stripe``).
  Accounts are per currency. Each row carries four running totals in minor units:
  ``credits_posted``, ``debits_posted``, ``credits_pending``, ``debits_pending``.
- A **transfer** moves a positive integer ``amount`` between two accounts. It has a unique
  idempotency id (``ref``) and exactly two **legs**, a debit and a credit of that amount, so its
  legs sum to zero. Kinds: ``topup`` (clearing -> wallet), ``cashout`` (wallet -> clearing, a
  Stripe refund), ``purchase`` (wallet -> sales), ``refund`` (sales -> wallet).
- A purchase is **two-phase**: ``hold`` makes it ``pending`` with an expiry (its amount counts
  in the pending totals); ``post`` settles it (pending -> posted); ``void`` releases it. A posted
  or voided hold is final. A hold past its expiry can only be voided (it keeps its funds until
  then: ``lapsed_holds`` lists what to void). ``hold_many(post=True)`` writes purchases that are
  posted at once.
- **Balances**: posted = credits_posted - debits_posted; **available** = posted -
  debits_pending. A wallet's available balance never goes below zero.

Each rule is enforced twice: here, with the named errors of `wallet.errors`, and in the database
(`wallet.tables`): CHECKs on every row (a wallet's debits never exceed its credits, so even raw
SQL that maintains the totals cannot overdraw it), UNIQUE refs, composite foreign keys that tie
each leg to its transfer's amount and currency, and triggers that keep the ledger append-only
and settled holds final. `audit` checks what no single row can show: both legs present, totals
equal to the sums of the legs, books balanced per currency.

Every function takes the caller's SQLAlchemy ``Session`` and never commits: the caller owns the
one transaction. Accounts a call touches are locked up front (``SELECT ... FOR UPDATE`` on
PostgreSQL; SQLite transactions hold the write lock from ``BEGIN IMMEDIATE``) in one fixed
order: buyer wallets by id, then sales accounts, then the clearing account. Concurrent workers
queue instead of deadlocking, provided a transaction that calls the ledger more than once does
not lock a new wallet after a call that locked a sales account (PostgreSQL would detect the
deadlock and abort one transaction, for the caller to retry). Callers that lock rows of their
own (stock) take those first. Batch forms (``hold_many``, ``post_many``, ``void_many``,
``available_many``) cost a handful of statements for thousands of holds.
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NewType, TypeVar

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
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session, aliased

from wallet.errors import (
    HoldExpired,
    HoldNotFound,
    HoldNotPending,
    InsufficientFunds,
    InvalidAmount,
    InvalidBuyer,
    InvalidCurrency,
    InvalidTransfer,
    LedgerError,
    NaiveDatetime,
    SameAccount,
    TransferConflict,
    UnbalancedTransfer,
)
from wallet.tables import accounts, legs, transfers

log = logging.getLogger(__name__)

HoldId = NewType("HoldId", int)

CLEARING_OWNER = "stripe"
# Bind-parameter budget per statement: SQLite allows 32766, psycopg 65535.
_CHUNK = 10_000
_BUYER = re.compile(r"^[^\s:]+:\S+$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_SEP = "\x1f"  # the ASCII unit separator: never part of a valid ref or buyer key
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class AccountKey:
    """Which account: ``wallet``/buyer key, ``sales``/campaign id, or ``clearing``/stripe."""

    kind: str
    owner: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.owner}"


def wallet_of(buyer: str) -> AccountKey:
    return AccountKey("wallet", _buyer(buyer))


def sales_of(campaign_id: str) -> AccountKey:
    if not isinstance(campaign_id, str) or not campaign_id or not campaign_id.isprintable():
        raise InvalidTransfer(f"campaign_id must be a non-empty printable string: {campaign_id!r}")
    return AccountKey("sales", campaign_id)


CLEARING = AccountKey("clearing", CLEARING_OWNER)


@dataclass(frozen=True, slots=True)
class HoldRequest:
    """One purchase to hold (and maybe post at once) from a buyer's wallet to a campaign."""

    buyer: str
    campaign_id: str
    amount: int
    currency: str
    ref: str
    expires_at: datetime | None = None  # required unless posted at once


@dataclass(frozen=True, slots=True)
class Entry:
    """One line of a wallet statement. ``amount`` is signed from the buyer's side (+ in, - out).

    ``balance`` is the posted balance after this line, for posted lines; ``None`` for holds still
    pending or voided (they never moved posted money).
    """

    ref: str
    kind: str
    state: str
    amount: int
    currency: str
    counterparty: str
    created_at: datetime
    expires_at: datetime | None
    resolved_at: datetime | None
    balance: int | None


@dataclass(frozen=True, slots=True)
class Balance:
    """A wallet's totals: ``posted`` money in it, ``held`` by pending holds, ``available``."""

    posted: int
    held: int

    @property
    def available(self) -> int:
        return self.posted - self.held


# ---------------------------------------------------------------------------------------------
# validation


def _amount(amount: object) -> int:
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise InvalidAmount(amount)
    return amount


def _currency(currency: object) -> str:
    if not isinstance(currency, str) or not _CURRENCY.match(currency):
        raise InvalidCurrency(currency)
    return currency


def _buyer(buyer: object) -> str:
    if not isinstance(buyer, str) or not _BUYER.match(buyer) or len(buyer) > 200:
        raise InvalidBuyer(buyer)
    return buyer


def _aware(value: object) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise NaiveDatetime(value)
    return value


def _ref(ref: object) -> str:
    if not isinstance(ref, str) or not ref or len(ref) > 200 or not ref.isprintable():
        raise InvalidTransfer(
            f"ref must be a non-empty printable string of at most 200 chars: {ref!r}"
        )
    return ref


# What each kind of transfer may move: (debited account kind, credited account kind).
FLOWS = {
    "topup": ("clearing", "wallet"),
    "cashout": ("wallet", "clearing"),
    "purchase": ("wallet", "sales"),
    "refund": ("sales", "wallet"),
}


def _check_legs(
    ref: str, kind: str, legs_: Sequence[tuple[AccountKey, int]]
) -> tuple[AccountKey, AccountKey, int]:
    """Double entry: one debit leg and one credit leg that sum to zero, on two accounts of the
    kinds ``kind`` moves between. Returns (debited, credited, amount)."""
    if kind not in FLOWS:
        raise InvalidTransfer(f"unknown transfer kind {kind!r}")
    amounts = [amount for _, amount in legs_]
    for amount in amounts:
        _amount(abs(amount) if type(amount) is int else amount)
    if len(legs_) != 2 or sum(amounts) != 0:
        raise UnbalancedTransfer(ref, amounts)
    (debit, _), (credit, amount) = sorted(legs_, key=lambda leg: leg[1])
    if debit == credit:
        raise SameAccount(ref, str(debit))
    if FLOWS[kind] != (debit.kind, credit.kind):
        raise InvalidTransfer(
            f"a {kind} moves {' -> '.join(FLOWS[kind])}, not {debit.kind} -> {credit.kind}"
        )
    return debit, credit, amount


def _chunks(items: Sequence[_T], size: int = _CHUNK) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _is_pg(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _member(
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
    if _is_pg(session):
        joined = _SEP.join(str(v) for v in wanted)
        array: ColumnElement[Any] = func.string_to_array(
            bindparam(None, joined, type_=String), _SEP
        )
        if isinstance(wanted[0], int):
            array = cast(array, ARRAY(BigInteger))
        return [column == any_(array)]
    keys = func.json_each(bindparam(None, json.dumps(wanted), type_=String))
    return [column.in_(select(literal_column("value")).select_from(keys))]


# ---------------------------------------------------------------------------------------------
# accounts


def _find_accounts(
    session: Session, kind: str, owners: Iterable[str], currency: str
) -> dict[str, int]:
    found: dict[str, int] = {}
    for members in _member(session, accounts.c.owner, owners):
        rows = session.execute(
            select(accounts.c.owner, accounts.c.id).where(
                accounts.c.kind == kind, accounts.c.currency == currency, members
            )
        )
        found.update({owner: id_ for owner, id_ in rows})
    return found


def _ensure_accounts(
    session: Session, kind: str, owners: Iterable[str], currency: str, at: datetime
) -> dict[str, int]:
    """Ids of the accounts, created (race-free, ON CONFLICT DO NOTHING) where missing."""
    wanted = sorted(set(owners))
    found = _find_accounts(session, kind, wanted, currency)
    missing = [o for o in wanted if o not in found]
    if missing:
        ins = pg_insert(accounts) if _is_pg(session) else sqlite_insert(accounts)
        stmt = ins.on_conflict_do_nothing(index_elements=["owner", "currency", "kind"])
        for chunk in _chunks(missing, 2_000):
            session.execute(
                stmt,
                [{"kind": kind, "owner": o, "currency": currency, "created_at": at} for o in chunk],
            )
        found.update(_find_accounts(session, kind, missing, currency))
    return found


def _lock(session: Session, ids: Iterable[int]) -> dict[int, Row[Any]]:
    """Lock the account rows and read their totals: wallets first, then sales accounts, then the
    clearing account, each by id (PostgreSQL locks rows in the order the sort returns them).

    Wallets come first because a caller may touch a wallet before it knows the campaign (a
    top-up, then settling that buyer's orders); the shared sales and clearing rows come last,
    so a transaction never holds one while it waits for a wallet.
    """
    out: dict[int, Row[Any]] = {}
    order = case((accounts.c.kind == "wallet", 0), (accounts.c.kind == "sales", 1), else_=2)
    for members in _member(session, accounts.c.id, ids):
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
        if _is_pg(session):
            stmt = stmt.with_for_update()
        out.update({row.id: row for row in session.execute(stmt)})
    return out


def _available(row: Row[Any]) -> int:
    return int(row.credits_posted - row.debits_posted - row.debits_pending)


@dataclass(slots=True)
class _Delta:
    credits_posted: int = 0
    debits_posted: int = 0
    credits_pending: int = 0
    debits_pending: int = 0


def _unnest_arrays(columns: Sequence[tuple[str, str]]) -> str:
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
    FROM unnest({_unnest_arrays([(c, "BIGINT") for c in ("id", "cp", "dp", "cpn", "dpn")])})
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


def _apply(session: Session, deltas: Mapping[int, _Delta]) -> None:
    """Move the running totals of many accounts in one statement, never past an overdraft.

    Callers lock and check first, so the guard failing means a bug or a writer that bypassed
    the locks; the transaction must then be rolled back, which raising ensures.
    """
    ids = sorted(deltas)
    if not ids:
        return
    if _is_pg(session):
        params = {
            "id": _joined(ids),
            "cp": _joined(deltas[i].credits_posted for i in ids),
            "dp": _joined(deltas[i].debits_posted for i in ids),
            "cpn": _joined(deltas[i].credits_pending for i in ids),
            "dpn": _joined(deltas[i].debits_pending for i in ids),
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


# ---------------------------------------------------------------------------------------------
# recording transfers


@dataclass(frozen=True, slots=True)
class _NewTransfer:
    ref: str
    kind: str
    currency: str
    amount: int
    debit: int  # account ids
    credit: int
    state: str
    at: datetime
    expires_at: datetime | None


def _existing(session: Session, refs: Sequence[str]) -> dict[str, Row[Any]]:
    """Transfers already recorded under these refs, with their debit and credit accounts."""
    debit = aliased(legs, name="debit")
    credit = aliased(legs, name="credit")
    out: dict[str, Row[Any]] = {}
    for members in _member(session, transfers.c.ref, refs):
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


def _same(row: Row[Any], new: _NewTransfer) -> bool:
    return (row.kind, row.currency, row.amount, row.debit_id, row.credit_id) == (
        new.kind,
        new.currency,
        new.amount,
        new.debit,
        new.credit,
    )


def _conflict(row: Row[Any], new: _NewTransfer) -> TransferConflict:
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
        _unnest_arrays(
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
        _unnest_arrays(
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


def _joined(values: Iterable[str | int]) -> str:
    return _SEP.join(map(str, values))


def _joined_times(values: Iterable[datetime | None]) -> str:
    """Datetimes as ISO text ('' for NULL); a batch mostly repeats a few, so each is rendered
    once."""
    rendered: dict[datetime | None, str] = {None: ""}

    def render(value: datetime | None) -> str:
        text_ = rendered.get(value)
        if text_ is None:
            assert value is not None
            text_ = rendered[value] = value.isoformat()
        return text_

    return _SEP.join(map(render, values))


def _insert(session: Session, new: Sequence[_NewTransfer]) -> dict[str, int]:
    """Insert transfers and their two legs (a few statements per batch); the caller moves the
    account totals."""
    if not new:
        return {}
    ids: dict[str, int] = {}
    if _is_pg(session):
        for chunk in _chunks(new, 50_000):
            params = {
                "ref": _joined(t.ref for t in chunk),
                "kind": _joined(t.kind for t in chunk),
                "currency": _joined(t.currency for t in chunk),
                "amount": _joined(t.amount for t in chunk),
                "state": _joined(t.state for t in chunk),
                "created_at": _joined_times(t.at for t in chunk),
                "expires_at": _joined_times(t.expires_at for t in chunk),
                "resolved_at": _joined_times(None if t.state == "pending" else t.at for t in chunk),
            }
            ids.update({ref: id_ for id_, ref in session.execute(_PG_INSERT_TRANSFERS, params)})
            legs_of = [(ids[t.ref], t) for t in chunk]
            session.execute(
                _PG_INSERT_LEGS,
                {
                    "transfer_id": _joined([tid for tid, _ in legs_of] * 2),
                    "side": _joined(["debit"] * len(legs_of) + ["credit"] * len(legs_of)),
                    "account_id": _joined(
                        [t.debit for _, t in legs_of] + [t.credit for _, t in legs_of]
                    ),
                    "amount": _joined([t.amount for _, t in legs_of] * 2),
                    "currency": _joined([t.currency for _, t in legs_of] * 2),
                },
            )
        return ids
    # SQLite: one executemany per table straight to the driver (SQLAlchemy's per-row parameter
    # processing would cost more than the inserts); ids are read back by ref.
    conn = session.connection()
    stamp = _sqlite_stamps()
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
    for members in _member(session, transfers.c.ref, [t.ref for t in new]):
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


def _sqlite_stamps() -> Callable[[datetime | None], str | None]:
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


def _account_ids(
    session: Session, keys: Iterable[AccountKey], currency: str, at: datetime
) -> dict[AccountKey, int]:
    by_kind: dict[str, set[str]] = defaultdict(set)
    for key in keys:
        by_kind[key.kind].add(key.owner)
    out: dict[AccountKey, int] = {}
    for kind, owners in by_kind.items():
        for owner, id_ in _ensure_accounts(session, kind, owners, currency, at).items():
            out[AccountKey(kind, owner)] = id_
    return out


def transfer(
    session: Session,
    *,
    ref: str,
    kind: str,
    legs: Sequence[tuple[AccountKey, int]],
    currency: str,
    at: datetime,
) -> bool:
    """Record one posted transfer, given as two signed legs: ``[(debited, -n), (credited, +n)]``.

    The legs must sum to zero (`UnbalancedTransfer`), touch two accounts (`SameAccount`) and
    move money the way ``kind`` does (a top-up goes clearing -> wallet, a cash-out wallet ->
    clearing, a purchase wallet -> sales, a refund sales -> wallet). Returns False (and changes
    nothing) when the same transfer was already recorded under ``ref``; raises
    `TransferConflict` when ``ref`` names a different one, `InsufficientFunds` when the debited
    wallet or sales account does not have the amount available.
    """
    ref = _ref(ref)
    currency = _currency(currency)
    at = _aware(at)
    debit, credit, amount = _check_legs(ref, kind, legs)
    ids = _account_ids(session, [debit, credit], currency, at)
    # Lock first, then look for the ref: a concurrent twin that committed meanwhile is seen.
    locked = _lock(session, ids.values())
    new = _NewTransfer(ref, kind, currency, amount, ids[debit], ids[credit], "posted", at, None)
    seen = _existing(session, [ref]).get(ref)
    if seen is not None:
        if not _same(seen, new):
            raise _conflict(seen, new)
        return False
    if debit.kind != "clearing" and _available(locked[new.debit]) < amount:
        raise InsufficientFunds(str(debit), currency, amount, _available(locked[new.debit]))
    _insert(session, [new])
    _apply(
        session,
        {new.debit: _Delta(debits_posted=amount), new.credit: _Delta(credits_posted=amount)},
    )
    return True


# ---------------------------------------------------------------------------------------------
# top-ups and Stripe refunds


def credit_topup(
    session: Session, *, buyer: str, amount: int, currency: str, stripe_ref: str, at: datetime
) -> bool:
    """Credit a paid Stripe top-up to the buyer's wallet (clearing -> wallet).

    Idempotent on ``stripe_ref`` (the Checkout Session or PaymentIntent id): returns False when
    that payment was already credited, and raises `TransferConflict` if the ref was used for a
    different amount or buyer.
    """
    amount = _amount(amount)
    return transfer(
        session,
        ref=stripe_ref,
        kind="topup",
        legs=[(CLEARING, -amount), (wallet_of(buyer), amount)],
        currency=currency,
        at=at,
    )


def debit_refund(
    session: Session, *, buyer: str, amount: int, currency: str, ref: str, at: datetime
) -> bool:
    """Take a Stripe refund out of the wallet (wallet -> clearing), never below zero.

    Takes at most the wallet's available balance (a refund of credit already spent cannot be
    clawed back from held or settled purchases); the transfer recorded under ``ref`` says how
    much was taken. Returns False when ``ref`` was already applied. When nothing is available
    nothing is recorded and True is returned: the ref stays unseen, so the caller's own record
    of the Stripe event is what keeps a replay from debiting later.
    """
    ref = _ref(ref)
    amount = _amount(amount)
    currency = _currency(currency)
    at = _aware(at)
    key = wallet_of(buyer)
    if ref in _existing(session, [ref]):
        return False
    wallet_id = _find_accounts(session, "wallet", [key.owner], currency).get(key.owner)
    if wallet_id is None:
        return True
    take = min(amount, _available(_lock(session, [wallet_id])[wallet_id]))
    if take <= 0:
        log.info("refund %s finds no available credit to debit", ref)
        return True
    if take < amount:
        log.info("refund %s debits %d of %d: the rest was already spent", ref, take, amount)
    return transfer(
        session,
        ref=ref,
        kind="cashout",
        legs=[(key, -take), (CLEARING, take)],
        currency=currency,
        at=at,
    )


def refund_to_wallet(
    session: Session,
    *,
    buyer: str,
    campaign_id: str,
    amount: int,
    currency: str,
    ref: str,
    at: datetime,
) -> bool:
    """Give a buyer credit back from a campaign's sales (sales -> wallet), e.g. a cancellation.

    Returns False when ``ref`` was already applied. Raises `InsufficientFunds` when the campaign
    has taken less than ``amount`` in settled sales.
    """
    amount = _amount(amount)
    return transfer(
        session,
        ref=ref,
        kind="refund",
        legs=[(sales_of(campaign_id), -amount), (wallet_of(buyer), amount)],
        currency=currency,
        at=at,
    )


# ---------------------------------------------------------------------------------------------
# holds (two-phase purchases)


def hold_many(
    session: Session, holds: Sequence[HoldRequest], *, post: bool = False, at: datetime
) -> dict[str, HoldId]:
    """Hold (or, with ``post=True``, hold and settle at once) many purchases in a few statements.

    Requests are served in the order given: each is held if the buyer's wallet still has its
    amount available after the earlier ones. Returns ``{ref: HoldId}`` for every request that is
    held (including one already recorded identically under its ref, which is not held twice);
    a ref missing from the result was refused for insufficient funds. Raises `TransferConflict`
    if a ref was recorded for a different purchase, or `InvalidTransfer` for a bad request.
    """
    at = _aware(at)
    if not holds:
        return {}
    refs: set[str] = set()
    for h in holds:
        _ref(h.ref)
        _amount(h.amount)
        _currency(h.currency)
        _buyer(h.buyer)
        sales_of(h.campaign_id)
        if h.expires_at is None:
            if not post:
                raise InvalidTransfer(f"hold {h.ref!r} needs an expiry")
        else:
            _aware(h.expires_at)
        if h.ref in refs:
            raise InvalidTransfer(f"ref {h.ref!r} appears twice in one batch")
        refs.add(h.ref)

    held: dict[str, HoldId] = {}
    by_currency: dict[str, list[HoldRequest]] = defaultdict(list)
    for h in holds:
        by_currency[h.currency].append(h)
    for currency, group in by_currency.items():
        held.update(_hold_group(session, group, currency, post=post, at=at))
    return held


def _hold_group(
    session: Session, group: list[HoldRequest], currency: str, *, post: bool, at: datetime
) -> dict[str, HoldId]:
    # Wallets are locked before a campaign's first purchase creates its sales account, so
    # nothing here waits on a wallet while holding a sales row (see `_lock`).
    wallets = _find_accounts(session, "wallet", (h.buyer for h in group), currency)
    locked = _lock(session, wallets.values())
    sales = _ensure_accounts(session, "sales", (h.campaign_id for h in group), currency, at)
    _lock(session, sales.values())
    state = "posted" if post else "pending"

    def new_of(h: HoldRequest, wallet_id: int) -> _NewTransfer:
        return _NewTransfer(
            h.ref,
            "purchase",
            currency,
            h.amount,
            wallet_id,
            sales[h.campaign_id],
            state,
            at,
            h.expires_at,
        )

    # Locked first, then look for the refs: a concurrent twin that committed meanwhile is seen.
    held: dict[str, HoldId] = {}
    seen = _existing(session, [h.ref for h in group])
    fresh: list[HoldRequest] = []
    for h in group:
        row = seen.get(h.ref)
        if row is None:
            fresh.append(h)
            continue
        wallet_id = wallets.get(h.buyer, -1)
        if not _same(row, new_of(h, wallet_id)):
            raise _conflict(row, new_of(h, wallet_id))
        if post and row.state != "posted":
            # Settling an existing hold is post_many's job; a "pay now" retry must not pass
            # for paid when the hold is still pending or was voided.
            raise TransferConflict(h.ref, f"recorded as a {row.state} hold, asked to pay at once")
        held[h.ref] = HoldId(row.id)

    left = {wallet_id: _available(row) for wallet_id, row in locked.items()}
    new: list[_NewTransfer] = []
    deltas: dict[int, _Delta] = defaultdict(_Delta)
    for h in fresh:
        payer = wallets.get(h.buyer)
        if payer is None or left[payer] < h.amount:
            continue
        left[payer] -= h.amount
        t = new_of(h, payer)
        new.append(t)
        if post:
            deltas[t.debit].debits_posted += t.amount
            deltas[t.credit].credits_posted += t.amount
        else:
            deltas[t.debit].debits_pending += t.amount
            deltas[t.credit].credits_pending += t.amount
    ids = _insert(session, new)
    _apply(session, deltas)
    held.update({ref: HoldId(id_) for ref, id_ in ids.items()})
    refused = len(fresh) - len(new)
    if refused:
        log.debug("%d of %d holds refused for insufficient funds", refused, len(fresh))
    return held


def hold(
    session: Session,
    *,
    buyer: str,
    campaign_id: str,
    amount: int,
    currency: str,
    ref: str,
    expires_at: datetime,
    at: datetime,
) -> HoldId:
    """Hold ``amount`` of the buyer's credit for a campaign purchase until ``expires_at``.

    Idempotent on ``ref`` (the same hold again returns its id). Raises `InsufficientFunds` when
    the wallet's available balance is below ``amount``.
    """
    request = HoldRequest(buyer, campaign_id, amount, currency, ref, _aware(expires_at))
    held = hold_many(session, [request], at=at)
    if ref not in held:
        raise InsufficientFunds(
            str(wallet_of(buyer)), currency, amount, available(session, buyer, currency)
        )
    return held[ref]


def _settle(session: Session, refs: Sequence[str], *, post: bool, at: datetime) -> None:
    at = _aware(at)
    wanted = sorted({_ref(r) for r in refs})
    if not wanted:
        return
    rows: dict[str, Row[Any]] = {}
    for members in _member(session, transfers.c.ref, wanted):
        stmt = (
            select(
                transfers.c.id,
                transfers.c.ref,
                transfers.c.kind,
                transfers.c.state,
                transfers.c.amount,
                transfers.c.expires_at,
            )
            .where(members)
            .order_by(transfers.c.id)
        )
        if _is_pg(session):
            stmt = stmt.with_for_update()
        rows.update({row.ref: row for row in session.execute(stmt)})
    for ref in wanted:
        row = rows.get(ref)
        if row is None or row.kind != "purchase":
            raise HoldNotFound(ref)
        if row.state != "pending":
            raise HoldNotPending(ref, row.state)
        if post and at >= row.expires_at:
            raise HoldExpired(ref, row.expires_at, at)
    ids = [rows[r].id for r in wanted]
    deltas: dict[int, _Delta] = defaultdict(_Delta)
    for members in _member(session, legs.c.transfer_id, ids):
        leg_rows = session.execute(
            select(legs.c.side, legs.c.account_id, legs.c.amount).where(members)
        )
        for side, account_id, amount in leg_rows:
            delta = deltas[account_id]
            if side == "debit":
                delta.debits_pending -= amount
                delta.debits_posted += amount if post else 0
            else:
                delta.credits_pending -= amount
                delta.credits_posted += amount if post else 0
    _lock(session, deltas)
    changed = 0
    for members in _member(session, transfers.c.id, ids):
        result = session.connection().execute(
            update(transfers)
            .where(members, transfers.c.state == "pending")
            .values(state="posted" if post else "voided", resolved_at=at)
        )
        changed += result.rowcount
    if changed != len(ids):
        raise LedgerError(f"{len(ids) - changed} holds changed state under us; roll back")
    _apply(session, deltas)


def post_many(session: Session, refs: Sequence[str], *, at: datetime) -> None:
    """Settle pending holds. All or nothing: raises before any write if one cannot be posted
    (`HoldNotFound`, `HoldNotPending`, `HoldExpired`)."""
    _settle(session, refs, post=True, at=at)


def void_many(session: Session, refs: Sequence[str], *, at: datetime) -> None:
    """Release pending holds (expired ones included). All or nothing, like `post_many`."""
    _settle(session, refs, post=False, at=at)


def post_hold(session: Session, ref: str, *, at: datetime) -> None:
    """Settle one pending hold; raises `HoldExpired` past its expiry, `HoldNotPending` if final."""
    _settle(session, [ref], post=True, at=at)


def void_hold(session: Session, ref: str, *, at: datetime) -> None:
    """Release one pending hold; raises `HoldNotPending` if it was already posted or voided."""
    _settle(session, [ref], post=False, at=at)


def lapsed_holds(session: Session, now: datetime, *, limit: int | None = None) -> list[str]:
    """Refs of pending holds whose expiry has passed (oldest expiry first), for voiding."""
    stmt = (
        select(transfers.c.ref)
        .where(transfers.c.state == "pending", transfers.c.expires_at <= _aware(now))
        .order_by(transfers.c.expires_at, transfers.c.id)
        .limit(limit)
    )
    return list(session.scalars(stmt))


def hold_state(session: Session, ref: str) -> str | None:
    """``pending``, ``posted``, ``voided``, or None when no purchase has that ref."""
    return session.scalar(
        select(transfers.c.state).where(transfers.c.ref == ref, transfers.c.kind == "purchase")
    )


# ---------------------------------------------------------------------------------------------
# balances and statements


def balance(session: Session, buyer: str, currency: str) -> Balance:
    """The wallet's posted and held totals (zero for a buyer who never topped up)."""
    row = session.execute(
        select(
            accounts.c.credits_posted - accounts.c.debits_posted, accounts.c.debits_pending
        ).where(
            accounts.c.kind == "wallet",
            accounts.c.owner == _buyer(buyer),
            accounts.c.currency == _currency(currency),
        )
    ).first()
    return Balance(0, 0) if row is None else Balance(int(row[0]), int(row[1]))


def available(session: Session, buyer: str, currency: str) -> int:
    """What the buyer can spend now: posted balance minus pending holds."""
    return balance(session, buyer, currency).available


def available_many(session: Session, buyers: Iterable[str], currency: str) -> dict[str, int]:
    """``available`` for many buyers in one query (per 10,000); 0 for unknown buyers."""
    currency = _currency(currency)
    wanted = sorted({_buyer(b) for b in buyers})
    out = dict.fromkeys(wanted, 0)
    for members in _member(session, accounts.c.owner, wanted):
        rows = session.execute(
            select(
                accounts.c.owner,
                accounts.c.credits_posted - accounts.c.debits_posted - accounts.c.debits_pending,
            ).where(
                accounts.c.kind == "wallet",
                accounts.c.currency == currency,
                members,
            )
        )
        out.update({owner: int(avail) for owner, avail in rows})
    return out


def lock_wallets(session: Session, buyers: Iterable[str], currency: str) -> dict[str, int]:
    """Lock these buyers' wallets until the transaction ends; returns ``available`` for each.

    A transaction that will call the ledger several times (hold a batch, then refund a cancel,
    then promote the waitlist) can take every wallet it may touch here first, in the ledger's
    lock order, so no later call locks a wallet after a sales account. Buyers without a wallet
    get 0 (nothing to lock: a wallet is only created by a credit).
    """
    currency = _currency(currency)
    wanted = {_buyer(b) for b in buyers}
    ids = _find_accounts(session, "wallet", wanted, currency)
    locked = _lock(session, ids.values())
    out = dict.fromkeys(wanted, 0)
    out.update({owner: _available(locked[id_]) for owner, id_ in ids.items()})
    return out


def currencies(session: Session, buyer: str) -> list[str]:
    """The currencies the buyer has a wallet in, sorted."""
    return sorted(
        session.scalars(
            select(accounts.c.currency).where(
                accounts.c.kind == "wallet", accounts.c.owner == _buyer(buyer)
            )
        )
    )


def statement(session: Session, buyer: str, currency: str) -> list[Entry]:
    """Every transfer touching the buyer's wallet, in the order it took effect."""
    key = wallet_of(buyer)
    currency = _currency(currency)
    mine = aliased(legs, name="mine")
    other = aliased(legs, name="other")
    other_account = aliased(accounts, name="other_account")
    stmt = (
        select(
            transfers.c.ref,
            transfers.c.kind,
            transfers.c.state,
            transfers.c.amount,
            transfers.c.created_at,
            transfers.c.expires_at,
            transfers.c.resolved_at,
            mine.c.side,
            other_account.c.kind.label("other_kind"),
            other_account.c.owner.label("other_owner"),
            transfers.c.id,
        )
        .join(mine, mine.c.transfer_id == transfers.c.id)
        .join(accounts, accounts.c.id == mine.c.account_id)
        .join(other, and_(other.c.transfer_id == transfers.c.id, other.c.side != mine.c.side))
        .join(other_account, other_account.c.id == other.c.account_id)
        .where(
            accounts.c.kind == "wallet",
            accounts.c.owner == key.owner,
            accounts.c.currency == currency,
        )
    )
    rows = sorted(session.execute(stmt), key=lambda r: (r.resolved_at or r.created_at, r.id))
    running = 0
    entries: list[Entry] = []
    for r in rows:
        signed = r.amount if r.side == "credit" else -r.amount
        line_balance: int | None = None
        if r.state == "posted":
            running += signed
            line_balance = running
        entries.append(
            Entry(
                ref=r.ref,
                kind=r.kind,
                state=r.state,
                amount=signed,
                currency=currency,
                counterparty=f"{r.other_kind}:{r.other_owner}",
                created_at=r.created_at,
                expires_at=r.expires_at,
                resolved_at=r.resolved_at,
                balance=line_balance,
            )
        )
    return entries


# ---------------------------------------------------------------------------------------------
# audit


def audit(session: Session, *, limit: int = 20) -> list[str]:
    """Check the ledger's invariants across rows; an empty list means they all hold.

    - every transfer has one debit and one credit leg of its amount, on two different accounts
      of the right kinds for the transfer kind;
    - every account's running totals equal the sums of its legs by transfer state;
    - no wallet or sales account is overdrawn; posted balances sum to zero per currency.
    """
    problems: list[str] = []
    debit = aliased(legs, name="debit")
    credit = aliased(legs, name="credit")
    debit_account = aliased(accounts, name="debit_account")
    credit_account = aliased(accounts, name="credit_account")
    rows = session.execute(
        select(
            transfers.c.ref,
            transfers.c.kind,
            transfers.c.amount,
            debit.c.amount.label("debit_amount"),
            credit.c.amount.label("credit_amount"),
            debit.c.account_id.label("debit_id"),
            credit.c.account_id.label("credit_id"),
            debit_account.c.kind.label("debit_kind"),
            credit_account.c.kind.label("credit_kind"),
        )
        .outerjoin(debit, and_(debit.c.transfer_id == transfers.c.id, debit.c.side == "debit"))
        .outerjoin(credit, and_(credit.c.transfer_id == transfers.c.id, credit.c.side == "credit"))
        .outerjoin(debit_account, debit_account.c.id == debit.c.account_id)
        .outerjoin(credit_account, credit_account.c.id == credit.c.account_id)
        .where(
            (debit.c.transfer_id.is_(None))
            | (credit.c.transfer_id.is_(None))
            | (debit.c.amount != credit.c.amount)
            | (debit.c.account_id == credit.c.account_id)
            | (debit.c.amount != transfers.c.amount)
        )
        .limit(limit)
    ).all()
    for r in rows:
        if r.debit_amount is None or r.credit_amount is None:
            problems.append(f"transfer {r.ref}: missing its debit or credit leg")
        elif r.debit_id == r.credit_id:
            problems.append(f"transfer {r.ref}: debits and credits the same account")
        else:
            problems.append(
                f"transfer {r.ref}: legs -{r.debit_amount}/+{r.credit_amount} do not sum to zero"
            )
    flows = session.execute(
        select(transfers.c.ref, transfers.c.kind, debit_account.c.kind, credit_account.c.kind)
        .join(debit, and_(debit.c.transfer_id == transfers.c.id, debit.c.side == "debit"))
        .join(credit, and_(credit.c.transfer_id == transfers.c.id, credit.c.side == "credit"))
        .join(debit_account, debit_account.c.id == debit.c.account_id)
        .join(credit_account, credit_account.c.id == credit.c.account_id)
    )
    bad_flows = 0
    for ref, kind, dkind, ckind in flows:
        if FLOWS.get(kind) != (dkind, ckind) and bad_flows < limit:
            bad_flows += 1
            problems.append(f"transfer {ref}: a {kind} may not move {dkind} -> {ckind}")

    def total(side: str, state: str) -> Any:
        return func.coalesce(
            func.sum(
                case(
                    (and_(legs.c.side == side, transfers.c.state == state), legs.c.amount),
                    else_=0,
                )
            ),
            0,
        )

    sums = (
        select(
            legs.c.account_id,
            total("credit", "posted").label("cp"),
            total("debit", "posted").label("dp"),
            total("credit", "pending").label("cpn"),
            total("debit", "pending").label("dpn"),
        )
        .join(transfers, transfers.c.id == legs.c.transfer_id)
        .group_by(legs.c.account_id)
        .subquery()
    )
    mismatched = session.execute(
        select(accounts, sums.c.cp, sums.c.dp, sums.c.cpn, sums.c.dpn)
        .outerjoin(sums, sums.c.account_id == accounts.c.id)
        .where(
            (accounts.c.credits_posted != func.coalesce(sums.c.cp, 0))
            | (accounts.c.debits_posted != func.coalesce(sums.c.dp, 0))
            | (accounts.c.credits_pending != func.coalesce(sums.c.cpn, 0))
            | (accounts.c.debits_pending != func.coalesce(sums.c.dpn, 0))
            | (
                (accounts.c.kind != "clearing")
                & (
                    func.coalesce(sums.c.dp, 0) + func.coalesce(sums.c.dpn, 0)
                    > func.coalesce(sums.c.cp, 0)
                )
            )
        )
        .limit(limit)
    ).all()
    for r in mismatched:
        key = f"{r.kind}:{r.owner} {r.currency}"
        cp, dp, cpn, dpn = (int(v or 0) for v in (r.cp, r.dp, r.cpn, r.dpn))
        if r.kind != "clearing" and dp + dpn > cp:
            problems.append(f"{key}: overdrawn, legs show {cp - dp - dpn} available")
        if (r.credits_posted, r.debits_posted, r.credits_pending, r.debits_pending) != (
            cp,
            dp,
            cpn,
            dpn,
        ):
            problems.append(
                f"{key}: totals {r.credits_posted}/{r.debits_posted}/{r.credits_pending}/"
                f"{r.debits_pending} differ from its legs {cp}/{dp}/{cpn}/{dpn}"
            )
    unbalanced = session.execute(
        select(
            accounts.c.currency,
            func.sum(accounts.c.credits_posted - accounts.c.debits_posted),
        )
        .group_by(accounts.c.currency)
        .having(func.sum(accounts.c.credits_posted - accounts.c.debits_posted) != 0)
    )
    for currency, net in unbalanced:
        problems.append(f"{currency}: posted balances sum to {net}, not zero")
    return problems
