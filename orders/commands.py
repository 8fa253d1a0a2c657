"""What the parser decides about a post, and what the engine is asked to apply.

`Decision` is the parser's pure output. `Command` is one decided post with the facts the engine
needs (who, which post, when); the bot builds it from a connector `Post`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

DecisionKind = Literal["order", "cancel", "status", "balance", "topup", "help", "ignore", "reject"]
EventKind = Literal["post", "edit", "delete"]


@dataclass(frozen=True, slots=True)
class Decision:
    """Exactly one decision per post. `reason` is a code from docs/parser.md."""

    decision: DecisionKind
    sku: str | None = None
    quantity: int | None = None
    amount: int | None = None  # minor units of the campaign currency (top-up)
    reason: str | None = None
    lang: str | None = None


@dataclass(frozen=True, slots=True)
class Command:
    """A decided post, ready for `orders.engine.apply`.

    `posted_at` is the time that orders the queue: the creation time of a new post, the edit
    time of an edit (so nobody jumps the queue by editing). A delete carries no decision.
    """

    platform: str
    post_id: str
    buyer: str  # "platform:account_id"
    handle: str
    posted_at: datetime
    decision: Decision
    campaign_id: str
    event: EventKind = "post"
    visibility: str = "public"
