"""Check every invariant of docs/design.md that the orders and the wallet can see.

`audit(session)` returns a list of problems, each one sentence naming what broke; an empty list
means everything holds:

- stock: per SKU, `0 <= allocated <= stock`; `allocated` equals the units of awaiting_payment
  and confirmed reservations; `allocated + released` equals the units ever allocated (every
  reservation with `allocated_at`); `waitlisted` equals the units waiting;
- posts: every reservation belongs to a recorded post; the parts of one post that were not
  rejected add up to what it ordered, or to nothing (no post is reserved twice);
- limits: no buyer holds more live units in a campaign than its `per_buyer_limit`;
- money: every paid reservation has its purchase in the ledger in the matching state and
  amount, every refunded one its refund, and the ledger itself balances (`wallet.ledger.audit`);
- Stripe: every paid top-up is credited exactly once, nobody is refunded more than they paid,
  and every cash-out took from the wallet what its refunds return (`wallet.stripe_payments.audit`);
- extra checks the caller passes (the bot adds "at most one reply of each kind").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import and_, case, func, select
from sqlalchemy.orm import Session

from orders.payments import hold_ref, refund_ref
from orders.tables import ALLOCATED_STATES, campaigns, posts, products, reservations
from wallet import ledger, stripe_payments
from wallet.tables import transfers

Check = Callable[[Session], list[str]]

r_ = reservations.c


def _units(condition: Any) -> Any:
    return func.coalesce(func.sum(case((condition, r_.quantity), else_=0)), 0)


def check_stock(session: Session) -> list[str]:
    problems: list[str] = []
    sums = {
        (row.campaign_id, row.sku): row
        for row in session.execute(
            select(
                r_.campaign_id,
                r_.sku,
                _units(r_.state.in_(ALLOCATED_STATES)).label("allocated"),
                _units(r_.allocated_at.is_not(None)).label("ever"),
                _units(r_.state == "waitlisted").label("waiting"),
            ).group_by(r_.campaign_id, r_.sku)
        )
    }
    known = set()
    for p in session.execute(select(products)):
        key = (p.campaign_id, p.sku)
        known.add(key)
        name = f"{p.campaign_id}/{p.sku}"
        s = sums.get(key)
        allocated, ever, waiting = (s.allocated, s.ever, s.waiting) if s else (0, 0, 0)
        if not 0 <= p.allocated <= p.stock:
            problems.append(f"{name}: allocated {p.allocated} outside 0..stock {p.stock}")
        if p.allocated != allocated:
            problems.append(
                f"{name}: stock row says {p.allocated} allocated, reservations hold {allocated}"
            )
        if p.allocated + p.released != ever:
            problems.append(
                f"{name}: allocated {p.allocated} + released {p.released} != {ever} units "
                "ever allocated"
            )
        if p.waitlisted != waiting:
            problems.append(
                f"{name}: stock row says {p.waitlisted} waitlisted, reservations wait for {waiting}"
            )
    for key in sorted(set(sums) - known):
        problems.append(f"{key[0]}/{key[1]}: reservations for a product that does not exist")
    return problems


def check_posts(session: Session) -> list[str]:
    problems: list[str] = []
    parts = (
        select(
            r_.platform,
            r_.post_id,
            _units(r_.state != "rejected").label("units"),
            func.count().label("n"),
        )
        .group_by(r_.platform, r_.post_id)
        .subquery()
    )
    rows = session.execute(
        select(
            parts.c.platform,
            parts.c.post_id,
            parts.c.units,
            posts.c.decision,
            posts.c.quantity,
            posts.c.post_id.label("recorded"),
        ).outerjoin(
            posts,
            and_(posts.c.platform == parts.c.platform, posts.c.post_id == parts.c.post_id),
        )
    )
    for row in rows:
        name = f"post {row.platform}:{row.post_id}"
        if row.recorded is None:
            problems.append(f"{name}: reservations for a post that was never recorded")
            continue
        ordered = row.quantity or 1
        if row.units not in (0, ordered):
            problems.append(f"{name}: reserved {row.units} units but ordered {ordered}")
    return problems


def check_limits(session: Session) -> list[str]:
    limits = {row.id: row.per_buyer_limit for row in session.execute(select(campaigns))}
    problems = []
    for row in session.execute(
        select(r_.campaign_id, r_.buyer, func.sum(r_.quantity).label("units"))
        .where(r_.state.in_(("awaiting_payment", "confirmed", "waitlisted")))
        .group_by(r_.campaign_id, r_.buyer)
    ):
        limit = limits.get(row.campaign_id)
        if limit is None:
            problems.append(f"{row.campaign_id}: reservations for an unknown campaign")
        elif row.units > limit:
            problems.append(
                f"{row.campaign_id}: buyer {row.buyer} holds {row.units} units, limit {limit}"
            )
    return problems


def check_payments(session: Session) -> list[str]:
    problems: list[str] = []
    ledger_rows = {
        row.ref: row
        for row in session.execute(
            select(transfers.c.ref, transfers.c.state, transfers.c.amount).where(
                transfers.c.kind.in_(("purchase", "refund"))
            )
        )
    }
    expected = {"posted": "posted", "held": "pending", "voided": "voided", "refunded": "posted"}
    for row in session.execute(
        select(r_.id, r_.state, r_.payment, r_.amount).where(r_.payment.is_not(None))
    ):
        if row.amount == 0:
            continue
        purchase = ledger_rows.get(hold_ref(row.id))
        if purchase is None:
            problems.append(f"reservation {row.id}: {row.payment} but no purchase in the ledger")
            continue
        if purchase.state != expected[row.payment] or purchase.amount != row.amount:
            problems.append(
                f"reservation {row.id}: payment {row.payment} {row.amount}, ledger says "
                f"{purchase.state} {purchase.amount}"
            )
        if row.payment == "refunded" and refund_ref(row.id) not in ledger_rows:
            problems.append(f"reservation {row.id}: refunded but no refund in the ledger")
    paid = {hold_ref(i) for i in session.scalars(select(r_.id).where(r_.payment.is_not(None)))}
    for ref, transfer in ledger_rows.items():
        if ref.startswith("reservation:") and ref not in paid and transfer.state != "voided":
            problems.append(f"ledger purchase {ref} ({transfer.state}) matches no paid reservation")
    return problems


CHECKS: tuple[Check, ...] = (
    check_stock,
    check_posts,
    check_limits,
    check_payments,
    ledger.audit,
    stripe_payments.audit,
)


def audit(session: Session, extra: Iterable[Check] = ()) -> list[str]:
    """Every problem found; an empty list means every invariant holds."""
    problems: list[str] = []
    for check in (*CHECKS, *extra):
        problems.extend(check(session))
    return problems
