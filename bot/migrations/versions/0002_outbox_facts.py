"""Replies are queued as their outcome's facts and written when a sender claims them.

`outbox_messages.text` and `text_hash` may now be empty until the message is claimed; the new
`facts` column holds what the reply will say. A message always has one or the other. The index
of texts a buyer already got skips unwritten messages.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 17:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox_messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("facts", sa.Text(), nullable=True))
        batch_op.alter_column("text", existing_type=sa.Text(), nullable=True)
        batch_op.alter_column("text_hash", existing_type=sa.String(length=64), nullable=True)
        batch_op.create_check_constraint(
            op.f("ck_outbox_messages_text_or_facts"), "text IS NOT NULL OR facts IS NOT NULL"
        )
        batch_op.drop_index("ix_outbox_buyer_text")
        batch_op.create_index(
            "ix_outbox_buyer_text",
            ["account", "buyer", "text_hash"],
            unique=False,
            postgresql_where=sa.text("text_hash IS NOT NULL"),
            sqlite_where=sa.text("text_hash IS NOT NULL"),
        )


def downgrade() -> None:
    # A reply still waiting to be written has no text for the old schema to keep; dropping it
    # would lose it (a buyer's payment link among them). Let the senders drain them first.
    waiting = (
        op.get_bind()
        .execute(sa.text("SELECT count(*) FROM outbox_messages WHERE text IS NULL"))
        .scalar_one()
    )
    if waiting:
        raise RuntimeError(
            f"{waiting} queued replies are not written yet; let the senders send them "
            "(flashtag outbox status) before downgrading below 0002"
        )
    with op.batch_alter_table("outbox_messages", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_buyer_text")
        batch_op.create_index(
            "ix_outbox_buyer_text", ["account", "buyer", "text_hash"], unique=False
        )
        batch_op.drop_constraint(op.f("ck_outbox_messages_text_or_facts"), type_="check")
        batch_op.alter_column("text_hash", existing_type=sa.String(length=64), nullable=False)
        batch_op.alter_column("text", existing_type=sa.Text(), nullable=False)
        batch_op.drop_column("facts")
