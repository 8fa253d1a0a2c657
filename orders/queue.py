"""Waitlist positions, counted in the one order promotion follows.

`lifecycle.promote` hands the free units of a (campaign, SKU) to its waitlisted reservations in
`(queue_ticket, id)` order. A reservation's position is the units waiting ahead of it in that
order, plus one (1: next in line): what the bot's replies, the buyer's status page and
`flashtag export` all say.

Tickets are numbered as reservations join the waitlist, not by when their post was made: a post
delivered late (X polled behind the Mastodon stream, a backfill after a restart) joins behind
everyone already waiting, though it was posted earlier. Ordering by `posted_at` would tell such
a fan a place that promotion does not give them.

The engine's reply to a fresh order (`Stock.enqueue`) needs no query: every unit already waiting
holds a lower ticket, so its position is the units waiting at that moment plus one, the same
count as `positions` gives right after.
"""

from __future__ import annotations

import bisect
import itertools
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from sqlalchemy import FromClause, Subquery, func, select
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
    absent from the result), in a few index probes however long the waitlist.

    Tickets count units: a part that joins a SKU's waitlist takes the ticket after every unit
    that joined before it, and no row is ever removed, so the units of rows ahead of a part
    (any state, in `QUEUE_ORDER`) are its ticket minus one, plus the units of earlier rows that
    share its ticket (the heads a promotion split off it). The units still waiting ahead are
    those minus the units ahead that left the waitlist (promoted, cancelled, deleted), which
    `ix_order_reservations_left_queue` finds without touching the waiting rows. The result is
    the same count `campaign_queue` makes with a window over the whole waitlist.
    """
    ids = sorted(set(reservation_ids))
    if not ids:
        return {}
    wanted = session.execute(
        select(r_.id, r_.campaign_id, r_.sku, r_.queue_ticket).where(
            r_.id.in_(ids), r_.state == "waitlisted"
        )
    ).all()
    by_queue: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for row in wanted:
        by_queue[(row.campaign_id, row.sku)].append(row)
    found: dict[int, int] = {}
    for (campaign_id, sku), rows in sorted(by_queue.items()):
        tickets = sorted({row.queue_ticket for row in rows})
        same = (r_.campaign_id == campaign_id, r_.sku == sku)
        left = session.execute(
            select(r_.queue_ticket, r_.id, r_.quantity)
            .where(
                *same,
                r_.state != "waitlisted",
                r_.queue_ticket.is_not(None),
                r_.queue_ticket <= tickets[-1],
            )
            .order_by(*QUEUE_ORDER)
        ).all()
        # Rows sharing a wanted ticket: split heads, whether they left or still wait.
        wanted_tickets = set(tickets)
        sharing: list[Any] = [r for r in left if r.queue_ticket in wanted_tickets]
        sharing += list(
            session.execute(
                select(r_.queue_ticket, r_.id, r_.quantity).where(
                    *same, r_.state == "waitlisted", r_.queue_ticket.in_(tickets)
                )
            )
        )
        order = [(r.queue_ticket, r.id) for r in left]
        gone = list(itertools.accumulate((r.quantity for r in left), initial=0))
        for row in rows:
            key = (row.queue_ticket, row.id)
            split_heads = sum(
                r.quantity for r in sharing if r.queue_ticket == row.queue_ticket and r.id < row.id
            )
            ahead = row.queue_ticket - 1 + split_heads - gone[bisect.bisect_left(order, key)]
            found[int(row.id)] = int(ahead) + 1
    return found
