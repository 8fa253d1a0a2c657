"""A small shop for engine tests: one brand, a clock, fans who post, top up and delete.

Imported by the tests/test_engine_*.py modules; it holds no tests itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from config.brand import Brand
from config.database import create_engine, session_factory
from orders.audit import audit
from orders.campaigns import load_campaigns
from orders.commands import Command, Decision
from orders.engine import apply, due_reminders, expire_holds, settle_buyer
from orders.outcomes import Outcome
from orders.tables import products, reservations
from wallet import ledger
from wallet.stripe_payments import PaidSession, apply_paid_session

OPENS = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CLOSES = OPENS + timedelta(hours=2)


def make_brand(
    *,
    stock: dict[str, int] | None = None,
    price: int = 100_00,
    limit: int = 2,
    hold_minutes: float = 30,
    cancel_until: datetime | None = CLOSES,
    confirmation_step: bool = False,
    campaign_id: str = "drop",
) -> Brand:
    stock = stock if stock is not None else {"PHONE-BLACK": 3, "PHONE-WHITE": 2}
    return Brand.model_validate(
        {
            "brand": {"id": "acme", "name": "Acme"},
            "campaigns": [
                {
                    "id": campaign_id,
                    "name": "Phone drop",
                    "hashtag": "AcmeDrop",
                    "currency": "EUR",
                    "opens_at": OPENS,
                    "closes_at": CLOSES,
                    "per_buyer_limit": limit,
                    "hold_minutes": hold_minutes,
                    "reminder_minutes": 5,
                    "cancel_until": cancel_until,
                    "confirmation_step": confirmation_step,
                    "products": [
                        {"sku": sku, "name": sku.title(), "price": price, "stock": units}
                        for sku, units in stock.items()
                    ],
                }
            ],
        }
    )


class Shop:
    """A database with the brand loaded, a clock and helpers to act as fans."""

    def __init__(self, url: str, brand: Brand | None = None) -> None:
        self.engine = create_engine(url)
        self.sessions = session_factory(self.engine)
        self.now = OPENS + timedelta(minutes=1)
        self._post = 0
        self._topups = 0
        self.fan_prefix = ""
        self.use(brand or make_brand())

    def use(self, brand: Brand, fan_prefix: str = "") -> None:
        """Load `brand` and act on its first campaign, as fans named `fan_prefix + name`."""
        self.brand = brand
        self.campaign_id = brand.campaigns[0].id
        self.fan_prefix = fan_prefix
        with self.sessions.begin() as s:
            load_campaigns(s, [self.brand], now=self.now)

    def buyer(self, fan: str) -> str:
        return f"mastodon:{self.fan_prefix}{fan}"

    def close(self) -> None:
        self.engine.dispose()

    # fans -------------------------------------------------------------------------------------
    def post(
        self,
        fan: str,
        decision: str = "order",
        *,
        sku: str | None = "PHONE-BLACK",
        quantity: int | None = 1,
        at: datetime | None = None,
        post_id: str | None = None,
        event: str = "post",
        amount: int | None = None,
        reason: str | None = None,
    ) -> Command:
        if post_id is None:
            self._post += 1
            post_id = str(1000 + self._post)
        if decision != "order":
            sku = sku if decision == "cancel" else None
            quantity = None
        return Command(
            platform="mastodon",
            post_id=post_id,
            buyer=self.buyer(fan),
            handle=f"@{fan}",
            posted_at=at or self.now,
            decision=Decision(decision, sku=sku, quantity=quantity, amount=amount, reason=reason),  # type: ignore[arg-type]
            campaign_id=self.campaign_id,
            event=event,  # type: ignore[arg-type]
        )

    def delete(self, cmd: Command, at: datetime | None = None) -> Command:
        return Command(
            platform=cmd.platform,
            post_id=cmd.post_id,
            buyer=cmd.buyer,
            handle=cmd.handle,
            posted_at=at or self.now,
            decision=Decision("ignore"),
            campaign_id=cmd.campaign_id,
            event="delete",
        )

    def topup(self, fan: str, amount: int, ref: str | None = None) -> list[Outcome]:
        self._topups += 1
        # Through a paid Checkout Session, as every top-up arrives, so the Stripe audit holds.
        session_id = ref or f"cs_{self.fan_prefix}{fan}_{self._topups}"
        paid = PaidSession(
            session_id=session_id,
            buyer=self.buyer(fan),
            campaign_id=None,
            amount=amount,
            currency="EUR",
            payment_intent=f"pi_{session_id}",
            topup_key=None,
        )
        with self.sessions.begin() as s:
            apply_paid_session(s, paid, at=self.now, via="webhook")
        with self.sessions.begin() as s:
            return settle_buyer(s, self.buyer(fan), now=self.now)

    # the engine -------------------------------------------------------------------------------
    def apply(self, *cmds: Command) -> list[Outcome]:
        with self.sessions.begin() as s:
            return apply(s, cmds, now=self.now)

    def expire(self) -> list[Outcome]:
        with self.sessions.begin() as s:
            return expire_holds(s, self.now)

    def reminders(self) -> list[Outcome]:
        with self.sessions.begin() as s:
            return due_reminders(s, self.now)

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)

    # what a brand or a fan can see --------------------------------------------------------------
    def audit(self) -> list[str]:
        with self.sessions() as s:
            return audit(s)

    def balance(self, fan: str) -> int:
        with self.sessions() as s:
            return ledger.available(s, self.buyer(fan), "EUR")

    def stock(self, sku: str = "PHONE-BLACK") -> dict[str, int]:
        with self.sessions() as s:
            row = s.execute(
                select(products).where(
                    products.c.campaign_id == self.campaign_id, products.c.sku == sku
                )
            ).one()
            return {
                "stock": row.stock,
                "allocated": row.allocated,
                "released": row.released,
                "waitlisted": row.waitlisted,
            }

    def reservations(self, fan: str | None = None) -> list[dict[str, Any]]:
        with self.sessions() as s:
            stmt = select(reservations).order_by(reservations.c.id)
            if fan is not None:
                stmt = stmt.where(reservations.c.buyer == self.buyer(fan))
            return [dict(r._mapping) for r in s.execute(stmt)]

    def states(self, fan: str | None = None) -> list[tuple[str, str, int]]:
        return [(r["post_id"], r["state"], r["quantity"]) for r in self.reservations(fan)]

    def snapshot(self, session: Session | None = None) -> list[tuple[Any, ...]]:
        """Every reservation by natural key (ids differ between runs)."""
        with self.sessions() as s:
            return sorted(
                (r.platform, r.post_id, r.part, r.sku, r.quantity, r.state, r.payment)
                for r in s.execute(select(reservations))
            )


def kinds(outcomes: Sequence[Outcome]) -> list[str]:
    return [o.kind for o in outcomes]


def storm(
    n: int, *, fans: int, seed: int = 7, campaign_id: str = "drop", redeliver: float = 0.05
) -> list[Command]:
    """A reproducible little storm: orders of one or two units over both SKUs, some fans
    posting several times, some statuses and cancels, redeliveries of earlier posts."""
    import random

    rng = random.Random(seed)
    out: list[Command] = []
    t = OPENS
    for i in range(n):
        if out and rng.random() < redeliver:
            out.append(out[rng.randrange(max(0, len(out) - 300), len(out))])
            continue
        t += timedelta(milliseconds=rng.randrange(0, 40))
        fan = f"f{rng.randrange(fans)}"
        roll = rng.random()
        if roll < 0.9:
            decision = Decision(
                "order",
                sku=rng.choice(["PHONE-BLACK", "PHONE-BLACK", "PHONE-WHITE"]),
                quantity=rng.choice([1, 1, 2]),
            )
        elif roll < 0.95:
            decision = Decision("status")
        else:
            decision = Decision("cancel")
        out.append(
            Command(
                platform="mastodon",
                post_id=str(10_000 + i),
                buyer=f"mastodon:{fan}",
                handle=f"@{fan}",
                posted_at=t,
                decision=decision,
                campaign_id=campaign_id,
            )
        )
    return out


def batches(cmds: Sequence[Command], size: int) -> list[list[Command]]:
    return [list(cmds[i : i + size]) for i in range(0, len(cmds), size)]
