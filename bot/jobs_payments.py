"""Applying paid top-ups to orders, and the reconciliation job the clock schedules.

`apply_topup` is the single place a paid Checkout Session turns into credit and settled orders:
the webhook and `reconcile_payments` both call it, inside one transaction each, so a top-up is
credited once whichever of them sees it first, and the buyer's awaiting reservations are settled
and their replies queued in that same transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import stripe
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from bot import outbox
from config.brand import Brand
from orders.engine import lock_for_settlement, settle_buyer
from orders.outcomes import Outcome
from wallet import ledger
from wallet.stripe_payments import (
    CashoutRefusedError,
    PaidSession,
    SentRefund,
    StripeRejectedError,
    StripeUnavailableError,
    apply_paid_session,
    completed_sessions,
    paid_session,
    plan_cashout,
    send_refunds,
    unapplied,
)
from wallet.stripe_tables import stripe_refunds

log = logging.getLogger(__name__)

DEFAULT_RECONCILE_HOURS = 48


def _queue(
    session: Session,
    outcomes: Sequence[Outcome],
    *,
    brands: Sequence[Brand],
    now: datetime,
) -> None:
    """Queue replies for settled reservations, brand by brand (the outbox paces them)."""
    by_campaign = {c.id: b for b in brands for c in b.campaigns}
    groups: dict[str, tuple[Brand, list[Outcome]]] = {}
    for outcome in outcomes:
        brand = by_campaign.get(outcome.campaign_id)
        if brand is None:
            log.error("settled a reservation of unknown campaign %s", outcome.campaign_id)
            continue
        groups.setdefault(brand.brand.id, (brand, []))[1].append(outcome)
    for brand, items in groups.values():
        outbox.queue(session, items, brand=brand, now=now)


def apply_topup(
    session: Session,
    paid: PaidSession,
    *,
    brands: Sequence[Brand],
    now: datetime,
    via: str,
) -> list[Outcome] | None:
    """Credit a paid session once, settle the buyer's awaiting reservations, queue the replies.

    Flushes only; the caller commits. Returns the settlement outcomes, or None when this session
    had already been applied (nothing changed).
    """
    # Stock before wallet, the order `apply` locks in, so a top-up never deadlocks a batch.
    lock_for_settlement(session, paid.buyer, now=now)
    if not apply_paid_session(session, paid, at=now, via=via):
        return None
    outcomes = settle_buyer(session, paid.buyer, now=now)
    _queue(session, outcomes, brands=brands, now=now)
    return outcomes


@dataclass
class ReconcileReport:
    """What one reconciliation run saw and did."""

    seen: int = 0
    paid: int = 0
    applied: list[str] = field(default_factory=list)
    refunds_sent: int = 0


def reconcile_payments(
    factory: sessionmaker[Session],
    client: stripe.StripeClient,
    brands: Sequence[Brand],
    *,
    now: datetime,
    hours: float = DEFAULT_RECONCILE_HOURS,
) -> ReconcileReport:
    """Apply every paid Checkout Session of the last `hours` whose webhook never arrived, then
    send any cash-out refunds left pending.

    Stripe is listed first (no transaction open meanwhile); each missing session is then applied
    in its own transaction through `apply_topup`, the webhook's own path, so a webhook arriving
    during or after the run cannot credit it again. Raises
    `wallet.stripe_payments.StripeUnavailableError` if Stripe cannot be listed; nothing is
    applied then.
    """
    report = ReconcileReport()
    found: list[PaidSession] = []
    for obj in completed_sessions(client, since=now - timedelta(hours=hours)):
        report.seen += 1
        paid = paid_session(obj)
        if paid is not None:
            found.append(paid)
    report.paid = len(found)
    with factory.begin() as session:
        missing = unapplied(session, [p.session_id for p in found])
    for paid in found:
        if paid.session_id not in missing:
            continue
        with factory.begin() as session:
            outcomes = apply_topup(session, paid, brands=brands, now=now, via="reconcile")
            if outcomes is not None:
                report.applied.append(paid.session_id)
                log.warning("reconciled %s: its webhook never arrived", paid.session_id)
    # Cash-outs interrupted after the wallet was debited (Stripe down, process killed) are
    # finished here, with their original idempotency keys.
    try:
        report.refunds_sent = len(send_refunds(factory, client, now=now))
    except (StripeUnavailableError, StripeRejectedError) as exc:
        log.error("pending cash-out refunds not sent: %s", exc)
    return report


def cash_out(
    factory: sessionmaker[Session],
    client: stripe.StripeClient,
    *,
    buyer: str,
    amount: int,
    currency: str | None,
    now: datetime,
) -> dict[str, Any]:
    """Refund `amount` of a buyer's unused credit to their card (0: only resend what an
    earlier, interrupted cash-out left pending). Returns what happened, for `wallet refund`.

    Pending refunds of this buyer are sent first; a new cash-out is planned only when none is
    left pending, so a buyer is never refunded twice for one request. Raises
    `CashoutRefusedError` when the credit or the top-ups do not cover the amount.
    """
    with factory() as session:
        held_in = ledger.currencies(session, buyer)
    if currency is None:
        if len(held_in) > 1:
            raise CashoutRefusedError(f"{buyer} has wallets in {', '.join(held_in)}: pick one")
        currency = held_in[0] if held_in else "USD"
    sent: list[SentRefund] = []
    error = None
    try:
        sent += send_refunds(factory, client, buyer=buyer, now=now)
        if amount:
            with factory.begin() as session:
                plan_cashout(session, buyer=buyer, amount=amount, currency=currency, at=now)
            sent += send_refunds(factory, client, buyer=buyer, now=now)
    except (StripeUnavailableError, StripeRejectedError) as exc:
        error = str(exc)
        log.error("cash-out for %s interrupted: %s", buyer, exc)
    r = stripe_refunds
    with factory() as session:
        pending = session.execute(
            select(func.coalesce(func.sum(r.c.amount), 0)).where(
                r.c.buyer == buyer, r.c.state == "pending", r.c.currency == currency
            )
        ).scalar_one()
        balance = ledger.available(session, buyer, currency)
    return {
        "buyer": buyer,
        "currency": currency,
        "refunded": sum(s.amount for s in sent if s.state == "succeeded"),
        "refunds": [{"refund_id": s.refund_id, "amount": s.amount, "state": s.state} for s in sent],
        "pending": int(pending),
        "balance": balance,
        "error": error,
    }
