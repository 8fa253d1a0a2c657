"""Placing orders: window, per-buyer limit, first-come allocation, payment, the waitlist.

For a whole batch this costs: one query for the buyers' units already reserved, one block of
reservation ids, one `hold_many` per payment mode (a few statements inside the wallet), one
query for the balances of buyers who could not pay, and one bulk INSERT of reservations. Stock
counters are only changed in memory here; `Book.close()` writes them, one conditional UPDATE per
SKU. A sold-out SKU costs nothing more than appending to the waitlist.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import MISSING
from dataclasses import fields as dataclass_fields
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.orm import Session

from config.database import is_postgres
from orders.book import Book
from orders.bulk import insert_rows, next_ids
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


Indexed = tuple[int, Command]

# The live states as SQL, for the statements written out below.
_LIVE = ", ".join(f"'{state}'" for state in LIVE_STATES)

# Units per (campaign, buyer) in live reservations. On PostgreSQL the buyers (one JSON array)
# drive one probe each of the (campaign_id, buyer) index through a LATERAL subquery kept apart
# by `OFFSET 0` (see `orders.bulk.matching`), a plan that stays right on a table that grew from
# empty and was never analysed. The text is fixed, so SQLAlchemy compiles it once.
_UNITS_POSTGRES = text(
    "SELECT r.campaign_id, r.buyer, sum(r.quantity) "
    "FROM jsonb_array_elements_text(CAST(:buyers AS JSONB)) AS k(value) "
    "JOIN LATERAL (SELECT campaign_id, buyer, quantity FROM order_reservations "
    "WHERE campaign_id = ANY(CAST(:campaigns AS VARCHAR[])) "
    f"AND state IN ({_LIVE}) AND buyer = k.value OFFSET 0) AS r ON true "
    "GROUP BY r.campaign_id, r.buyer"
)
# On SQLite the two arrays drive the probes directly (`CROSS JOIN` keeps them the outer loops),
# without first copying each into a list for `IN`; `+` compares their values as bound ones.
_UNITS_SQLITE = text(
    "SELECT r.campaign_id, r.buyer, sum(r.quantity) "
    "FROM json_each(:campaigns) AS c CROSS JOIN json_each(:buyers) AS k "
    "CROSS JOIN order_reservations AS r ON r.campaign_id = +c.value AND r.buyer = +k.value "
    f"WHERE r.state IN ({_LIVE}) GROUP BY r.campaign_id, r.buyer"
)


def units_reserved(session: Session, pairs: set[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """Units each (campaign, buyer) holds in live reservations, in one query. (The result may
    also hold other pairs of the same campaigns and buyers: callers look pairs up.)"""
    if not pairs:
        return {}
    campaign_ids = sorted({c for c, _ in pairs})
    buyers = sorted({b for _, b in pairs})
    keys = orjson.dumps(buyers).decode()
    if is_postgres(session):
        rows = session.execute(_UNITS_POSTGRES, {"buyers": keys, "campaigns": campaign_ids})
    else:
        rows = session.execute(
            _UNITS_SQLITE, {"buyers": keys, "campaigns": orjson.dumps(campaign_ids).decode()}
        )
    # Fetched at once: iterating the result would fetch its rows one by one.
    return {(c, b): int(n) for c, b, n in rows.all()}


def place_orders(
    book: Book,
    orders: Sequence[Indexed],
    *,
    cause: str = "order",
    parts: Mapping[tuple[str, str], int] | None = None,
) -> None:
    """Reserve, pay or waitlist every order in `orders` (batch index, command), in post-time
    order, and emit their outcomes.

    `parts` gives the first free part number of posts that already have parts (an edit that
    re-submits a post); others start at 0.

    This runs once per order post of a storm, so it keeps to three passes over plain tuples:
    decide (stock, limit, window), then pay what was allocated, then build each reservation
    row and its outcome.
    """
    if not orders:
        return
    session = book.session
    now = book.now
    rules_of = book.rules
    stock_of = book.stock
    emit = book.emit
    # First come, first served by (post time, post id); the batch index keeps ties in batch
    # order (a stable sort), and no key function runs per post.
    ordered = sorted([(c.posted_at, c.post_id, i, c) for i, c in orders])
    wanted = {(c.campaign_id, c.buyer) for _, _, _, c in ordered if c.campaign_id in rules_of}
    held = units_reserved(session, wanted)
    # (batch index, command, part, sku, units, state, reason, queue ticket, position, price)
    plans: list[tuple[Any, ...]] = []
    allocated: list[int] = []
    for posted_at, post_id, i, cmd in ordered:
        campaign_id = cmd.campaign_id
        rules = rules_of.get(campaign_id)
        if rules is None:
            emit(_outcome(cmd, "ignored", reason="unknown_campaign"), i)
            continue
        decision = cmd.decision
        sku = decision.sku
        prices = rules.prices
        if sku is None and len(prices) == 1:
            sku = next(iter(prices))
        if sku is None or sku not in prices:
            emit(_outcome(cmd, "rejected", reason="unknown_sku", sku=sku), i)
            continue
        quantity = decision.quantity or 1
        if quantity <= 0:
            emit(_outcome(cmd, "rejected", reason="bad_quantity", sku=sku), i)
            continue
        part = parts.get((cmd.platform, post_id), 0) if parts else 0
        price = prices[sku]
        outside = rules.window_reason(posted_at)
        if outside is not None:
            plans.append((i, cmd, part, sku, quantity, "rejected", outside, None, None, price))
            continue
        key = (campaign_id, cmd.buyer)
        have = held.get(key, 0) + quantity
        if have > rules.per_buyer_limit:
            plans.append((i, cmd, part, sku, quantity, "rejected", "over_limit", None, None, price))
            continue
        held[key] = have
        take, ticket, position = stock_of[(campaign_id, sku)].place(quantity)
        if take:
            allocated.append(len(plans))
            plans.append((i, cmd, part, sku, take, "awaiting_payment", None, None, None, price))
            part += 1
        if quantity > take:
            plans.append(
                (i, cmd, part, sku, quantity - take, "waitlisted", None, ticket, position, price)
            )

    ids = next_ids(session, reservations, len(plans))

    charges = []
    for n in allocated:
        i, cmd, _, sku, units, _, _, _, _, price = plans[n]
        rules = rules_of[cmd.campaign_id]
        charges.append(
            Charge(
                reservation_id=ids[n],
                buyer=cmd.buyer,
                campaign_id=rules.id,
                amount=price * units,
                currency=rules.currency,
                settle=not rules.confirmation_step,
                expires_at=hold_expiry(rules.cancel_until or rules.closes_at, now)
                if rules.confirmation_step
                else None,
            )
        )
    paid = charge(session, charges, at=now) if charges else set()
    unpaid = {(c.currency, c.buyer) for c in charges if c.reservation_id not in paid}
    credit = balances(session, unpaid) if unpaid else {}

    rows: list[tuple[Any, ...]] = []
    orders_out: list[int] = []
    outcomes: list[Outcome] = []
    encode = book.encode_time
    now_text = encode(now)
    for (i, cmd, part, sku, units, state, reason, ticket, position, price), id_ in zip(
        plans, ids, strict=True
    ):
        amount = price * units
        payment = expires = allocated_at = balance = due = None
        if state == "awaiting_payment":
            rules = rules_of[cmd.campaign_id]
            allocated_at = now_text
            if id_ in paid:
                state = "confirmed"
                payment = "held" if rules.confirmation_step else "posted"
            else:
                expires = now + rules.hold
                due = amount
                balance = credit.get((rules.currency, cmd.buyer))
        lang = cmd.decision.lang
        rows.append(
            (
                id_,
                cmd.campaign_id,
                cmd.platform,
                cmd.post_id,
                part,
                cmd.buyer,
                cmd.handle,
                lang,
                cmd.visibility,
                sku,
                units,
                state,
                reason,
                encode(cmd.posted_at),
                allocated_at,
                None if expires is None else encode(expires),
                ticket,
                amount,
                payment,
            )
        )
        outcome = Outcome.from_fields(
            {
                "kind": _KIND[state],
                "platform": cmd.platform,
                "post_id": cmd.post_id,
                "buyer": cmd.buyer,
                "handle": cmd.handle,
                "campaign_id": cmd.campaign_id,
                "reservation_id": id_,
                "sku": sku,
                "quantity": units,
                "state": state,
                "reason": reason,
                "queue_position": position,
                "hold_expires_at": expires,
                "amount_due": due,
                "balance": balance,
                "amount": None,
                "lang": lang,
                "visibility": cmd.visibility,
            }
        )
        outcomes.append(outcome)
        orders_out.append(i)
    book.emit_all(outcomes, orders_out)
    insert_rows(
        session,
        reservations,
        RESERVATION_COLUMNS,
        rows,
        constants={"cause": cause, "created_at": now, "updated_at": now},
        encoded=True,
    )


def hold_expiry(until: datetime, now: datetime) -> datetime:
    """When a confirmation-step hold lapses: a week after cancellations close."""
    return max(until, now) + timedelta(days=7)


def _outcome(cmd: Command, kind: Any, **fields: Any) -> Outcome:
    # `Outcome.from_fields`, not the frozen dataclass's `__init__`: duplicates, ignores and
    # rejects are a sixth of a storm. Field names are still checked.
    if fields and not _OPTIONAL.issuperset(fields):
        raise TypeError(f"not fields of an outcome: {sorted(fields.keys() - _OPTIONAL)}")
    values = dict(_DEFAULTS)
    values.update(
        kind=kind,
        platform=cmd.platform,
        post_id=cmd.post_id,
        buyer=cmd.buyer,
        handle=cmd.handle,
        campaign_id=cmd.campaign_id,
        lang=cmd.decision.lang,
        visibility=cmd.visibility,
    )
    values.update(fields)
    return Outcome.from_fields(values)


def outcome_for(cmd: Command, kind: Any, **fields: Any) -> Outcome:
    """An outcome answering `cmd` (shared with the engine's other steps)."""
    return _outcome(cmd, kind, **fields)


# Every field of an outcome that has a default, with it; those `_outcome` takes by name.
_DEFAULTS = {f.name: f.default for f in dataclass_fields(Outcome) if f.default is not MISSING}
_OPTIONAL = _DEFAULTS.keys() - {"lang", "visibility"}
