"""The bot's tables: the outbox and the connector cursors (other bot tables join this metadata).

- `outbox_messages`: one row per reply or direct message. UNIQUE(account, idempotency_key) makes
  queueing the same outcome twice a no-op; `state` moves queued -> sending -> sent | failed (a
  message whose sender died while `sending` is claimed again once its lease lapses). Senders
  claim by (account, state, priority, due_at), which one index serves. A reply is queued as the
  facts of its outcome (`facts`) and written (`text`, `text_hash`, `lang`) when a sender claims
  it; a public post is queued already written.
- `outbox_bundles`: many replies of one priority, queued by one batch as one row (`replies`, a
  JSON array of message rows). A storm's batch owes a reply to nearly every post; one row per
  priority instead of one per reply keeps that off the posts' transaction. A sender opens a
  bundle (its replies become `outbox_messages` rows, the bundle is deleted, in one transaction)
  when the bundle comes first in (priority, due_at) order, so the sending order is the same. A
  bundle that cannot be opened keeps its replies and says why (`error`).
- `connector_cursors`: per platform account, the position after the last applied signal. It is
  written in the same transaction as the engine's apply, never before.
"""

from __future__ import annotations

from typing import get_args

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Index,
    Integer,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    event,
    text,
)
from sqlalchemy.engine import Connection

from config.database import new_metadata
from config.sqltypes import Id, UtcDateTime, sql_one_of
from connectors.post import Visibility

metadata = new_metadata()

OUTBOX_STATES = ("queued", "sending", "sent", "failed")
VISIBILITIES: tuple[str, ...] = get_args(Visibility)


outbox_messages = Table(
    "outbox_messages",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("account", String(120), nullable=False),
    Column("idempotency_key", String(200), nullable=False),
    Column("platform", String(20), nullable=False),
    Column("kind", String(30), nullable=False),
    Column("priority", SmallInteger, nullable=False),
    Column("buyer", String(200), nullable=False),
    Column("handle", String(200), nullable=False),
    Column("recipient_id", String(100)),
    Column("in_reply_to", String(100)),
    Column("visibility", String(10), nullable=False),
    Column("lang", String(10)),
    # Written when claimed for sending (replies) or when queued (public posts).
    Column("text", Text),
    Column("text_hash", String(64)),
    # A reply's outcome (`bot.outbox.FACT_FIELDS`, a JSON array) until its text is written.
    Column("facts", Text),
    Column("campaign_id", String(100)),
    Column("reservation_id", BigInteger),
    Column("state", String(10), nullable=False, default="queued"),
    Column("attempts", Integer, nullable=False, default=0),
    Column("due_at", UtcDateTime, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("claimed_by", String(100)),
    Column("lease_until", UtcDateTime),
    Column("sent_at", UtcDateTime),
    Column("platform_id", String(100)),
    Column("error", Text),
    UniqueConstraint("account", "idempotency_key"),
    CheckConstraint(sql_one_of("state", OUTBOX_STATES), name="state_known"),
    CheckConstraint(sql_one_of("visibility", VISIBILITIES), name="visibility_known"),
    CheckConstraint("state <> 'sent' OR platform_id IS NOT NULL", name="sent_has_platform_id"),
    CheckConstraint("attempts >= 0", name="attempts_not_negative"),
    CheckConstraint("text IS NOT NULL OR facts IS NOT NULL", name="text_or_facts"),
)
Index(
    "ix_outbox_claim",
    outbox_messages.c.account,
    outbox_messages.c.state,
    outbox_messages.c.priority,
    outbox_messages.c.due_at,
    outbox_messages.c.id,
)
# The texts a buyer already got, read when the next reply to them is written. Partial: a reply
# is queued unwritten, so a storm's inserts skip this index.
Index(
    "ix_outbox_buyer_text",
    outbox_messages.c.account,
    outbox_messages.c.buyer,
    outbox_messages.c.text_hash,
    postgresql_where=text("text_hash IS NOT NULL"),
    sqlite_where=text("text_hash IS NOT NULL"),
)

outbox_bundles = Table(
    "outbox_bundles",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("account", String(120), nullable=False),
    Column("priority", SmallInteger, nullable=False),
    Column("due_at", UtcDateTime, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("size", Integer, nullable=False),
    # One JSON array per reply, in `bot.outbox.BUNDLE_FIELDS` order.
    Column("replies", Text, nullable=False),
    # Why the bundle could not be opened (its replies are then kept here, not sent).
    Column("error", Text),
    CheckConstraint("size > 0", name="size_positive"),
)
Index(
    "ix_outbox_bundles_claim",
    outbox_bundles.c.account,
    outbox_bundles.c.priority,
    outbox_bundles.c.due_at,
    outbox_bundles.c.id,
)

# PostgreSQL compresses a long text with pglz unless told otherwise. A storm's bundle is about
# 200 kB of JSON, compressed inside the batch's transaction: lz4 takes less than half the time
# (1.8 against 4.1 ms a bundle) for the same size on disk. A server built without lz4, or older
# than 14, keeps its default. Migration 0005 does the same to an existing database.
_REPLIES_LZ4 = (
    "DO $$ BEGIN "
    "EXECUTE 'ALTER TABLE outbox_bundles ALTER COLUMN replies SET COMPRESSION lz4'; "
    "EXCEPTION WHEN feature_not_supported THEN NULL; END $$"
)


def _compress_replies_with_lz4(_table: Table, connection: Connection, **_: object) -> None:
    version = connection.dialect.server_version_info or ()
    if connection.dialect.name == "postgresql" and version >= (14,):
        connection.exec_driver_sql(_REPLIES_LZ4)


event.listen(outbox_bundles, "after_create", _compress_replies_with_lz4)

connector_cursors = Table(
    "connector_cursors",
    metadata,
    Column("account_key", String(120), primary_key=True),
    Column("cursor", String(200), nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)

# The clock's leadership lease (SQLite; PostgreSQL uses an advisory lock) and one row per job
# run slot, so two clocks never run the same job for the same slot (bot/clock.py, bot/jobs.py).
clock_leases = Table(
    "clock_leases",
    metadata,
    Column("name", String(40), primary_key=True),
    Column("holder", String(200), nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
    Column("renewed_at", UtcDateTime, nullable=False),
)

clock_runs = Table(
    "clock_runs",
    metadata,
    Column("job_id", String(120), primary_key=True),
    Column("slot", String(40), primary_key=True),
    Column("holder", String(200), nullable=False),
    Column("started_at", UtcDateTime, nullable=False),
)
