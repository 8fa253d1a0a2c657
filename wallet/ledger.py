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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NewType

from sqlalchemy import (
    and_,
    select,
    text,
    update,
)
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session, aliased

from config.database import is_postgres
from wallet import store
from wallet.audit import FLOWS, audit
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

__all__ = [
    "CLEARING",
    "FLOWS",
    "AccountKey",
    "Balance",
    "Entry",
    "HoldId",
    "HoldRequest",
    "audit",
    "available",
    "available_many",
    "balance",
    "credit_topup",
    "currencies",
    "debit_refund",
    "hold",
    "hold_many",
    "hold_state",
    "lapsed_holds",
    "lock_wallets",
    "post_hold",
    "post_many",
    "refund_to_wallet",
    "sales_of",
    "statement",
    "transfer",
    "void_hold",
    "void_many",
    "wallet_of",
]

log = logging.getLogger(__name__)

HoldId = NewType("HoldId", int)

CLEARING_OWNER = "stripe"
_BUYER = re.compile(r"^[^\s:]+:\S+$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")


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


def _account_ids(
    session: Session, keys: Iterable[AccountKey], currency: str, at: datetime
) -> dict[AccountKey, int]:
    by_kind: dict[str, set[str]] = defaultdict(set)
    for key in keys:
        by_kind[key.kind].add(key.owner)
    out: dict[AccountKey, int] = {}
    for kind, owners in by_kind.items():
        for owner, id_ in store.ensure_accounts(session, kind, owners, currency, at).items():
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
    locked = store.lock(session, ids.values())
    new = store.NewTransfer(
        ref, kind, currency, amount, ids[debit], ids[credit], "posted", at, None
    )
    seen = store.existing(session, [ref]).get(ref)
    if seen is not None:
        if not store.same(seen, new):
            raise store.conflict(seen, new)
        return False
    if debit.kind != "clearing" and store.available_of(locked[new.debit]) < amount:
        raise InsufficientFunds(str(debit), currency, amount, store.available_of(locked[new.debit]))
    store.insert_transfers(session, [new])
    store.apply(
        session,
        {
            new.debit: store.Delta(debits_posted=amount),
            new.credit: store.Delta(credits_posted=amount),
        },
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
    if ref in store.existing(session, [ref]):
        return False
    wallet_id = store.find_accounts(session, "wallet", [key.owner], currency).get(key.owner)
    if wallet_id is None:
        return True
    take = min(amount, store.available_of(store.lock(session, [wallet_id])[wallet_id]))
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
    # nothing here waits on a wallet while holding a sales row (see `store.lock`).
    wallets = store.find_accounts(session, "wallet", (h.buyer for h in group), currency)
    locked = store.lock(session, wallets.values())
    sales = store.ensure_accounts(session, "sales", (h.campaign_id for h in group), currency, at)
    store.lock(session, sales.values())
    state = "posted" if post else "pending"

    def new_of(h: HoldRequest, wallet_id: int) -> store.NewTransfer:
        return store.NewTransfer(
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
    seen = store.existing(session, [h.ref for h in group])
    fresh: list[HoldRequest] = []
    for h in group:
        row = seen.get(h.ref)
        if row is None:
            fresh.append(h)
            continue
        wallet_id = wallets.get(h.buyer, -1)
        if not store.same(row, new_of(h, wallet_id)):
            raise store.conflict(row, new_of(h, wallet_id))
        if post and row.state != "posted":
            # Settling an existing hold is post_many's job; a "pay now" retry must not pass
            # for paid when the hold is still pending or was voided.
            raise TransferConflict(h.ref, f"recorded as a {row.state} hold, asked to pay at once")
        held[h.ref] = HoldId(row.id)

    left = {wallet_id: store.available_of(row) for wallet_id, row in locked.items()}
    new: list[store.NewTransfer] = []
    deltas: dict[int, store.Delta] = defaultdict(store.Delta)
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
    ids = store.insert_transfers(session, new)
    store.apply(session, deltas)
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
    for members in store.member(session, transfers.c.ref, wanted):
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
        if is_postgres(session):
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
    deltas: dict[int, store.Delta] = defaultdict(store.Delta)
    for members in store.member(session, legs.c.transfer_id, ids):
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
    store.lock(session, deltas)
    changed = 0
    for members in store.member(session, transfers.c.id, ids):
        result = session.connection().execute(
            update(transfers)
            .where(members, transfers.c.state == "pending")
            .values(state="posted" if post else "voided", resolved_at=at)
        )
        changed += result.rowcount
    if changed != len(ids):
        raise LedgerError(f"{len(ids) - changed} holds changed state under us; roll back")
    store.apply(session, deltas)


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
    """``available`` for many buyers in one query; 0 for unknown buyers."""
    currency = _currency(currency)
    wanted = sorted({_buyer(b) for b in buyers})
    out = dict.fromkeys(wanted, 0)
    if not wanted:
        return out
    if is_postgres(session):
        params = {"currency": currency, "owners": store.SEP.join(wanted), "sep": store.SEP}
        rows = session.execute(_AVAILABLE_POSTGRES, params)
    else:
        params = {"currency": currency, "owners": json.dumps(wanted)}
        rows = session.execute(_AVAILABLE_SQLITE, params)
    out.update({owner: int(avail) for owner, avail in rows.all()})
    return out


# `available_many`'s query, the owners bound as one parameter as `store.member` does: fixed
# text, so SQLAlchemy compiles it once (the engine asks for balances in every batch).
_AVAILABLE = (
    f"SELECT owner, credits_posted - debits_posted - debits_pending FROM {accounts.name} "
    "WHERE kind = 'wallet' AND currency = :currency AND owner "
)
_AVAILABLE_POSTGRES = text(_AVAILABLE + "= ANY(string_to_array(:owners, :sep))")
_AVAILABLE_SQLITE = text(_AVAILABLE + "IN (SELECT value FROM json_each(:owners))")


def lock_wallets(session: Session, buyers: Iterable[str], currency: str) -> dict[str, int]:
    """Lock these buyers' wallets until the transaction ends; returns ``available`` for each.

    A transaction that will call the ledger several times (hold a batch, then refund a cancel,
    then promote the waitlist) can take every wallet it may touch here first, in the ledger's
    lock order, so no later call locks a wallet after a sales account. Buyers without a wallet
    get 0 (nothing to lock: a wallet is only created by a credit).
    """
    currency = _currency(currency)
    wanted = {_buyer(b) for b in buyers}
    ids = store.find_accounts(session, "wallet", wanted, currency)
    locked = store.lock(session, ids.values())
    out = dict.fromkeys(wanted, 0)
    out.update({owner: store.available_of(locked[id_]) for owner, id_ in ids.items()})
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
