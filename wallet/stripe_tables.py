"""What flashtag has seen of Stripe: events, Checkout Sessions and refunds.

- `stripe_events`: one row per Stripe event id (UNIQUE), written in the same transaction that
  applies the event, so a redelivered, replayed or reordered event is recognised and skipped.
- `stripe_checkout_sessions`: one row per top-up attempt. The row is written *before* Stripe is
  asked to create the session (keyed by the idempotency key, so a retry reuses the same key and
  the same parameters), and gains the session id once Stripe answers. A session that reaches us
  only through a webhook or reconciliation (its creation answer was lost) gets a row then. The
  state moves creating -> open -> paid (credited once) or expired.
- `stripe_refunds`: money returned through Stripe, per payment intent: cash-outs we started
  (state pending until Stripe confirms) and refunds made in the Stripe dashboard, learnt from
  `charge.refunded`. Their sum per payment intent never exceeds what that top-up paid in.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    String,
    Table,
    Text,
)

from config.sqltypes import Id, UtcDateTime
from wallet.tables import metadata

SESSION_STATES = ("creating", "open", "paid", "expired")
REFUND_STATES = ("pending", "succeeded", "failed")
REFUND_SOURCES = ("cashout", "stripe")

stripe_events = Table(
    "stripe_events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("event_id", String(255), nullable=False, unique=True),
    Column("type", String(100), nullable=False),
    Column("object_id", String(255), nullable=True),
    Column("outcome", String(40), nullable=False),
    Column("received_at", UtcDateTime, nullable=False),
)

stripe_checkout_sessions = Table(
    "stripe_checkout_sessions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    # Null for sessions we did not create through a link (seen first in a webhook).
    Column("idempotency_key", String(255), nullable=True, unique=True),
    Column("session_id", String(255), nullable=True, unique=True),
    Column("payment_intent", String(255), nullable=True, unique=True),
    Column("buyer", String(200), nullable=False),
    Column("campaign_id", String(100), nullable=True),
    Column("currency", String(3), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("amount_total", BigInteger, nullable=True),
    Column("state", String(20), nullable=False),
    Column("url", Text, nullable=True),
    Column("expires_at", UtcDateTime, nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("paid_at", UtcDateTime, nullable=True),
    Column("applied_via", String(20), nullable=True),
    CheckConstraint("amount > 0", name="amount_positive"),
    CheckConstraint("amount_total IS NULL OR amount_total >= 0", name="amount_total_nonneg"),
    CheckConstraint(
        "state IN (" + ", ".join(f"'{s}'" for s in SESSION_STATES) + ")", name="state_known"
    ),
    CheckConstraint("state <> 'paid' OR session_id IS NOT NULL", name="paid_has_session"),
)

stripe_refunds = Table(
    "stripe_refunds",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    # Our idempotency key for a cash-out refund; for dashboard refunds "charge:<id>:<cumulative>".
    Column("key", String(255), nullable=False, unique=True),
    Column("refund_id", String(255), nullable=True, unique=True),
    Column("payment_intent", String(255), nullable=False, index=True),
    Column("charge_id", String(255), nullable=True),
    Column("buyer", String(200), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("source", String(20), nullable=False),
    Column("state", String(20), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    CheckConstraint("amount > 0", name="amount_positive"),
    CheckConstraint(
        "state IN (" + ", ".join(f"'{s}'" for s in REFUND_STATES) + ")", name="state_known"
    ),
    CheckConstraint(
        "source IN (" + ", ".join(f"'{s}'" for s in REFUND_SOURCES) + ")", name="source_known"
    ),
)
