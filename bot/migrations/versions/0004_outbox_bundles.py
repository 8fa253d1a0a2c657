"""Queue a batch's replies of one priority as one bundle row, opened by the sender.

A storm's batch owes a reply to nearly every post; `outbox_bundles` holds them as one row per
(account, priority) instead of one `outbox_messages` row each, and a sender turns a bundle into
messages when it comes first in the sending order (`bot.outbox.open_bundle`).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 12:40:00.000000
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql, sqlite

from config.sqltypes import UtcDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# The reply fields of a bundle, in order (`bot.outbox.BUNDLE_FIELDS` at this revision).
_FIELDS = (
    "idempotency_key",
    "platform",
    "kind",
    "buyer",
    "handle",
    "recipient_id",
    "in_reply_to",
    "visibility",
    "campaign_id",
    "reservation_id",
    "facts",
)


def upgrade() -> None:
    op.create_table(
        "outbox_bundles",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("account", sa.String(length=120), nullable=False),
        sa.Column("priority", sa.SmallInteger(), nullable=False),
        sa.Column("due_at", UtcDateTime(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("replies", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint("size > 0", name=op.f("ck_outbox_bundles_size_positive")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox_bundles")),
    )
    with op.batch_alter_table("outbox_bundles", schema=None) as batch_op:
        batch_op.create_index(
            "ix_outbox_bundles_claim", ["account", "priority", "due_at", "id"], unique=False
        )


def downgrade() -> None:
    # Replies still in bundles become messages first (as a sender would open them), so that
    # going back loses none; a reply already queued as a message keeps that message.
    bind = op.get_bind()
    bundles = sa.table(
        "outbox_bundles",
        sa.column("id"),
        sa.column("account"),
        sa.column("priority"),
        sa.column("due_at", UtcDateTime()),
        sa.column("created_at", UtcDateTime()),
        sa.column("replies"),
    )
    messages = sa.table(
        "outbox_messages",
        *(sa.column(name) for name in ("account", "priority", "state", "attempts", *_FIELDS)),
        sa.column("due_at", UtcDateTime()),
        sa.column("created_at", UtcDateTime()),
    )
    dialect = postgresql if bind.dialect.name == "postgresql" else sqlite
    for bundle in bind.execute(sa.select(bundles).order_by(bundles.c.id)).all():
        rows = []
        for reply in json.loads(bundle.replies):
            values = dict(zip(_FIELDS, reply[: len(_FIELDS)], strict=True))
            values["facts"] = json.dumps(values["facts"], ensure_ascii=False, separators=(",", ":"))
            rows.append(
                {
                    **values,
                    "account": bundle.account,
                    "priority": bundle.priority,
                    "state": "queued",
                    "attempts": 0,
                    "due_at": bundle.due_at,
                    "created_at": bundle.created_at,
                }
            )
        if rows:
            bind.execute(
                dialect.insert(messages).on_conflict_do_nothing(
                    index_elements=["account", "idempotency_key"]
                ),
                rows,
            )
    with op.batch_alter_table("outbox_bundles", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_bundles_claim")
    op.drop_table("outbox_bundles")
