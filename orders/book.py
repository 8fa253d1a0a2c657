"""The engine's working state for one transaction: locked stock counters, pending writes.

Every entry point (`apply`, `expire_holds`, `settle_buyer`, ...) opens a `Book` on the campaigns
it touches. Opening it locks those campaigns' product rows in one fixed order (campaign id, then
SKU) with `SELECT ... FOR UPDATE` on PostgreSQL (SQLite writers are already serialised by
`BEGIN IMMEDIATE`). Everything that changes stock or reservations of a campaign therefore runs
one transaction at a time per campaign, and workers that lock the same rows in the same order
queue instead of deadlocking. Counter changes are accumulated in memory and written back at
`close()` with one conditional UPDATE per SKU that can never oversell.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.orm import Session

from config.database import is_postgres
from orders.bulk import insert_rows, time_encoder
from orders.campaigns import CampaignRules, read_rules
from orders.outcomes import Outcome
from orders.tables import transitions

# Where outcomes that answer no command of the batch go: after all the others.
_LAST = 1 << 60

# The product rows of some campaigns, in lock order (campaign, SKU); locked on PostgreSQL.
_LOCK = (
    "SELECT campaign_id, sku, stock, allocated, released, waitlisted, enqueued "
    "FROM order_products WHERE campaign_id IN :ids ORDER BY campaign_id, sku"
)
_LOCK_SQLITE = text(_LOCK).bindparams(bindparam("ids", expanding=True))
_LOCK_POSTGRES = text(f"{_LOCK} FOR UPDATE").bindparams(bindparam("ids", expanding=True))

# One SKU's counter changes, applied only if they cannot oversell (nor leave a negative count).
# Fixed text, so SQLAlchemy compiles it once for every batch.
_COUNTERS = text(
    "UPDATE order_products SET allocated = allocated + :d_allocated, "
    "released = released + :d_released, waitlisted = waitlisted + :d_waitlisted, "
    "enqueued = enqueued + :d_enqueued "
    "WHERE campaign_id = :campaign_id AND sku = :sku AND allocated + :d_allocated <= stock "
    "AND allocated + :d_allocated >= 0 AND waitlisted + :d_waitlisted >= 0"
)


class OversellPreventedError(RuntimeError):
    """A stock UPDATE matched no row: the counters moved under us. The transaction must roll
    back; nothing was oversold."""


@dataclass(slots=True)
class Stock:
    """One SKU's counters as locked at the start of the transaction, plus our changes."""

    stock: int
    allocated: int
    released: int
    waitlisted: int
    enqueued: int
    d_allocated: int = 0
    d_released: int = 0
    d_waitlisted: int = 0
    d_enqueued: int = 0

    @property
    def free(self) -> int:
        """Units not allocated to anyone (they belong to the waitlist first, if any)."""
        return self.stock - self.allocated - self.d_allocated

    @property
    def waiting(self) -> int:
        return self.waitlisted + self.d_waitlisted

    def allocate(self, units: int) -> None:
        self.d_allocated += units

    def release(self, units: int) -> None:
        self.d_allocated -= units
        self.d_released += units

    def dequeue(self, units: int) -> None:
        self.d_waitlisted -= units

    def place(self, units: int) -> tuple[int, int | None, int | None]:
        """A new order of `units`: take the free units, unless anyone waits (nobody jumps the
        queue), and put the rest on the waitlist. Returns (units taken, queue ticket, position),
        the last two None when nothing joined the waitlist.

        The ticket numbers units as they join; the position is exact in promotion order
        (`orders.queue`): the new ticket is above every ticket already waiting, so the units
        ahead are all the units waiting now. Runs once per order post of a storm."""
        waiting = self.waitlisted + self.d_waitlisted
        take = 0
        if waiting == 0:
            free = self.stock - self.allocated - self.d_allocated
            take = units if units < free else free
            self.d_allocated += take
        rest = units - take
        if rest <= 0:
            return take, None, None
        ticket = self.enqueued + self.d_enqueued + 1
        self.d_waitlisted += rest
        self.d_enqueued += rest
        return take, ticket, waiting + 1


