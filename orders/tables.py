"""The orders tables: campaigns, products with their stock counters, posts, reservations.

The model:

- `order_campaigns` and `order_products` are loaded from brand files. A product row carries the
  stock counters every allocation goes through: `stock` (units offered), `allocated` (units held
  by awaiting_payment or confirmed reservations), `released` (units that were allocated once and
  came back: lapsed, cancelled, deleted) and `waitlisted` (units waiting). CHECKs keep
  `0 <= allocated <= stock`, so not even raw SQL can oversell.
- `order_posts` has one row per platform post the engine has seen, keyed by (platform, post_id):
  the dedupe record and the post's current decision.
- `order_reservations` holds what a post ordered. A post has one reservation; an order that is
  only partly filled is split into parts (`part` 0, 1, ...): the filled part and the waiting
  remainder. UNIQUE(platform, post_id, part) holds in the database, and the audit checks that
  the parts of a post never add up to more than it ordered.
- `order_transitions` records every state change after creation, with its time and cause (the
  creation itself is on the reservation row: `created_at`, `state`, `cause`).

The hot tables (posts, reservations) carry no foreign keys: every row inserted during a storm
would pay a lookup for them. `orders.audit` checks the references instead.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Float,
    ForeignKeyConstraint,
    Index,
    Integer,
    SmallInteger,
    String,
    Table,
    UniqueConstraint,
    text,
)

from config.database import new_metadata
from config.sqltypes import Id, UtcDateTime, sql_none_of, sql_one_of

metadata = new_metadata()

STATES = ("awaiting_payment", "confirmed", "waitlisted", "cancelled", "expired", "rejected")
LIVE_STATES = ("awaiting_payment", "confirmed", "waitlisted")
ALLOCATED_STATES = ("awaiting_payment", "confirmed")
PAYMENTS = ("held", "posted", "voided", "refunded")


campaigns = Table(
    "order_campaigns",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("brand_id", String(64), nullable=False),
    Column("name", String(200), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("opens_at", UtcDateTime, nullable=False),
    Column("closes_at", UtcDateTime, nullable=False),
    Column("per_buyer_limit", Integer, nullable=False),
    Column("hold_seconds", Float, nullable=False),
    Column("reminder_seconds", Float, nullable=False),
    Column("confirmation_step", Boolean, nullable=False),
    Column("cancel_until", UtcDateTime, nullable=True),
    Column("language", String(8), nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    CheckConstraint("closes_at > opens_at", name="window"),
    CheckConstraint("per_buyer_limit > 0", name="limit_positive"),
    CheckConstraint("hold_seconds > 0", name="hold_positive"),
)

products = Table(
    "order_products",
    metadata,
    Column("campaign_id", String(64), primary_key=True),
    Column("sku", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("price", BigInteger, nullable=False),
    Column("stock", Integer, nullable=False),
    Column("allocated", Integer, nullable=False, server_default="0"),
    Column("released", Integer, nullable=False, server_default="0"),
    Column("waitlisted", Integer, nullable=False, server_default="0"),
    # Units ever put on the waitlist: the next part to join gets `queue_ticket` = this + 1
    # (positions are counted in ticket order by `orders.queue`).
    Column("enqueued", BigInteger, nullable=False, server_default="0"),
    ForeignKeyConstraint(["campaign_id"], [campaigns.c.id]),
    CheckConstraint("price >= 0", name="price"),
    CheckConstraint("stock >= 0", name="stock"),
    CheckConstraint("allocated >= 0 AND allocated <= stock", name="never_oversold"),
    CheckConstraint("released >= 0", name="released"),
    CheckConstraint("waitlisted >= 0 AND enqueued >= waitlisted", name="waitlisted"),
)

posts = Table(
    "order_posts",
    metadata,
    Column("platform", String(16), primary_key=True),
    Column("post_id", String(64), primary_key=True),
    Column("campaign_id", String(64), nullable=False),
    Column("buyer", String(200), nullable=False),
    # The time of the current attempt: creation, or the edit that re-submitted it.
    Column("posted_at", UtcDateTime, nullable=False),
    Column("decision", String(16), nullable=False),
    Column("reason", String(64), nullable=True),
    Column("quantity", Integer, nullable=True),  # what an order post asked for
    Column("attempts", SmallInteger, nullable=False),
    Column("seen_at", UtcDateTime, nullable=False),
    Column("deleted_at", UtcDateTime, nullable=True),
    # SQLite: the primary key is the table (one B-tree per post instead of two).
    sqlite_with_rowid=False,
)

reservations = Table(
    "order_reservations",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("campaign_id", String(64), nullable=False),
    Column("platform", String(16), nullable=False),
    Column("post_id", String(64), nullable=False),
    Column("part", SmallInteger, nullable=False),
    Column("buyer", String(200), nullable=False),
    # How to answer the buyer later (lapse, promotion): copied from the post.
    Column("handle", String(200), nullable=False),
    Column("lang", String(16), nullable=True),
    Column("visibility", String(16), nullable=False),
    Column("sku", String(64), nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("state", String(20), nullable=False),
    Column("reason", String(64), nullable=True),
    Column("cause", String(32), nullable=False),
    # When the post (or the edit that re-submitted it) was made: allocation goes in this order.
    Column("posted_at", UtcDateTime, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("allocated_at", UtcDateTime, nullable=True),
    Column("hold_expires_at", UtcDateTime, nullable=True),
    Column("reminded_at", UtcDateTime, nullable=True),
    # The waitlist's order: units put on a SKU's waitlist are numbered as they join it (a batch
    # joins in post-time order), and promotion takes the lowest tickets first.
    Column("queue_ticket", BigInteger, nullable=True),
    Column("amount", BigInteger, nullable=False),
    Column("payment", String(16), nullable=True),
    UniqueConstraint("platform", "post_id", "part"),
    CheckConstraint("quantity > 0", name="quantity_positive"),
    CheckConstraint("part >= 0", name="part"),
    CheckConstraint("amount >= 0", name="amount"),
    CheckConstraint(sql_one_of("state", STATES), name="state"),
    CheckConstraint(f"payment IS NULL OR {sql_one_of('payment', PAYMENTS)}", name="payment"),
    CheckConstraint(
        f"{sql_none_of('state', ALLOCATED_STATES)} OR allocated_at IS NOT NULL",
        name="allocated_has_stock",
    ),
    CheckConstraint(
        "state <> 'awaiting_payment' OR hold_expires_at IS NOT NULL", name="awaiting_expires"
    ),
    CheckConstraint(
        f"state <> 'confirmed' OR {sql_one_of('payment', ('held', 'posted'))}",
        name="confirmed_paid",
    ),
    CheckConstraint("state <> 'waitlisted' OR queue_ticket IS NOT NULL", name="waitlist_ticket"),
)
Index("ix_order_reservations_campaign_buyer", reservations.c.campaign_id, reservations.c.buyer)
Index(
    "ix_order_reservations_waitlist",
    reservations.c.campaign_id,
    reservations.c.sku,
    reservations.c.queue_ticket,
    postgresql_where=text("state = 'waitlisted'"),
    sqlite_where=text("state = 'waitlisted'"),
)
# Parts that joined a waitlist and left it (promoted, cancelled, deleted): what `orders.queue`
# subtracts to count the units still waiting ahead of a part. Waiting rows stay out of it.
Index(
    "ix_order_reservations_left_queue",
    reservations.c.campaign_id,
    reservations.c.sku,
    reservations.c.queue_ticket,
    postgresql_where=text("queue_ticket IS NOT NULL AND state <> 'waitlisted'"),
    sqlite_where=text("queue_ticket IS NOT NULL AND state <> 'waitlisted'"),
)
Index(
    "ix_order_reservations_hold_expiry",
    reservations.c.hold_expires_at,
    postgresql_where=text("state = 'awaiting_payment'"),
    sqlite_where=text("state = 'awaiting_payment'"),
)

transitions = Table(
    "order_transitions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("reservation_id", Id, nullable=False),
    Column("from_state", String(20), nullable=False),
    Column("to_state", String(20), nullable=False),
    Column("at", UtcDateTime, nullable=False),
    Column("cause", String(32), nullable=False),
    CheckConstraint(sql_one_of("to_state", STATES), name="to_state"),
)
Index("ix_order_transitions_reservation_id", transitions.c.reservation_id)
