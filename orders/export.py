"""One line per reservation of a campaign, for the brand's fulfilment: `flashtag export`.

Rows stream in reservation id order (memory stays flat however large the campaign). A waitlisted
reservation's `queue_position` is exact here, counted by `orders.queue` in the order promotion
follows: the units waiting ahead of it plus one.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from orders.queue import campaign_queue
from orders.tables import reservations

FIELDS = (
    "reservation_id",
    "platform",
    "post_id",
    "buyer",
    "sku",
    "quantity",
    "state",
    "posted_at",
    "created_at",
    "queue_position",
    "hold_expires_at",
)

r_ = reservations.c


def export_rows(session: Session, campaign_id: str) -> Iterator[dict[str, Any]]:
    """Every reservation of the campaign as a dict of `FIELDS` (times as ISO 8601 text)."""
    queue = campaign_queue(campaign_id)
    stmt = (
        select(
            r_.id,
            r_.platform,
            r_.post_id,
            r_.buyer,
            r_.sku,
            r_.quantity,
            r_.state,
            r_.posted_at,
            r_.created_at,
            queue.c.position,
            r_.hold_expires_at,
        )
        .outerjoin(queue, queue.c.id == r_.id)
        .where(r_.campaign_id == campaign_id)
        .order_by(r_.id)
        .execution_options(yield_per=5000)
    )
    for row in session.execute(stmt):
        values = dict(zip(FIELDS, row, strict=True))
        for name in ("posted_at", "created_at", "hold_expires_at"):
            value = values[name]
            if isinstance(value, datetime):
                values[name] = value.isoformat()
        if values["queue_position"] is not None:
            values["queue_position"] = int(values["queue_position"])
        yield values
