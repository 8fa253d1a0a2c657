"""How reservations are paid: the engine's calls into the wallet, with stable transfer refs.

A reservation's purchase is the wallet transfer `reservation:{id}`; its refund to the wallet is
`refund:reservation:{id}`. Refs are idempotency keys, so a retried batch never charges twice.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from wallet import ledger


def hold_ref(reservation_id: int) -> str:
    return f"reservation:{reservation_id}"


def refund_ref(reservation_id: int) -> str:
    return f"refund:reservation:{reservation_id}"


@dataclass(frozen=True, slots=True)
class Charge:
    """One reservation to pay from its buyer's wallet. `settle` False leaves the hold pending
    (a campaign with a confirmation step) until `expires_at`."""

    reservation_id: int
    buyer: str
    campaign_id: str
    amount: int
    currency: str
    settle: bool
    expires_at: datetime | None = None


def charge(session: Session, charges: Sequence[Charge], *, at: datetime) -> set[int]:
    """Pay what the wallets cover, in the order given; returns the reservation ids paid.

    A free reservation (amount 0) is paid without touching the ledger.
    """
    paid = {c.reservation_id for c in charges if c.amount == 0}
    for settle in (True, False):
        requests = [
            ledger.HoldRequest(
                buyer=c.buyer,
                campaign_id=c.campaign_id,
                amount=c.amount,
                currency=c.currency,
                ref=hold_ref(c.reservation_id),
                expires_at=c.expires_at,
            )
            for c in charges
            if c.settle is settle and c.amount > 0
        ]
        if not requests:
            continue
        held = ledger.hold_many(session, requests, post=settle, at=at)
        paid.update(int(ref.removeprefix("reservation:")) for ref in held)
    return paid


def balances(session: Session, wanted: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """Available credit for (currency, buyer) pairs, one query per currency."""
    by_currency: dict[str, set[str]] = defaultdict(set)
    for currency, buyer in wanted:
        by_currency[currency].add(buyer)
    out: dict[tuple[str, str], int] = {}
    for currency, buyers in by_currency.items():
        for buyer, amount in ledger.available_many(session, buyers, currency).items():
            out[(currency, buyer)] = amount
    return out


def void(session: Session, reservation_ids: Sequence[int], *, at: datetime) -> None:
    if reservation_ids:
        ledger.void_many(session, [hold_ref(i) for i in reservation_ids], at=at)


def capture(session: Session, reservation_ids: Sequence[int], *, at: datetime) -> None:
    """Settle the pending holds of these reservations (a confirmation step completed)."""
    if reservation_ids:
        ledger.post_many(session, [hold_ref(i) for i in reservation_ids], at=at)


def refund(
    session: Session,
    *,
    reservation_id: int,
    buyer: str,
    campaign_id: str,
    amount: int,
    currency: str,
    at: datetime,
) -> None:
    """Give a confirmed reservation's price back to the buyer's wallet (idempotent)."""
    if amount > 0:
        ledger.refund_to_wallet(
            session,
            buyer=buyer,
            campaign_id=campaign_id,
            amount=amount,
            currency=currency,
            ref=refund_ref(reservation_id),
            at=at,
        )
