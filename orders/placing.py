"""Placing orders: window, per-buyer limit, first-come allocation, payment, the waitlist.

For a whole batch this costs: one query for the buyers' units already reserved, one block of
reservation ids, one `hold_many` per payment mode (a few statements inside the wallet), one
query for the balances of buyers who could not pay, and one bulk INSERT of reservations. Stock
counters are only changed in memory here; `Book.close()` writes them, one conditional UPDATE per
SKU. A sold-out SKU costs nothing more than appending to the waitlist.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from orders.book import Book
from orders.bulk import insert_rows, matching, next_ids, time_encoder
from orders.commands import Command
from orders.outcomes import Outcome, OutcomeKind
from orders.payments import Charge, balances, charge
from orders.tables import LIVE_STATES, reservations

# Every column of a new reservation but `cause`, `created_at` and `updated_at`, which are the
# same for a whole batch and bound once.
RESERVATION_COLUMNS = (
    "id",
    "campaign_id",
    "platform",
    "post_id",
    "part",
    "buyer",
    "handle",
    "lang",
    "visibility",
    "sku",
    "quantity",
    "state",
    "reason",
    "posted_at",
    "allocated_at",
    "hold_expires_at",
    "queue_ticket",
    "amount",
    "payment",
)


_KIND: dict[str, OutcomeKind] = {
    "confirmed": "confirmed",
    "awaiting_payment": "payment_needed",
    "waitlisted": "waitlisted",
    "rejected": "rejected",
}


class OrderRequest(NamedTuple):
    """An order post to place: its index in the batch, the command, the first free part
    number of the post (0 unless an edit re-submits it) and why it is placed. (A named
    tuple: one is made per order post of a storm, four times cheaper than a frozen
    dataclass.)"""

    order: int
    command: Command
    part: int = 0
    cause: str = "order"


@dataclass(slots=True)
class _Part:
    request: OrderRequest
    part: int
    sku: str
    quantity: int
    state: str
    reason: str | None = None
    ticket: int | None = None
    position: int | None = None
    id: int = 0


def units_reserved(session: Session, pairs: set[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """Units each (campaign, buyer) holds in live reservations, in one query."""
    if not pairs:
        return {}
    campaign_ids = sorted({c for c, _ in pairs})
    buyers = sorted({b for _, b in pairs})
    live = matching(
        session,
        select(reservations.c.campaign_id, reservations.c.buyer, reservations.c.quantity).where(
            reservations.c.campaign_id.in_(campaign_ids), reservations.c.state.in_(LIVE_STATES)
        ),
        reservations.c.buyer,
        buyers,
    ).subquery()
    rows = session.execute(
        select(live.c.campaign_id, live.c.buyer, func.sum(live.c.quantity)).group_by(
            live.c.campaign_id, live.c.buyer
        )
    )
    return {(c, b): int(n) for c, b, n in rows}


def place_orders(book: Book, requests: list[OrderRequest]) -> None:
    """Reserve, pay or waitlist every order in `requests`, in post-time order."""
    if not requests:
        return
    now = book.now
    rules_of = book.rules
    stock_of = book.stock
    parts: list[_Part] = []
    # One pass in post-time order. The buyers' units are read first for every order of a
    # known campaign (a superset of those that pass the window checks: harmless probes).
    ordered = sorted(requests, key=_post_order)
    held = units_reserved(
        book.session,
        {
            (r.command.campaign_id, r.command.buyer)
            for r in ordered
            if r.command.campaign_id in rules_of
        },
    )
    for req in ordered:
        cmd = req.command
        rules = rules_of.get(cmd.campaign_id)
        if rules is None:
            book.emit(_outcome(cmd, "ignored", reason="unknown_campaign"), req.order)
            continue
        decision = cmd.decision
        sku = decision.sku
        if sku is None and len(rules.prices) == 1:
            sku = next(iter(rules.prices))
        if sku is None or sku not in rules.prices:
            book.emit(_outcome(cmd, "rejected", reason="unknown_sku", sku=sku), req.order)
            continue
        quantity = decision.quantity or 1
        if quantity <= 0:
            book.emit(_outcome(cmd, "rejected", reason="bad_quantity", sku=sku), req.order)
            continue
        outside = rules.window_reason(cmd.posted_at)
        if outside is not None:
            parts.append(_Part(req, req.part, sku, quantity, "rejected", outside))
            continue
        key = (cmd.campaign_id, cmd.buyer)
        have = held.get(key, 0)
        if have + quantity > rules.per_buyer_limit:
            parts.append(_Part(req, req.part, sku, quantity, "rejected", "over_limit"))
            continue
        held[key] = have + quantity
        stock = stock_of[(cmd.campaign_id, sku)]
        take = min(quantity, stock.open_to_new)
        part = req.part
        if take:
            stock.allocate(take)
            parts.append(_Part(req, part, sku, take, "awaiting_payment"))
            part += 1
        if quantity > take:
            ticket, position = stock.enqueue(quantity - take)
            parts.append(
                _Part(req, part, sku, quantity - take, "waitlisted", None, ticket, position)
            )

    for p, id_ in zip(parts, next_ids(book.session, reservations, len(parts)), strict=True):
        p.id = id_

    allocated = [p for p in parts if p.state == "awaiting_payment"]
    charges = []
    for p in allocated:
        rules = book.rules[p.request.command.campaign_id]
        charges.append(
            Charge(
                reservation_id=p.id,
                buyer=p.request.command.buyer,
                campaign_id=rules.id,
                amount=rules.prices[p.sku] * p.quantity,
                currency=rules.currency,
                settle=not rules.confirmation_step,
                expires_at=hold_expiry(rules.cancel_until or rules.closes_at, now)
                if rules.confirmation_step
                else None,
            )
        )
    paid = charge(book.session, charges, at=now) if charges else set()
    unpaid = [c for c in charges if c.reservation_id not in paid]
    credit = balances(book.session, {(c.currency, c.buyer) for c in unpaid})

    rows: list[tuple[Any, ...]] = []
    emit = book.emit
    encode = time_encoder(book.session)
    now_text = encode(now)
    for p in parts:
        cmd = p.request.command
        rules = book.rules[cmd.campaign_id]
        amount = rules.prices[p.sku] * p.quantity
        state = p.state
        payment = None
        expires = None
        allocated_at = None
        balance = None
        due = None
        if state == "awaiting_payment":
            allocated_at = now_text
            if p.id in paid:
                state = "confirmed"
                payment = "held" if rules.confirmation_step else "posted"
            else:
                expires = now + rules.hold
                due = amount
                balance = credit.get((rules.currency, cmd.buyer))
        lang = cmd.decision.lang
        rows.append(
            (
                p.id,
                cmd.campaign_id,
                cmd.platform,
                cmd.post_id,
                p.part,
                cmd.buyer,
                cmd.handle,
                lang,
                cmd.visibility,
                p.sku,
                p.quantity,
                state,
                p.reason,
                encode(cmd.posted_at),
                allocated_at,
                encode(expires),
                p.ticket,
                amount,
                payment,
            )
        )
        # Positional, in field order: this runs once per post of a storm.
        emit(
            Outcome.of(
                _KIND[state],
                cmd.platform,
                cmd.post_id,
                cmd.buyer,
                cmd.handle,
                cmd.campaign_id,
                p.id,
                p.sku,
                p.quantity,
                state,
                p.reason,
                p.position,
                expires,
                due,
                balance,
                None,
                lang,
                cmd.visibility,
            ),
            p.request.order,
        )
    for cause in sorted({r.cause for r in requests}):
        insert_rows(
            book.session,
            reservations,
            RESERVATION_COLUMNS,
            [row for row, p in zip(rows, parts, strict=True) if p.request.cause == cause],
            constants={"cause": cause, "created_at": now, "updated_at": now},
            encoded=True,
        )


def _post_order(request: OrderRequest) -> tuple[datetime, str]:
    return request.command.posted_at, request.command.post_id


def hold_expiry(until: datetime, now: datetime) -> datetime:
    """When a confirmation-step hold lapses: a week after cancellations close."""
    return max(until, now) + timedelta(days=7)


def _outcome(cmd: Command, kind: Any, **fields: Any) -> Outcome:
    return Outcome(
        kind=kind,
        platform=cmd.platform,
        post_id=cmd.post_id,
        buyer=cmd.buyer,
        handle=cmd.handle,
        campaign_id=cmd.campaign_id,
        lang=cmd.decision.lang,
        visibility=cmd.visibility,
        **fields,
    )


def outcome_for(cmd: Command, kind: Any, **fields: Any) -> Outcome:
    """An outcome answering `cmd` (shared with the engine's other steps)."""
    return _outcome(cmd, kind, **fields)
