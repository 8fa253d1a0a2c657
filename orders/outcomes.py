"""What the engine tells the bot about each post: one `Outcome` per reply-worthy event.

The outbox turns outcomes into replies (idempotency key `f"{reservation_id or post_id}:{kind}"`)
and the web pages read the same fields. An order post usually yields one outcome; an order that
is only partly filled yields two (the filled part, and the remainder on the waitlist), each with
its own reservation id. Status, balance, top-up and help outcomes carry no reservation id, so
each such post is answered once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Literal

OutcomeKind = Literal[
    "confirmed",
    "payment_needed",
    "waitlisted",
    "promoted",
    "rejected",
    "ignored",
    "duplicate",
    "cancelled",
    "expired",
    "status",
    "balance",
    "topup",
    "help",
    "reminder",
]


@dataclass(frozen=True)
class Outcome:
    """One result for the bot to reply with.

    - `state` is the reservation's state after the change (None when there is no reservation).
    - `reason` is a code: the parser's for its rejections, else `campaign_not_open`,
      `campaign_closed`, `over_limit`, `unknown_sku`, `cancel_closed`, `nothing_to_cancel`,
      `edit_ignored`, `deleted`, `hold_lapsed`, ...
    - `queue_position` is, for a waitlisted reservation, how many units wait ahead of it plus
      one (1 means next in line).
    - `amount_due` is what the reservation costs, in minor units, when the wallet did not cover
      it; `balance` the buyer's available credit when it was known; `amount` the top-up asked for.
    """

    kind: OutcomeKind
    platform: str
    post_id: str
    buyer: str
    handle: str
    campaign_id: str
    reservation_id: int | None = None
    sku: str | None = None
    quantity: int | None = None
    state: str | None = None
    reason: str | None = None
    queue_position: int | None = None
    hold_expires_at: datetime | None = None
    amount_due: int | None = None
    balance: int | None = None
    amount: int | None = None
    lang: str | None = None
    visibility: str = "public"

    @classmethod
    def from_fields(cls, values: Mapping[str, Any]) -> Outcome:
        """An outcome from every field's value by name, written straight into the instance: the
        engine's hot path (once per post of a storm), about twice as fast as the generated
        `__init__` of a frozen dataclass, which sets each field through `object.__setattr__`.
        Values are not checked: name every field, and only fields (`FIELDS`)."""
        outcome = _new(cls)
        outcome.__dict__.update(values)
        return outcome


FIELDS = frozenset(f.name for f in fields(Outcome))
_new = object.__new__
