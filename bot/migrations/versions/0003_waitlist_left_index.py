"""Index the parts that left a waitlist, so a queue position costs a few index probes.

`orders.queue.positions` counts the units waiting ahead of a part from its ticket, minus the
units ahead that left the waitlist; this partial index finds those without reading the waiting
rows (which a storm leaves by the million).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 18:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

WHERE = "queue_ticket IS NOT NULL AND state <> 'waitlisted'"


def upgrade() -> None:
    with op.batch_alter_table("order_reservations", schema=None) as batch_op:
        batch_op.create_index(
            "ix_order_reservations_left_queue",
            ["campaign_id", "sku", "queue_ticket"],
            unique=False,
            postgresql_where=sa.text(WHERE),
            sqlite_where=sa.text(WHERE),
        )


def downgrade() -> None:
    with op.batch_alter_table("order_reservations", schema=None) as batch_op:
        batch_op.drop_index("ix_order_reservations_left_queue")