@dataclass
class Book:
    session: Session
    now: datetime
    rules: dict[str, CampaignRules] = field(default_factory=dict)
    stock: dict[tuple[str, str], Stock] = field(default_factory=dict)
    transitions: list[tuple[int, str, str, str]] = field(default_factory=list)
    # Outcomes as emitted, and for each the batch index of the command it answers.
    outcomes: list[Outcome] = field(default_factory=list)
    orders: list[int] = field(default_factory=list)
    # Times as the rows of this transaction write them (`orders.bulk.time_encoder`).
    encode_time: Callable[[datetime | None], Any] = field(init=False)

    def __post_init__(self) -> None:
        self.encode_time = time_encoder(self.session)

    @classmethod
    def open(cls, session: Session, campaign_ids: Iterable[str], now: datetime) -> Book:
        """Lock the product rows of these campaigns and read their rules."""
        book = cls(session, now)
        book.extend(campaign_ids)
        return book

    def extend(self, campaign_ids: Iterable[str]) -> None:
        """Also lock these campaigns (those not locked yet). Entry points name every campaign
        up front, so locks are taken in one order; this is the fallback for a campaign found
        late (it may then wait on, or deadlock with, a worker that locked in order)."""
        ids = sorted(set(campaign_ids) - {c for c, _ in self.stock} - set(self.rules))
        if not ids:
            return
        stmt = _LOCK_POSTGRES if is_postgres(self.session) else _LOCK_SQLITE
        for row in self.session.execute(stmt, {"ids": ids}):
            self.stock[(row.campaign_id, row.sku)] = Stock(
                row.stock, row.allocated, row.released, row.waitlisted, row.enqueued
            )
        self.rules.update(read_rules(self.session, ids))

    def emit(self, outcome: Outcome, order: int | None = None) -> None:
        """Queue an outcome; `order` is the command's index in the batch (None: at the end)."""
        self.outcomes.append(outcome)
        self.orders.append(order if order is not None else _LAST)

    def emit_all(self, outcomes: list[Outcome], orders: list[int]) -> None:
        """`emit` each of `outcomes` with its index in `orders`, in that order."""
        self.outcomes += outcomes
        self.orders += orders

    def transition(self, reservation_id: int, before: str, after: str, cause: str) -> None:
        self.transitions.append((reservation_id, before, after, cause))

    def close(self) -> list[Outcome]:
        """Write the counters (SKU order, conditional) and transitions; return the outcomes."""
        changed = [
            (key, s)
            for key, s in sorted(self.stock.items())
            if s.d_allocated or s.d_released or s.d_waitlisted or s.d_enqueued
        ]
        if changed:
            # One statement for every SKU (PostgreSQL runs the rows in one pipeline); each row
            # updates only if it cannot oversell, so the rows updated must be all of them.
            result = self.session.execute(
                _COUNTERS,
                [
                    {
                        "campaign_id": campaign_id,
                        "sku": sku,
                        "d_allocated": s.d_allocated,
                        "d_released": s.d_released,
                        "d_waitlisted": s.d_waitlisted,
                        "d_enqueued": s.d_enqueued,
                    }
                    for (campaign_id, sku), s in changed
                ],
            )
            if result.rowcount != len(changed):  # type: ignore[attr-defined]
                skus = ", ".join(f"{c}/{sku}" for (c, sku), _ in changed)
                raise OversellPreventedError(f"stock counters moved under us (one of {skus})")
            for _, s in changed:
                s.allocated += s.d_allocated
                s.released += s.d_released
                s.waitlisted += s.d_waitlisted
                s.enqueued += s.d_enqueued
                s.d_allocated = s.d_released = s.d_waitlisted = s.d_enqueued = 0
        insert_rows(
            self.session,
            transitions,
            ("reservation_id", "from_state", "to_state", "cause"),
            self.transitions,
            constants={"at": self.now},
        )
        self.transitions = []
        # Batch order; a stable sort keeps each command's outcomes in the order emitted.
        outcomes = self.outcomes
        ranked = sorted(range(len(outcomes)), key=self.orders.__getitem__)
        self.outcomes = []
        self.orders = []
        return [outcomes[n] for n in ranked]
