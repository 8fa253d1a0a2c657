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

from collections.abc import Iterable
from typing import Any

from sqlalchemy import FromClause, Subquery, and_, func, select
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
    """The queue position of each of these reservations that is waitlisted, in one query (the
    others are absent from the result)."""
    ids = sorted(set(reservation_ids))
    if not ids:
        return {}
    wanted = (
        select(r_.campaign_id, r_.sku)
        .where(r_.id.in_(ids), r_.state == "waitlisted")
        .distinct()
        .subquery("wanted")
    )
    queue = _numbered(
        reservations.join(
            wanted, and_(r_.campaign_id == wanted.c.campaign_id, r_.sku == wanted.c.sku)
        )
    )
    rows = session.execute(select(queue.c.id, queue.c.position).where(queue.c.id.in_(ids)))
    return {int(id_): int(position) for id_, position in rows}
