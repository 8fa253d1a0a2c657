"""Waitlist positions, counted in the one order promotion follows.

`lifecycle.promote` hands the free units of a (campaign, SKU) to its waitlisted reservations in
`(queue_ticket, id)` order. A reservation's position is the units waiting ahead of it in that
order, plus one (1: next in line): what the bot's replies, the buyer's status page and
`flashtag export` all say.

Tickets are numbered as reservations join the waitlist, not by when their post was made: a post
delivered late (X polled behind the Mastodon stream, a backfill after a restart) joins behind
everyone already waiting, though it was posted earlier. Ordering by `posted_at` would tell such
a fan a place that promotion does not give them.

The engine's reply to a fresh order (`Stock.place`) needs no query: every unit already waiting
holds a lower ticket, so its position is the units waiting at that moment plus one, the same
count as `positions` gives right after.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import FromClause, Select, Subquery, bindparam, func, select
from sqlalchemy.orm import Session

from orders.tables import reservations

r_ = reservations.c

# The order `promote` takes the waitlist in; keep the two in step.
QUEUE_ORDER = (r_.queue_ticket, r_.id)


def _numbered(source: FromClause, *where: Any) -> Subquery:
    """`(id, position)` of the waitlisted reservations in `source` that match `where`. `where`
    must keep whole (campaign, SKU) queues: the positions count only the rows it keeps."""
    ahead = func.coalesce(
        func.sum(r_.quantity).over(
            partition_by=(r_.campaign_id, r_.sku), order_by=QUEUE_ORDER, rows=(None, -1)
        ),
        0,
    )
    return (
        select(r_.id.label("id"), (ahead + 1).label("position"))
        .select_from(source)
        .where(r_.state == "waitlisted", *where)
        .subquery("queue")
    )


def campaign_queue(campaign_id: str) -> Subquery:
    """`(id, position)` of every waitlisted reservation of the campaign, to join against."""
    return _numbered(reservations, r_.campaign_id == campaign_id)


def positions(session: Session, reservation_ids: Iterable[int]) -> dict[int, int]:
    """The queue position of each of these reservations that is waitlisted (the others are
    absent from the result), in one query that reads no waiting row ahead of them.

    Tickets count units: a part that joins a SKU's waitlist takes the ticket after every unit
    that joined before it, and no row is ever removed, so the units of rows ahead of a part
    with a lower ticket are its ticket minus one. Of those, the units that left the waitlist
    (promoted, cancelled, deleted) are summed through `ix_order_reservations_left_queue`, which
    holds no waiting row. Rows sharing the part's ticket come from a promotion that split the
    part: the head it promoted has left, and any earlier row of that ticket still waiting would
    count too. The result is the same count `campaign_queue` makes with a window over the whole
    waitlist.
    """
    ids = sorted(set(reservation_ids))
    if not ids:
        return {}
    rows = session.execute(_POSITIONS, {"ids": ids}).all()
    return {int(id_): int(position) for id_, position in rows}


def _positions_query() -> Select[int, Any]:
    """`positions`' query, for the reservation ids bound as `ids`."""
    w = reservations.alias("w")
    r = reservations.alias("r")
    same_queue = (r.c.campaign_id == w.c.campaign_id, r.c.sku == w.c.sku)
    left_below = (
        select(func.coalesce(func.sum(r.c.quantity), 0))
        .where(
            *same_queue,
            r.c.queue_ticket.is_not(None),
            r.c.state != "waitlisted",
            r.c.queue_ticket < w.c.queue_ticket,
        )
        .scalar_subquery()
    )
    waiting_split = (
        select(func.coalesce(func.sum(r.c.quantity), 0))
        .where(
            *same_queue,
            r.c.state == "waitlisted",
            r.c.queue_ticket == w.c.queue_ticket,
            r.c.id < w.c.id,
        )
        .scalar_subquery()
    )
    return select(w.c.id, w.c.queue_ticket - left_below + waiting_split).where(
        w.c.id.in_(bindparam("ids", expanding=True)), w.c.state == "waitlisted"
    )


# Built once: status replies ask for positions in most batches of a storm.
_POSITIONS = _positions_query()
