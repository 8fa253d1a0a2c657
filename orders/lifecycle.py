"""What happens to reservations after they are made: cancel, lapse, promotion, settlement.

- `cancel` releases stock (or a waitlist place) and gives money back: a confirmed reservation is
  refunded to the wallet (or its pending hold voided) while the campaign allows cancellation.
- `promote` hands free units to the waitlist in queue order (`orders.queue.QUEUE_ORDER`, the
  order every shown position counts in). A
  waiting part bigger than what is free is split: the head takes what is free, the remainder
  keeps its place. A promoted buyer whose wallet covers the price is confirmed at once.
- `expire_holds`, `settle_buyer` and `due_reminders` are the clock's and the top-up webhook's
  entry points; each runs in the caller's transaction (flush only).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session

from orders.book import Book
from orders.bulk import insert_rows, next_ids, update_rows
from orders.campaigns import read_rules
from orders.commands import Command
from orders.outcomes import Outcome, OutcomeKind
from orders.payments import Charge, balances, capture, charge, refund, void
from orders.placing import RESERVATION_COLUMNS, hold_expiry
from orders.queue import QUEUE_ORDER
from orders.tables import ALLOCATED_STATES, campaigns, reservations

r_ = reservations.c


def joined(*where: Any) -> Select[Any]:
    """Reservations with what it takes to answer their buyer."""
    return select(
        r_.id,
        r_.campaign_id,
        r_.platform,
        r_.post_id,
        r_.part,
        r_.buyer,
        r_.handle,
        r_.lang,
        r_.visibility,
        r_.sku,
        r_.quantity,
        r_.state,
        r_.amount,
        r_.payment,
        r_.posted_at,
        r_.hold_expires_at,
        r_.queue_ticket,
    ).where(*where)


def row_outcome(
    row: Row[Any], kind: OutcomeKind, *, answer: Command | None = None, **fields: Any
) -> Outcome:
    """An outcome about reservation `row`, in reply to its order post, or to `answer` (the
    buyer's cancel post) when given."""
    fields.setdefault("sku", row.sku)
    fields.setdefault("quantity", row.quantity)
    if answer is not None:
        return Outcome(
            kind=kind,
            platform=answer.platform,
            post_id=answer.post_id,
            buyer=answer.buyer,
            handle=answer.handle,
            campaign_id=row.campaign_id,
            reservation_id=row.id,
            lang=answer.decision.lang,
            visibility=answer.visibility,
            **fields,
        )
    return Outcome(
        kind=kind,
        platform=row.platform,
        post_id=row.post_id,
        buyer=row.buyer,
        handle=row.handle,
        campaign_id=row.campaign_id,
        reservation_id=row.id,
        lang=row.lang,
        visibility=row.visibility,
        **fields,
    )


# A reservation to cancel, its command's place in the batch, the time that judges its refund
# deadline, and the cancel post its outcome answers (None: the reservation's own post).
Cancellation = tuple[Row[Any], int | None, datetime, Command | None]


def cancel(book: Book, items: Sequence[Cancellation], *, cause: str) -> None:
    """Cancel live reservations (rows from `joined`), each judged at its own time for the refund
    deadline; each outcome answers its cancel post, or the reservation's own post when None.
    A batch's cancels (or deletions) go together: one void and one update for all of them."""
    updates: list[tuple[Any, ...]] = []
    voids: list[int] = []
    for row, order, at, answer in items:
        rules = book.rules[row.campaign_id]
        if row.state == "confirmed" and not rules.may_refund(at):
            book.emit(
                row_outcome(
                    row, "rejected", answer=answer, state=row.state, reason="cancel_closed"
                ),
                order,
            )
            continue
        payment = row.payment
        if row.state == "confirmed" and payment == "posted":
            refund(
                book.session,
                reservation_id=row.id,
                buyer=row.buyer,
                campaign_id=row.campaign_id,
                amount=row.amount,
                currency=rules.currency,
                at=book.now,
            )
            payment = "refunded"
        elif row.state == "confirmed" and payment == "held":
            voids.append(row.id)
            payment = "voided"
        stock = book.stock[(row.campaign_id, row.sku)]
        if row.state in ALLOCATED_STATES:
            stock.release(row.quantity)
        elif row.state == "waitlisted":
            stock.dequeue(row.quantity)
        updates.append((row.id, "cancelled", cause, book.now, payment))
        book.transition(row.id, row.state, "cancelled", cause)
        book.emit(
            row_outcome(row, "cancelled", answer=answer, state="cancelled", reason=cause), order
        )
    void(book.session, voids, at=book.now)
    update_rows(
        book.session,
        reservations,
        ("id",),
        ("state", "reason", "updated_at", "payment"),
        updates,
    )


def promote(book: Book) -> None:
    """Give every free unit of the locked SKUs to their waitlists, in queue order."""
    session = book.session
    now = book.now
    for (campaign_id, sku), stock in sorted(book.stock.items()):
        if stock.free <= 0 or stock.waiting <= 0:
            continue
        rules = book.rules[campaign_id]
        price = rules.prices[sku]
        free = stock.free
        rows = session.execute(
            joined(r_.campaign_id == campaign_id, r_.sku == sku, r_.state == "waitlisted")
            .order_by(*QUEUE_ORDER)
            .limit(free)
        ).all()
        chosen: list[tuple[Row[Any], int]] = []
        for row in rows:
            if free == 0:
                break
            take = min(row.quantity, free)
            chosen.append((row, take))
            free -= take
        if not chosen:
            continue
        splits = [(row, take) for row, take in chosen if take < row.quantity]
        split_rows: list[tuple[Any, ...]] = []
        for (row, take), new_id in zip(
            splits, next_ids(session, reservations, len(splits)), strict=True
        ):
            last = session.execute(
                select(func.max(r_.part)).where(
                    r_.platform == row.platform, r_.post_id == row.post_id
                )
            ).scalar_one()
            rest = row.quantity - take
            split_rows.append(
                (
                    new_id,
                    campaign_id,
                    row.platform,
                    row.post_id,
                    last + 1,
                    row.buyer,
                    row.handle,
                    row.lang,
                    row.visibility,
                    sku,
                    rest,
                    "waitlisted",
                    None,
                    row.posted_at,
                    None,
                    None,
                    row.queue_ticket,
                    price * rest,
                    None,
                )
            )
        insert_rows(
            session,
            reservations,
            RESERVATION_COLUMNS,
            split_rows,
            constants={"cause": "split", "created_at": now, "updated_at": now},
        )

        charges = [
            Charge(
                reservation_id=row.id,
                buyer=row.buyer,
                campaign_id=campaign_id,
                amount=price * take,
                currency=rules.currency,
                settle=not rules.confirmation_step,
                expires_at=hold_expiry(rules.cancel_until or rules.closes_at, now)
                if rules.confirmation_step
                else None,
            )
            for row, take in chosen
        ]
        paid = charge(session, charges, at=now)
        credit = balances(
            session, {(c.currency, c.buyer) for c in charges if c.reservation_id not in paid}
        )
        updates: list[tuple[Any, ...]] = []
        for row, take in chosen:
            stock.dequeue(take)
            stock.allocate(take)
            if row.id in paid:
                state, payment, expires = (
                    "confirmed",
                    "held" if rules.confirmation_step else "posted",
                    None,
                )
            else:
                state, payment, expires = "awaiting_payment", None, now + rules.hold
            updates.append((row.id, take, state, now, now, expires, price * take, payment))
            book.transition(row.id, "waitlisted", state, "promoted")
            book.emit(
                row_outcome(
                    row,
                    "promoted",
                    quantity=take,
                    state=state,
                    hold_expires_at=expires,
                    amount_due=price * take if state == "awaiting_payment" else None,
                    balance=credit.get((rules.currency, row.buyer)),
                )
            )
        update_rows(
            session,
            reservations,
            ("id",),
            (
                "quantity",
                "state",
                "updated_at",
                "allocated_at",
                "hold_expires_at",
                "amount",
                "payment",
            ),
            updates,
        )


def expire_holds(session: Session, now: datetime) -> list[Outcome]:
    """Lapse unpaid reservations whose hold has expired, release their stock and promote the
    waitlist. Returns the expired and promoted outcomes."""
    due = (r_.state == "awaiting_payment", r_.hold_expires_at <= now)
    campaign_ids = list(session.scalars(select(r_.campaign_id).distinct().where(*due)))
    if not campaign_ids:
        return []
    book = Book.open(session, campaign_ids, now)
    rows = session.execute(joined(*due).order_by(r_.hold_expires_at, r_.id)).all()
    updates: list[tuple[Any, ...]] = []
    for row in rows:
        book.stock[(row.campaign_id, row.sku)].release(row.quantity)
        updates.append((row.id, "expired", "hold_lapsed", now))
        book.transition(row.id, "awaiting_payment", "expired", "hold_lapsed")
        book.emit(
            row_outcome(
                row,
                "expired",
                state="expired",
                reason="hold_lapsed",
                hold_expires_at=row.hold_expires_at,
            )
        )
    update_rows(session, reservations, ("id",), ("state", "reason", "updated_at"), updates)
    promote(book)
    return book.close()


def _awaiting(session: Session, buyer: str, now: datetime) -> tuple[tuple[Any, ...], list[str]]:
    """The filter for the buyer's unpaid, unlapsed reservations, and their campaigns."""
    every = list(session.scalars(select(campaigns.c.id)))
    pending = (
        r_.campaign_id.in_(every),
        r_.buyer == buyer,
        r_.state == "awaiting_payment",
        r_.hold_expires_at > now,
    )
    return pending, list(session.scalars(select(r_.campaign_id).distinct().where(*pending)))


def lock_for_settlement(session: Session, buyer: str, *, now: datetime) -> None:
    """Take the stock locks `settle_buyer` will need, before the caller touches the wallet.

    `apply` and `expire_holds` lock stock rows, then wallets. A top-up that credited the wallet
    first and settled afterwards would take them the other way round, and on PostgreSQL the two
    would deadlock; calling this first keeps one lock order everywhere.
    """
    _, campaign_ids = _awaiting(session, buyer, now)
    if campaign_ids:
        Book.open(session, campaign_ids, now)


def settle_buyer(session: Session, buyer: str, *, now: datetime) -> list[Outcome]:
    """Confirm the buyer's unpaid reservations, oldest first, as far as the wallet covers them
    (after a top-up). Reservations whose hold has lapsed are left to `expire_holds`. Call
    `lock_for_settlement` before crediting the wallet in the same transaction."""
    pending, campaign_ids = _awaiting(session, buyer, now)
    if not campaign_ids:
        return []
    book = Book.open(session, campaign_ids, now)
    rows = session.execute(joined(*pending).order_by(r_.posted_at, r_.post_id, r_.part)).all()
    charges = [
        Charge(
            reservation_id=row.id,
            buyer=buyer,
            campaign_id=row.campaign_id,
            amount=row.amount,
            currency=book.rules[row.campaign_id].currency,
            settle=not book.rules[row.campaign_id].confirmation_step,
            expires_at=hold_expiry(
                book.rules[row.campaign_id].cancel_until or book.rules[row.campaign_id].closes_at,
                now,
            )
            if book.rules[row.campaign_id].confirmation_step
            else None,
        )
        for row in rows
    ]
    paid = charge(session, charges, at=now)
    updates: list[tuple[Any, ...]] = []
    for row in rows:
        if row.id not in paid:
            continue
        payment = "held" if book.rules[row.campaign_id].confirmation_step else "posted"
        updates.append((row.id, "confirmed", now, None, payment))
        book.transition(row.id, "awaiting_payment", "confirmed", "topup")
        book.emit(row_outcome(row, "confirmed", state="confirmed"))
    update_rows(
        session,
        reservations,
        ("id",),
        ("state", "updated_at", "hold_expires_at", "payment"),
        updates,
    )
    return book.close()


def due_reminders(
    session: Session, now: datetime, within: timedelta | None = None
) -> list[Outcome]:
    """Unpaid reservations whose hold lapses within `within` (default: each campaign's
    `reminder_minutes`) and that were not reminded yet; marks them reminded."""
    rules = read_rules(session, session.scalars(select(campaigns.c.id)))
    horizon = (
        within
        if within is not None
        else max((r.reminder for r in rules.values()), default=timedelta(0))
    )
    if horizon <= timedelta(0):
        return []
    rows = session.execute(
        joined(
            r_.state == "awaiting_payment",
            r_.reminded_at.is_(None),
            r_.hold_expires_at > now,
            r_.hold_expires_at <= now + horizon,
        ).order_by(r_.hold_expires_at, r_.id)
    ).all()
    out: list[Outcome] = []
    updates: list[tuple[Any, ...]] = []
    for row in rows:
        lead = within if within is not None else rules[row.campaign_id].reminder
        if row.hold_expires_at > now + lead:
            continue
        updates.append((row.id, now))
        out.append(
            row_outcome(
                row,
                "reminder",
                state=row.state,
                hold_expires_at=row.hold_expires_at,
                amount_due=row.amount,
            )
        )
    update_rows(session, reservations, ("id",), ("reminded_at",), updates)
    return out


def capture_held(session: Session, campaign_id: str, *, now: datetime) -> list[Outcome]:
    """Take the money of a confirmation-step campaign: settle the pending holds of its
    confirmed reservations (the brand confirms the sale). Returns a `confirmed` outcome per
    reservation paid; idempotent (a reservation is captured once)."""
    book = Book.open(session, [campaign_id], now)
    rows = session.execute(
        joined(
            r_.campaign_id == campaign_id, r_.state == "confirmed", r_.payment == "held"
        ).order_by(r_.id)
    ).all()
    capture(session, [row.id for row in rows if row.amount > 0], at=now)
    update_rows(
        session,
        reservations,
        ("id",),
        ("payment", "updated_at"),
        [(row.id, "posted", now) for row in rows],
    )
    for row in rows:
        book.emit(row_outcome(row, "confirmed", state="confirmed", reason="captured"))
    return book.close()
